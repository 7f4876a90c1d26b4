"""Provenance per stage, on a real pipeline: an edit re-runs exactly the stages whose code it
touches, and `verify` fails exactly the runs of those stages, naming the file.

| edit | `dvc exp run` re-runs | verify <train run> | verify <evaluate run> |
|---|---|---|---|
| a comment in plumbing (lab/doctor.py) | nothing | passes | passes |
| a line of evaluation code | evaluate | passes | MISMATCH, naming the file |
| a line of the training loop | train, evaluate | MISMATCH, naming the file | MISMATCH |
| a line of data/transforms | preprocess and after | MISMATCH | MISMATCH |
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
STAGES = ("synthesize", "fingerprint", "preprocess", "train", "evaluate")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, copy_experiment, run) -> Path:
    """A copy of the session's finished tiny experiment, its results committed."""
    target = copy_experiment(tmp_path_factory.mktemp("stage-provenance"))
    run(["git", "add", "--all"], target)
    run(["git", "commit", "--quiet", "-m", "Results of the first experiment"], target)
    return target


def run_id(workspace: Path, stage: str) -> str:
    return json.loads((workspace / f"metrics/{stage}.json").read_text())["mlflow_run_id"]


def verify(workspace: Path, run, pkg, run_id: str):
    return run([sys.executable, "-m", pkg.__name__, "verify", run_id], workspace, check=False)


def mismatched(result) -> dict[str, str]:
    """MISMATCH lines of `verify`, by item."""
    lines = [
        line.split(maxsplit=2) for line in result.stdout.splitlines() if line.strip().startswith("MISMATCH")
    ]
    return {item: rest for _, item, rest in lines}


@pytest.mark.parametrize(
    ("edited", "reruns", "train_fails", "evaluate_fails"),
    [
        ("lab/doctor.py", set(), False, False),
        ("evaluation/overlays.py", {"evaluate"}, False, True),
        ("training/engine.py", {"train", "evaluate"}, True, True),
        ("data/transforms.py", {"preprocess", "train", "evaluate"}, True, True),
    ],
    ids=["plumbing", "evaluation", "training loop", "transforms"],
)
def test_an_edit_reruns_and_fails_verify_for_exactly_its_stages(
    workspace: Path, run, pkg, exp_run, edited: str, reruns: set, train_fails: bool, evaluate_fails: bool
) -> None:
    before = {stage: run_id(workspace, stage) for stage in ("train", "evaluate")}
    path = workspace / "src" / pkg.__name__ / edited
    path.write_text(path.read_text() + "\n# an edit after the run\n")
    try:
        output = exp_run(workspace).stdout
        ran = {stage for stage in STAGES if f"Running stage '{stage}'" in output}
        assert ran == reruns, output[-3000:]
        for stage, fails in (("train", train_fails), ("evaluate", evaluate_fails)):
            result = verify(workspace, run, pkg, before[stage])
            found = mismatched(result)
            if not fails:
                assert result.returncode == 0 and not found, result.stdout
                continue
            # git.commit and git.dirty differ too: a later commit, dirty where this stage's code is
            assert result.returncode == 1 and f"code.{stage}.md5" in found, result.stdout
            assert re.search(rf"\(changed: .*{re.escape(edited)}", found[f"code.{stage}.md5"]), result.stdout
    finally:
        run(["git", "checkout", "--", "."], workspace)
        run([sys.executable, "-m", "dvc", "checkout", "--force"], workspace)
