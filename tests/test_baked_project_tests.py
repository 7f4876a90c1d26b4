"""A baked project passes the checks of its own CI workflow: the fast tier of its test suite, run
with the command its README gives, and its linter. The full tier is the baked project's CI's to
run (pull requests, weekly); here every one of its tests must at least be collected, and
`bash .ci/test --baked-full-tier` runs it (test_baked_full_tier.py)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from conftest import readme_blocks, run, run_test_tier

# The full tier's tests today (33); a module that stops importing drops below this.
FULL_TIER_TESTS = 33


@pytest.fixture(scope="module")
def project(bake, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bake(tmp_path_factory.mktemp("baked-tests"))


@pytest.mark.slow  # it runs a tiny pipeline
def test_the_fast_tier_passes(project: Path, record_property) -> None:
    tests_block = dict(readme_blocks(project))["Tests and layout"]
    assert tests_block[0] == "python -m pytest", tests_block
    run_test_tier(project, tests_block[0], record_property)


def test_every_full_tier_test_is_collected(project: Path) -> None:
    """The full tier's modules import and its tests are found, so that a change here cannot
    break them unseen until the baked project's next full run."""
    collect = ["-m", "slow", "--collect-only", "-q", "-n", "0"]
    result = run([sys.executable, "-m", "pytest", *collect], cwd=project)
    summary = result.stdout.strip().splitlines()[-1]
    selected = re.search(r"(\d+)/\d+ tests collected", summary)
    assert selected and int(selected.group(1)) >= FULL_TIER_TESTS, summary
    assert "error" not in summary, summary


def test_baked_project_is_ruff_clean(project: Path) -> None:
    run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=project)
