"""The benchmarks run (their quick mode); their ratios are measured by hand, not asserted here.
bench/train.py runs inside bench/gpu.py's CPU mode, and is checked there; bench/suite_cpu.py on
one quick test."""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import TEMPLATE, run

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("script", "lines"),
    [
        ("preprocess.py", ("fingerprint", "preprocess", "speed-up")),
        ("sweep.py", ("-j 2", "-j 1", "speed-up")),
    ],
)
def test_benchmark_runs_in_quick_mode(
    tmp_path, script: str, lines: tuple[str, ...]
) -> None:
    result = run(
        [sys.executable, TEMPLATE / "bench" / script, "--quick"],
        cwd=tmp_path,
        timeout=900,
    )
    for line in lines:
        assert line in result.stdout, result.stdout


def test_the_gpu_proof_runs_every_step_in_its_cpu_mode(tmp_path) -> None:
    """bench/gpu.py, which a lent GPU runs, cannot rot between GPU runs: each step passes here,
    bar torch.compile, which only the GPU runs (inductor's CPU build takes minutes)."""
    out = tmp_path / "summary.md"
    command = [
        sys.executable,
        TEMPLATE / "bench" / "gpu.py",
        "--device",
        "cpu",
        "--quick",
    ]
    result = run([*command, "--out", out], cwd=tmp_path, timeout=1500)
    table = [line for line in out.read_text().splitlines() if line.startswith("| ")]
    assert table[0] == "| step | status | figures | target |", table
    rows = table[1:]
    steps = {row.split(" | ")[0].strip("| "): row.split(" | ")[1] for row in rows}
    ran = ["default", "bench", "gpu-size", "channels-last", "reproduce"]
    assert steps == {**dict.fromkeys(ran, "ok"), "compile": "skipped"}, result.stdout
    summary = out.read_text()
    assert "metrics agree" in summary and "predict wrote 1 mask(s)" in summary
    # Its bench step runs bench/train.py --quick: the train benchmark's check, done once here.
    for line in (
        "train throughput",
        "stage start-up",
        "tracking overhead",
        "no-op dvc exp run",
        "default dvc exp run",
        "stage imports",
    ):
        assert line in summary, summary


def test_the_suite_cpu_account_names_each_process_and_its_test(tmp_path) -> None:
    """bench/suite_cpu.py on one test that runs the cookiecutter CLI: the CLI's process is a
    row of the report, under that test, and the venv's site-packages are as they were (without
    the hook, unless this suite runs under the script itself)."""
    site_packages = Path(sysconfig.get_paths()["purelib"])
    before = sorted(site_packages.glob("_suite_cpu_account*"))
    selected = "test_cookiecutter_cli_reports_the_refusal"
    result = run(
        [
            sys.executable,
            TEMPLATE / "bench" / "suite_cpu.py",
            "-n",
            "0",
            "-k",
            selected,
        ],
        cwd=tmp_path,
        timeout=600,
    )
    assert "1 passed" in result.stdout, result.stdout[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert any(row.startswith("| cookiecutter | 1 |") for row in rows), rows
    assert any(f"tests/test_bake.py::{selected} |" in row for row in rows), rows
    assert sorted(site_packages.glob("_suite_cpu_account*")) == before
