"""End to end: the DVC pipeline on tiny synthetic data, on the shared finished experiment.

Each test leaves the experiment as it found it; the runs it counts are the finished ones."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from conftest import compose_conf

CONTRACT_TAGS = ("git.commit", "git.dirty", "params.sha256", "seed", "dvc.exp_name")
Run = Callable[..., subprocess.CompletedProcess]


def test_pipeline_writes_metrics_linked_to_mlflow(experiment: Path) -> None:
    metrics = json.loads((experiment / "metrics/evaluate.json").read_text())
    assert 0.0 <= metrics["dice_mean"] <= 1.0
    train = json.loads((experiment / "metrics/train.json").read_text())
    client = mlflow.MlflowClient(f"sqlite:///{experiment / 'mlflow.db'}")
    train_run = client.get_run(train["mlflow_run_id"])
    evaluate_run = client.get_run(metrics["mlflow_run_id"])
    assert evaluate_run.data.tags["mlflow.parentRunId"] == train_run.info.run_id
    assert len(client.get_metric_history(train_run.info.run_id, "train_loss")) == 2
    assert evaluate_run.data.metrics["test_dice_mean"] == pytest.approx(metrics["dice_mean"])
    cases = (experiment / "reports/per_case.csv").read_text().strip().splitlines()[1:]
    assert metrics["test_cases"] == evaluate_run.data.metrics["test_cases"] == len(cases) >= 1


def test_runs_carry_the_provenance_contract(experiment: Path, run: Run) -> None:
    lock = yaml.safe_load((experiment / "dvc.lock").read_text())
    recorded = {
        entry["path"]: entry["md5"]
        for stage in lock["stages"].values()
        for entry in [*stage.get("deps", []), *stage.get("outs", [])]
    }
    head = run(["git", "rev-parse", "HEAD"], experiment).stdout.strip()
    client = mlflow.MlflowClient(f"sqlite:///{experiment / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name(_experiment_name(experiment)).experiment_id
    train_id = json.loads((experiment / "metrics/train.json").read_text())["mlflow_run_id"]
    name = client.get_run(train_id).data.tags["dvc.exp_name"]
    runs = client.search_runs([experiment_id], f"tags.`dvc.exp_name` = '{name}'")
    assert len(runs) == 2  # one per stage that ran
    for found in runs:
        tags = found.data.tags
        assert all(tag in tags for tag in CONTRACT_TAGS), sorted(tags)
        assert tags["git.commit"] == head
        assert tags["git.dirty"] == "false"
        assert tags["data.synthetic.md5"] == recorded["data/synthetic"]
        assert tags["data.processed.md5"] == recorded["data/processed"]
        assert found.data.params["lr"] == "0.002"
    train = next(found for found in runs if found.data.tags["stage"] == "train")
    # What the fast-path options became here; on the CPU every GPU option is off.
    fast_path = {key: train.data.params.get(key) for key in ("resolved.precision", "resolved.cache")}
    if not torch.cuda.is_available():
        assert fast_path == {"resolved.precision": "float32", "resolved.cache": "memory"}


def test_stale_params_are_refused(experiment: Path, run: Run) -> None:
    config = experiment / "conf/config.yaml"
    original = config.read_text()
    config.write_text(original.replace("epochs: 20", "epochs: 3"))
    try:
        result = run([sys.executable, "-m", "dvc", "repro", "--force", "train"], experiment, check=False)
    finally:
        config.write_text(original)
    assert result.returncode != 0
    assert "stale" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def _experiment_name(experiment: Path) -> str:
    return yaml.safe_load((experiment / "params.yaml").read_text())["tracking"]["experiment_name"]


def test_curves_per_class_and_overlays_from_worst_to_best(experiment: Path) -> None:
    per_class = sorted((experiment / "plots/train/val_dice_per_class").glob("*.csv"))
    names = json.loads((experiment / "data/processed/dataset.json").read_text())["labels"]
    foreground = sorted(f"{name}.csv" for index, name in names.items() if int(index) != 0)
    assert [path.name for path in per_class] == foreground
    header, *rows = per_class[0].read_text().splitlines()
    assert header == "epoch,val_dice" and len(rows) == 2
    overlays = sorted(path.name.split("-", 1)[0] for path in (experiment / "reports/overlays").glob("*.png"))
    test_cases = len(json.loads((experiment / "data/processed/splits.json").read_text())["test"])
    expected = {1: ["only"], 2: ["best", "worst"]}.get(test_cases, ["best", "median", "worst"])
    assert overlays == expected


def _crafted_overrides(slot: str, target: str, marker: Path) -> list[str]:
    """-S overrides that turn ``slot`` into a call of ``target`` that would leave ``marker``.

    The slot's own keys are removed with `~`, so that the call gets only the crafted arguments.
    """
    if target == "monai.utils.run_cmd":
        arguments = [f"cmd_list=[touch,{marker}]"]
    elif target == "torch.hub.load":  # runs the hubconf.py of a local folder
        hub = marker.with_name(f"{marker.name}-hub")
        hub.mkdir(exist_ok=True)
        (hub / "hubconf.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
        arguments = [f"repo_or_dir={hub}", "model=net", "source=local"]
    else:  # torch.utils.cpp_extension.load_inline: compiling writes into the build folder
        arguments = ["name=crafted", "cpp_sources='int crafted;'", f"build_directory={marker}"]
    composed = compose_conf()
    node = composed.model.net if slot == "model.net" else composed[slot]
    removed = [f"~{slot}.{key}" for key in node if key != "_target_"]
    sets = [*removed, f"{slot}._target_={target}", *(f"+{slot}.{argument}" for argument in arguments)]
    return [arg for override in sets for arg in ("-S", override)]


@pytest.mark.parametrize(
    ("slot", "target"),
    [
        ("loss", "monai.utils.run_cmd"),
        ("model.net", "torch.hub.load"),
        ("loss", "torch.utils.cpp_extension.load_inline"),
    ],
)
def test_a_crafted_target_stops_before_anything_is_built(
    experiment: Path, run: Run, slot: str, target: str
) -> None:
    client = mlflow.MlflowClient(f"sqlite:///{experiment / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name(_experiment_name(experiment)).experiment_id
    runs_before = len(client.search_runs([experiment_id]))
    marker = experiment.parent / f"marker-{target}"
    params = experiment / "params.yaml"
    original = params.read_text()
    crafted = _crafted_overrides(slot, target, marker)
    try:
        result = run([sys.executable, "-m", "dvc", "exp", "run", *crafted], experiment, check=False)
    finally:  # `dvc exp run` composed the crafted params.yaml; the failed stage removed its outputs
        params.write_text(original)
        run([sys.executable, "-m", "dvc", "checkout", "--force"], experiment)
    assert result.returncode != 0
    assert f"`{slot}._target_={target}` is refused: it " in result.stderr + result.stdout
    assert f"`{slot}` holds" in result.stderr + result.stdout
    assert not marker.exists()
    assert len(client.search_runs([experiment_id])) == runs_before


def test_a_typo_stops_the_run_before_any_stage_completes(experiment: Path, run: Run) -> None:
    params, lock = experiment / "params.yaml", experiment / "dvc.lock"
    original, recorded = params.read_text(), lock.read_text()
    typo = ["-S", "tracking.champion_mode=maximum"]
    try:
        result = run([sys.executable, "-m", "dvc", "exp", "run", *typo], experiment, check=False)
    finally:
        params.write_text(original)
        run([sys.executable, "-m", "dvc", "checkout", "--force"], experiment)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "`tracking.champion_mode=maximum` is not allowed: it must be one of max, min" in output
    assert "`dvc exp run -S tracking.champion_mode=max`" in output
    # Whichever stage DVC starts first refuses while loading params.yaml: no stage completed.
    assert "Updating lock file" not in output and lock.read_text() == recorded


def test_runs_show_their_data_as_mlflow_datasets_and_describe_themselves(experiment: Path) -> None:
    client = mlflow.MlflowClient(f"sqlite:///{experiment / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name(_experiment_name(experiment)).experiment_id
    train_id = json.loads((experiment / "metrics/train.json").read_text())["mlflow_run_id"]
    train = client.get_run(train_id)
    processed = train.data.tags["data.processed.md5"]
    found = client.search_runs([experiment_id], f"dataset.digest = '{processed}'")
    assert train_id in {run.info.run_id for run in found}
    inputs = {entry.dataset.name: entry.dataset for entry in train.inputs.dataset_inputs}
    assert inputs["processed"].digest == processed and inputs["processed"].source_type == "dvc"
    assert json.loads(inputs["processed"].source)["path"] == "data/processed"
    description = train.data.tags["mlflow.note.content"]
    assert train.data.tags["dvc.exp_name"] in description and f"reproduce {train_id}" in description
    console = client.download_artifacts(train_id, "logs/console.log", str(experiment / ".."))
    assert "epoch 2/2" in Path(console).read_text()


def test_a_stage_that_fails_marks_its_run_failed_with_the_traceback(experiment: Path, run: Run) -> None:
    params = experiment / "params.yaml"
    original = params.read_text()
    params.write_text(original.replace("champion_metric: dice_mean", "champion_metric: no_such_metric"))
    package = next(path.parent.name for path in (experiment / "src").glob("*/cli.py"))
    try:
        result = run([sys.executable, "-m", package, "evaluate"], experiment, check=False)
    finally:  # evaluate rewrote its reports before it failed: DVC puts the recorded ones back
        params.write_text(original)
        run([sys.executable, "-m", "dvc", "checkout", "--force"], experiment)
    assert result.returncode == 2 and "no_such_metric" in result.stderr
    client = mlflow.MlflowClient(f"sqlite:///{experiment / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name(_experiment_name(experiment)).experiment_id
    (failed,) = client.search_runs([experiment_id], "attributes.status = 'FAILED'")
    trace = client.download_artifacts(failed.info.run_id, "logs/traceback.txt", str(experiment / ".."))
    assert "no_such_metric" in Path(trace).read_text()


def test_an_unknown_key_is_refused_with_the_plus_syntax(experiment: Path, run: Run) -> None:
    params = (experiment / "params.yaml").read_text()
    result = run([sys.executable, "-m", "dvc", "exp", "run", "-S", "no_such_key=1"], experiment, check=False)
    assert result.returncode != 0
    assert "Could not override 'no_such_key'" in result.stderr
    assert "To append to your config use +no_such_key=1" in result.stderr
    assert (experiment / "params.yaml").read_text() == params
