"""A baked project passes the checks of its own CI workflow: its test suite, run with the
command its README gives, and its linter."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from conftest import readme_blocks, run


@pytest.fixture(scope="module")
def project(bake, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bake(tmp_path_factory.mktemp("baked-tests"))


@pytest.mark.slow
def test_baked_test_suite_passes(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The baked suite runs its own pipelines (DDP, resume, search, registry, ...): minutes.
    tests_block = dict(readme_blocks(project))["Tests and layout"]
    assert tests_block[0] == "python -m pytest", tests_block
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--durations=15",
    ]
    result = run(command, cwd=project, timeout=1800)
    with capsys.disabled():  # the slowest baked tests, in CI's log
        print("\n" + result.stdout[result.stdout.rfind("slowest") - 20 :])
    summary = result.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 1, f"no test passed: {summary}"
    assert not re.search(r"\d+ (failed|error)", summary), summary


def test_baked_project_is_ruff_clean(project: Path) -> None:
    run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=project)
