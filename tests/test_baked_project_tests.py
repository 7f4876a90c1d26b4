"""A baked project passes the checks of its own CI workflow: its test suite and its linter."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from conftest import run


@pytest.fixture(scope="module")
def project(bake, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bake(tmp_path_factory.mktemp("baked-tests"))


@pytest.mark.slow
def test_baked_test_suite_passes(project: Path) -> None:
    # The baked suite runs its own pipelines (DDP, resume, search, registry, ...): minutes.
    result = run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--durations=10",
        ],
        cwd=project,
        timeout=1800,
    )
    print(result.stdout[-3000:])
    summary = result.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 1, f"no test passed: {summary}"
    assert not re.search(r"\d+ (failed|error)", summary), summary


def test_baked_project_is_ruff_clean(project: Path) -> None:
    run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=project)
