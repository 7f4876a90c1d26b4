"""The model registry over a series of experiments, in a copy of this project.

Which of two tiny runs scores better is not something a test should bet on. The second
experiment is therefore trained once without registering; then ``tracking.champion_mode`` is
chosen from the recorded scores so that its registration is the worse one, and the opposite
mode makes the same evaluation the better one. Only evaluate re-runs for those two.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import mlflow
import pytest
import torch
import yaml
from omegaconf import OmegaConf

Run = Callable[..., subprocess.CompletedProcess]
WORSE = "lr=1e-6"
THREADS = 1
CONTRACT_TAGS = (
    "git.commit",
    "git.dirty",
    "code.evaluate.md5",
    "params.sha256",
    "seed",
    "dvc.exp_name",
    "dvc.baseline_rev",
    "data.synthetic.md5",
    "data.processed.md5",
    "env.python",
    "env.torch",
)
# Loads the champion the way a user would, with nothing of the test process's state.
LOAD_AND_PREDICT = """
import importlib, json, os, sys
import mlflow, mlflow.pytorch, torch
os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"  # as `predict` loads: no pickle
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
mlflow.set_tracking_uri(args["tracking_uri"])
model = mlflow.pytorch.load_model(args["model_uri"])  # a torch.export program, traced in eval mode
predict = importlib.import_module(args["package"] + ".engine").sliding_window_logits
acceleration = importlib.import_module(args["package"] + ".acceleration").Acceleration
plain = acceleration.for_inference(torch.device("cpu"))
image = torch.load(args["image"], weights_only=True)
torch.save(predict(model, image, args["patch_size"], args["overlap"], plain), args["logits"])
"""


@pytest.fixture(scope="module")
def story(
    tmp_path_factory: pytest.TempPathFactory, made_experiment: Path, copy_experiment: Callable, exp_run: Run
) -> dict:
    """Run the experiments once; record what the registry and workspace said after each. The
    first is the session's finished tiny experiment."""
    workspace = copy_experiment(tmp_path_factory.mktemp("registry"))
    client = mlflow.MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    name = yaml.safe_load((workspace / "params.yaml").read_text())["tracking"]["experiment_name"]

    def record(log: str) -> dict:
        versions = client.search_model_versions(f"name = '{name}'")
        return {
            "log": log,
            "evaluate": json.loads((workspace / "metrics/evaluate.json").read_text()),
            "train_run_id": json.loads((workspace / "metrics/train.json").read_text())["mlflow_run_id"],
            "versions": sorted(int(version.version) for version in versions),
            "champion": client.get_registered_model(name).aliases.get("champion") if versions else None,
        }

    def step(*overrides: str) -> dict:
        output = exp_run(workspace, *overrides)
        return record(output.stdout + output.stderr)

    first = record((made_experiment.parent / "exp-run.log").read_text())
    unregistered = step(WORSE, "tracking.register_model=false")
    dice_first, dice_worse = first["evaluate"]["dice_mean"], unregistered["evaluate"]["dice_mean"]
    assert dice_worse != dice_first, "the two settings scored the same; no mode can order them"
    worse_mode, better_mode = ("max", "min") if dice_worse < dice_first else ("min", "max")
    # One test case: no interval could tell them apart, so these two steps use the `best` policy.
    worse = step(WORSE, f"tracking.champion_mode={worse_mode}", "tracking.champion_policy=best")
    better = step(WORSE, f"tracking.champion_mode={better_mode}", "tracking.champion_policy=best")
    # The same model once more under the default policy: no gain on the same case, no move.
    same = step(WORSE, f"tracking.champion_mode={better_mode}", "tracking.champion_policy=significant")
    return {
        "workspace": workspace,
        "client": client,
        "name": name,
        "first": first,
        "unregistered": unregistered,
        "worse": worse,
        "better": better,
        "same": same,
    }


@pytest.mark.slow
def test_first_version_carries_the_evaluate_runs_provenance(story: dict) -> None:
    client, first = story["client"], story["first"]
    assert first["versions"] == [1]
    assert first["champion"] == 1
    assert "tracking.champion_metric" in first["log"]
    version = client.get_model_version(story["name"], "1")
    evaluate_run = client.get_run(first["evaluate"]["mlflow_run_id"])
    run_tags = {
        key: value
        for key, value in evaluate_run.data.tags.items()
        if not key.startswith("mlflow.") and key != "stage"
    }
    assert all(tag in run_tags for tag in CONTRACT_TAGS), sorted(run_tags)
    assert {key: version.tags[key] for key in run_tags} == run_tags
    assert version.tags["train_run_id"] == first["train_run_id"] == version.run_id
    assert version.tags["evaluate_run_id"] == evaluate_run.info.run_id
    assert float(version.tags["test_dice_mean"]) == first["evaluate"]["dice_mean"]


@pytest.mark.slow
def test_register_model_false_registers_nothing(story: dict) -> None:
    assert story["unregistered"]["versions"] == [1]
    assert "tracking.register_model=False" in story["unregistered"]["log"]


@pytest.mark.slow
def test_champion_moves_only_to_a_better_version(story: dict) -> None:
    worse, better = story["worse"], story["better"]
    assert worse["versions"] == [1, 2]
    assert worse["champion"] == 1
    assert "champion stays v1" in worse["log"]
    assert better["versions"] == [1, 2, 3]
    assert better["champion"] == 3
    # Same trained model each time: only evaluate re-ran for the mode changes.
    assert worse["train_run_id"] == better["train_run_id"] == story["unregistered"]["train_run_id"]


@pytest.mark.slow
def test_the_significant_policy_keeps_the_champion_without_a_gain_beyond_noise(story: dict) -> None:
    same = story["same"]
    assert same["versions"] == [1, 2, 3, 4]
    assert same["champion"] == 3
    # The mode is min or max, whichever ordered the first two, so the sign of a zero may show.
    assert re.search(r"champion stays v3: dice_mean gain over v3 [+-]0\.0000 ", same["log"]), same["log"][
        -3000:
    ]
    assert "within noise (tracking.champion_policy=significant" in same["log"]
    assert same["train_run_id"] == story["better"]["train_run_id"]


@pytest.mark.slow
def test_champion_loads_in_a_fresh_process_and_predicts_like_its_checkpoint(
    story: dict, run: Run, package_module: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    workspace, client, name = story["workspace"], story["client"], story["name"]
    champion = client.get_model_version_by_alias(name, "champion")
    # The workspace holds the outputs of the last experiment, which trained the champion.
    assert champion.tags["train_run_id"] == story["better"]["train_run_id"]
    params = OmegaConf.load(workspace / "params.yaml")
    processed = workspace / "data/processed"
    loaders = package_module("data.loaders")
    size_mb = loaders.read_plan(processed)["size_mb"]
    caching = loaders.Caching.of(params)
    batch = next(iter(loaders.eval_loader(processed, "test", 0, caching, size_mb, torch.device("cpu"))))
    image = batch["image"].as_tensor()
    torch.save(image, tmp_path / "image.pt")
    engine = package_module("training.engine")
    arguments = {
        "threads": THREADS,
        "tracking_uri": f"sqlite:///{workspace / 'mlflow.db'}",
        "model_uri": f"models:/{name}@champion",
        "package": engine.__name__.rsplit(".", 1)[0],
        "image": str(tmp_path / "image.pt"),
        "patch_size": list(params.patch_size),
        "overlap": params.evaluate.overlap,
        "logits": str(tmp_path / "logits.pt"),
    }
    run([sys.executable, "-c", LOAD_AND_PREDICT, json.dumps(arguments)], workspace)
    served = torch.load(tmp_path / "logits.pt", weights_only=True)

    dataset = package_module("data.msd").read_msd(processed)
    model = package_module("model.networks").build_model(
        params.model, dataset.in_channels, dataset.num_classes
    )
    checkpoint = torch.load(workspace / "models/best.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(checkpoint["model"])
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)  # as in the fresh process: CPU sums depend on the thread count
    try:
        plain = package_module("training.acceleration").Acceleration.for_inference(torch.device("cpu"))
        patch, overlap = list(params.patch_size), params.evaluate.overlap
        own = engine.sliding_window_logits(model.eval(), image, patch, overlap, plain)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(served.argmax(1), own.argmax(1))
    assert torch.allclose(served, own, atol=1e-6)
