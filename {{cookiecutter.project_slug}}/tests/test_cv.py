"""`cv`: three folds on the tiny synthetic data, run as queued DVC experiments, then summarised."""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest
from conftest import TINY

pytestmark = pytest.mark.slow
FOLDS = 3


@pytest.fixture(scope="module")
def cv(tmp_path_factory: pytest.TempPathFactory, copy_experiment: Callable, run) -> dict:
    workspace = copy_experiment(tmp_path_factory.mktemp("cv"))
    package = next(p.parent.name for p in (workspace / "src").glob("*/cli.py"))
    command = [
        sys.executable,
        "-m",
        package,
        "cv",
        *(arg for o in (*TINY, f"data.folds={FOLDS}") for arg in ("-S", o)),
    ]
    result = run([*command, "--jobs", "2"], workspace)
    client = mlflow.MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    summary = client.search_runs(experiments, "tags.stage = 'cv'")
    assert len(summary) == 1, result.stderr[-3000:]
    group = summary[0].data.tags["cv.group"]
    folded = client.search_runs(experiments, f"tags.`cv.group` = '{group}'")
    return {
        "workspace": workspace,
        "command": command,
        "output": result.stdout,
        "client": client,
        "summary": summary[0],
        "train": {r.data.tags["cv.fold"]: r for r in folded if r.data.tags["stage"] == "train"},
        "evaluate": {r.data.tags["cv.fold"]: r for r in folded if r.data.tags["stage"] == "evaluate"},
    }


def test_each_fold_is_a_queued_experiment_with_its_fold_and_group(cv: dict, run) -> None:
    shown = json.loads(run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cv["workspace"]).stdout)
    folds = {}
    for entry in shown:
        for experiment in entry.get("experiments") or []:
            for rev in experiment["revs"]:
                if rev["name"].startswith("cv-"):
                    data = rev["data"]
                    metrics = data["metrics"]["metrics/evaluate.json"]["data"]
                    folds[rev["name"]] = (data["params"]["params.yaml"]["data"]["data"]["fold"], metrics)
    assert sorted(fold for fold, _ in folds.values()) == list(range(FOLDS)), sorted(folds)
    assert all(name.endswith(f"-fold{fold}") for name, (fold, _) in folds.items())
    # The columns that say what a score is: its fold, its configuration, how many cases it averages.
    assert {metrics["fold"] for _, metrics in folds.values()} == set(range(FOLDS))
    assert len({metrics["cv_group"] for _, metrics in folds.values()}) == 1
    assert {metrics["test_cases"] for _, metrics in folds.values()} == {1}
    assert sorted(cv["train"]) == sorted(cv["evaluate"]) == [f"{fold}/{FOLDS}" for fold in range(FOLDS)]


def test_validation_folds_are_disjoint_and_cover_the_pool_and_the_test_set_is_shared(cv: dict) -> None:
    client = cv["client"]
    splits = [
        json.loads(Path(client.download_artifacts(run.info.run_id, "split.json")).read_text())
        for _, run in sorted(cv["train"].items())
    ]
    tests = {tuple(split["test"]) for split in splits}
    assert len(tests) == 1
    pool = set(splits[0]["train"]) | set(splits[0]["val"])
    vals = [set(split["val"]) for split in splits]
    assert set().union(*vals) == pool and sum(map(len, vals)) == len(pool)
    assert all(set(split["train"]) == pool - set(split["val"]) for split in splits)
    assert pool.isdisjoint(tests.pop())
    # The same preprocessed data, split included, under every fold: their test scores compare.
    assert len({run.data.tags["data.processed.md5"] for run in cv["evaluate"].values()}) == 1


def test_the_summary_gives_each_fold_and_mean_and_sd_and_links_its_folds(cv: dict, run) -> None:
    summary, output = cv["summary"], cv["output"]
    evaluations = [run.info.run_id for _, run in sorted(cv["evaluate"].items())]
    assert summary.data.tags["cv.runs"] == ",".join(evaluations)
    scores = [run.data.metrics["test_dice_mean"] for run in cv["evaluate"].values()]
    assert summary.data.metrics["test_dice_mean_mean"] == pytest.approx(statistics.mean(scores))
    assert summary.data.metrics["test_dice_mean_sd"] == pytest.approx(statistics.stdev(scores))
    assert f"{FOLDS} fold(s)" in output
    assert f"test_dice_mean: {statistics.mean(scores):.4f} ± {statistics.stdev(scores):.4f}" in output
    assert "val_dice_mean: " in output
    again = run([*cv["command"], "--summary"], cv["workspace"])  # summarises without running
    assert again.stdout == output
