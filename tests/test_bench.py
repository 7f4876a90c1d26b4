"""The benchmarks run (their quick mode); their ratios are measured by hand, not asserted here.
bench/train.py runs inside bench/gpu.py's CPU mode, and is checked there."""

from __future__ import annotations

import sys

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
