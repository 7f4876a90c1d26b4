"""`compare` on real experiments: a learning rate that learns against one that barely moves, and one
configuration under two seeds (``seed`` leaves the data and the split alone: same test cases)."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable

import pytest

pytestmark = pytest.mark.slow
# Small, but with four test cases: too few cases give no interval at all.
SMALL = (
    "synthetic.num_cases=12",
    "synthetic.size=32",
    "patch_size=[32,32,32]",
    "data.test_fraction=0.34",
    "epochs=8",
)
VERDICT = re.compile(
    r"(?P<who>[AB]) beats [AB] by (?P<gain>[\d.]+) \((?P<low>-?[\d.]+) to (?P<high>-?[\d.]+)\)"
    r"|no difference beyond noise \((?P<mean>[+-][\d.]+), (?P<nlow>[+-][\d.]+) to (?P<nhigh>[+-][\d.]+)\)"
)


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory, copy_project: Callable, run) -> Callable:
    """Three named experiments in one project; ``compared(a, b)`` runs `compare a b`."""
    workspace = copy_project(tmp_path_factory.mktemp("compare"))
    for name, overrides in (
        ("learns", ("lr=2e-3", "seed=0")),
        ("barely", ("lr=1e-5", "seed=0")),
        ("reseeded", ("lr=2e-3", "seed=1")),
    ):
        sets = [arg for value in (*SMALL, *overrides) for arg in ("-S", value)]
        run([sys.executable, "-m", "dvc", "exp", "run", "--name", name, *sets], workspace)
    package = next(p.parent.name for p in (workspace / "src").glob("*/cli.py"))

    def compare(a: str, b: str) -> list[str]:
        result = run([sys.executable, "-m", package, "compare", a, b], workspace)
        rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "class" not in line]
        assert rows and all(row.split("|")[2].strip() == "4" for row in rows), result.stdout  # 4 cases
        return rows

    return compare


def test_a_rate_that_learns_beats_one_that_barely_moves_beyond_noise(compared: Callable) -> None:
    for row in compared("barely", "learns"):
        verdict = VERDICT.search(row)
        assert verdict and verdict["who"] == "B" and float(verdict["low"]) > 0, row


def test_two_seeds_of_one_configuration_get_a_verdict_that_matches_their_interval(compared: Callable) -> None:
    for row in compared("learns", "reseeded"):
        verdict = VERDICT.search(row)
        assert verdict, row
        if verdict["mean"] is not None:  # no difference: the interval holds 0
            assert float(verdict["nlow"]) <= 0 <= float(verdict["nhigh"]), row
        else:  # an honest difference: the interval excludes 0 on the winner's side
            assert float(verdict["low"]) > 0, row
