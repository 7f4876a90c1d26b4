"""A baked project passes the checks of its own CI workflow: the fast tier of its test suite, run
with the command its README gives, and its linter. test_baked_full_tier.py runs the other tier,
so that each baked test runs here once."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import readme_blocks, run, run_test_tier


@pytest.fixture(scope="module")
def project(bake, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bake(tmp_path_factory.mktemp("baked-tests"))


@pytest.mark.slow  # it runs a tiny pipeline
def test_the_fast_tier_passes(project: Path, record_property) -> None:
    tests_block = dict(readme_blocks(project))["Tests and layout"]
    assert tests_block[0] == "python -m pytest", tests_block
    run_test_tier(project, tests_block[0], record_property)


def test_baked_project_is_ruff_clean(project: Path) -> None:
    run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=project)
