"""The benchmarks run (their quick mode); their ratios are measured by hand, not asserted here."""

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
        (
            "train.py",
            (
                "train throughput",
                "stage start-up",
                "tracking overhead",
                "no-op dvc exp run",
                "default dvc exp run",
                "stage imports",
            ),
        ),
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
