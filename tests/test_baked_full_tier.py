"""A baked project passes the full tier of its test suite (`python -m pytest -m slow`, as its
README gives it): DDP, resume, the queue, search, the registry, reproduce, each edit's re-run.

Runs with `bash .ci/test --baked-full-tier` only: CI runs the fast tier (test_baked_project_tests)
and the template's own end-to-end tests; the baked project's CI workflow runs this tier."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_test_tier

FULL_TIER = "python -m pytest -m slow"


@pytest.fixture(scope="module")
def project(bake, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bake(tmp_path_factory.mktemp("baked-full-tier"))


@pytest.mark.slow
@pytest.mark.baked_full_tier
def test_the_full_tier_passes(project: Path, record_property) -> None:
    assert f"(`{FULL_TIER}`, `make test-full`" in (project / "README.md").read_text()
    run_test_tier(project, FULL_TIER, record_property)
