"""`cv`: two folds on the tiny synthetic data, run as queued DVC experiments, then summarised."""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import mlflow
import nibabel as nib
import pandas as pd
import pytest
import torch
import yaml
from conftest import TINY

pytestmark = pytest.mark.slow
FOLDS = 2  # the fewest that still give disjoint folds, a spread and an ensemble


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


def test_predict_ensembles_the_folds_with_mirrored_passes(cv: dict, run, tmp_path: Path) -> None:
    workspace, group = cv["workspace"], cv["summary"].data.tags["cv.group"]
    package = cv["command"][2]
    scan = sorted((workspace / "data" / "synthetic" / "imagesTr").iterdir())[0]
    output = tmp_path / "masks"
    predict = [sys.executable, "-m", package, "predict", str(scan), "--output", str(output)]
    run([*predict, "--model", f"cv:{group}", "--tta", "flip"], workspace)
    mask = nib.load(output / scan.name)
    assert mask.shape == nib.load(scan).shape
    sidecar = json.loads((output / scan.name.replace(".nii.gz", ".json")).read_text())
    folds = [run.info.run_id for _, run in sorted(cv["train"].items())]
    assert [member["run_id"] for member in sidecar["members"]] == folds
    assert sidecar["combined"] == f"mean softmax of {FOLDS} model(s) x 8 mirrorings"


def test_the_ensemble_softmax_is_the_mean_of_the_folds_softmax_on_one_case(
    cv: dict, package_module, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(cv["workspace"])  # the project whose tracking store holds the folds
    group = cv["summary"].data.tags["cv.group"]
    members = package_module("inference.predict").load_models([f"cv:{group}"], cv["workspace"])
    assert [m.source["run_id"] for m in members] == [r.info.run_id for _, r in sorted(cv["train"].items())]
    card = members[0].card
    scan = sorted((cv["workspace"] / "data" / "synthetic" / "imagesTr").iterdir())[0]
    prepare = package_module("data.transforms").preprocess_transforms(card["preprocessing"], keys=("image",))
    image = prepare({"image": str(scan)})["image"][None].as_tensor()
    networks = package_module("model.networks")
    models = [networks.model_from_card(m.card, m.state) for m in members]
    plain = package_module("training.acceleration").Acceleration.for_inference(torch.device("cpu"))
    ensemble = package_module("inference.ensemble")
    patches = [m.card["patch_size"] for m in members]
    combined = ensemble.Ensemble(models, patches, [()]).logits_or_probabilities(image, 0.25, plain)
    logits = package_module("training.engine").sliding_window_logits
    each = [
        torch.softmax(logits(model, image, patch, 0.25, plain), dim=1)
        for model, patch in zip(models, patches, strict=True)
    ]
    assert torch.allclose(combined, torch.stack(each).mean(0), atol=1e-6)
    assert not torch.allclose(each[0], each[1])  # the folds are different models


@pytest.fixture(scope="module")
def registered(cv: dict, run) -> dict:
    """The folds' ensemble, scored and registered. It brings a fold's outputs into the workspace
    (`dvc exp apply`), so the tests that use it come last in this module."""
    workspace, client, package = cv["workspace"], cv["client"], cv["command"][2]
    group = cv["summary"].data.tags["cv.group"]
    run(
        [sys.executable, "-m", "dvc", "exp", "apply", cv["train"][f"0/{FOLDS}"].data.tags["dvc.exp_name"]],
        workspace,
    )
    command = [sys.executable, "-m", package, "ensemble", f"cv:{group}", "--tta", "flip", "--register"]
    scored = run(command, workspace)
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    (ensemble,) = client.search_runs(experiments, "tags.stage = 'ensemble'")
    return {"output": scored.stdout, "run": ensemble}


def test_the_registered_ensemble_is_scored_like_a_model_and_predict_runs_it(
    cv: dict, registered: dict, run, tmp_path: Path
) -> None:
    workspace, client, package = cv["workspace"], cv["client"], cv["command"][2]
    group = cv["summary"].data.tags["cv.group"]
    tool = [sys.executable, "-m", package]
    assert [line.split("|")[1].strip() for line in registered["output"].splitlines()[2:]] == [
        *(f"{fold}/{FOLDS}" for fold in range(FOLDS)),
        "ensemble",
    ], registered["output"]
    ensemble = registered["run"]
    folds = [r.info.run_id for _, r in sorted(cv["train"].items())]
    assert ensemble.data.tags["ensemble.members"] == ",".join(folds)
    assert ensemble.data.tags["ensemble.combined"] == f"mean softmax of {FOLDS} model(s) x 8 mirrorings"
    assert ensemble.data.tags["cv.group"] == group and "test_dice_mean" in ensemble.data.metrics
    cases = {tuple(pd.read_csv(client.download_artifacts(r.info.run_id, "reports/per_case.csv"))["case"])
             for r in [ensemble, *cv["evaluate"].values()]}  # fmt: skip
    assert len(cases) == 1  # the test cases its folds were scored on

    name = yaml.safe_load((workspace / "params.yaml").read_text())["tracking"]["experiment_name"]
    version = max(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
    assert version.tags["ensemble.members"] == ",".join(folds) and version.tags["ensemble.tta"] == "flip"
    assert version.tags["evaluate_run_id"] == ensemble.info.run_id
    assert "tracking.champion_policy=" in version.tags["champion.decision"]

    scan = sorted((workspace / "data" / "synthetic" / "imagesTr").iterdir())[0]
    output = tmp_path / "masks"
    model = f"models:/{name}/{version.version}"
    run([*tool, "predict", str(scan), "--model", model, "--output", str(output)], workspace)
    assert nib.load(output / scan.name).shape == nib.load(scan).shape
    sidecar = json.loads((output / scan.name.replace(".nii.gz", ".json")).read_text())
    assert [member["run_id"] for member in sidecar["members"]] == folds
    assert sidecar["combined"] == f"mean softmax of {FOLDS} model(s) x 8 mirrorings"  # as registered

    fold_zero = cv["evaluate"][f"0/{FOLDS}"].info.run_id
    compared = run([*tool, "compare", fold_zero, ensemble.info.run_id], workspace)
    assert "B = " in compared.stdout and "| " in compared.stdout


def test_verify_and_reproduce_take_an_ensemble_through_its_members(cv: dict, registered: dict, run) -> None:
    """Each fold is checked in its own experiment's commit (their params differ), and re-trained."""
    tool, ensemble = [sys.executable, "-m", cv["command"][2]], registered["run"].info.run_id
    verified = run([*tool, "verify", ensemble], cv["workspace"]).stdout
    assert f"{FOLDS} of {FOLDS} members verify" in verified and "MISMATCH" not in verified, verified
    for _, member in sorted(cv["train"].items()):
        name = member.data.tags["dvc.exp_name"]
        assert f"Verifying MLflow run {member.info.run_id} (train, {name})" in verified, verified
    reproduced = run([*tool, "reproduce", ensemble], cv["workspace"]).stdout
    assert f"{FOLDS} of {FOLDS} members reproduce: metrics agree." in reproduced, reproduced[-3000:]
    assert reproduced.count("Reproduced as MLflow run") == FOLDS
