"""TensorBoard and W&B (offline) as extra sinks: their files hold the run's params, provenance
tags and metrics, written with no network."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

pytest.importorskip("tensorboard", reason="install tensorboard to test the TensorBoard sink")
pytest.importorskip("wandb", reason="install wandb to test the W&B sink")

PARAMS = {"lr": "0.002", "tracking.experiment_name": "sinks-test"}
TAGS = {"git.commit": "0123abcd", "data.synthetic.md5": "feed.dir"}
RUN_ID = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def written(pkg: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One run into both sinks (once per process: W&B keeps its settings for the process)."""
    root = tmp_path_factory.mktemp("sinks")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.delenv("WANDB_MODE", raising=False)
        patch.setenv("WANDB_DIR", str(root))
        sinks = importlib.import_module(f"{pkg.__name__}.lab.sinks").Sinks(
            ["tensorboard", "wandb"], "workspace-train", RUN_ID, PARAMS, TAGS
        )
        for step, loss in enumerate([0.9, 0.5], start=1):
            sinks.log_metrics({"train_loss": loss}, step=step)
        sinks.log_metrics({"best_val_dice": 0.75}, step=None)
        sinks.close()
    return {"root": root}


def test_tensorboard_gets_the_curves_params_and_tags(written: dict) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (folder,) = (written["root"] / "tensorboard").iterdir()
    assert folder.name == f"workspace-train-{RUN_ID[:8]}"
    events = EventAccumulator(str(folder), size_guidance={"tensors": 0}).Reload()
    assert [(e.step, round(e.value, 3)) for e in events.Scalars("train_loss")] == [(1, 0.9), (2, 0.5)]
    provenance = events.Tensors("provenance/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "0123abcd" in provenance and RUN_ID in provenance


def test_wandb_runs_offline_with_the_same_record(written: dict) -> None:
    (run,) = (written["root"] / "wandb").glob("offline-run-*")
    assert run.name.endswith(RUN_ID)  # the W&B run id is the MLflow run id
    # The offline log is protobuf records, whose strings are stored as they are.
    record = (run / f"run-{RUN_ID}.wandb").read_bytes()
    for expected in ("tracking.experiment_name", "provenance", "0123abcd", "train_loss", "best_val_dice"):
        assert expected.encode() in record, expected


@pytest.mark.slow
def test_an_experiment_with_both_sinks_writes_them_for_train_and_evaluate(
    tmp_path_factory: pytest.TempPathFactory, copy_project, exp_run
) -> None:
    workspace = copy_project(tmp_path_factory.mktemp("sinks-pipeline"))  # sinks are no stage dep
    exp_run(workspace, "tracking.sinks=[tensorboard,wandb]")
    # One folder per MLflow run: <experiment>-<stage>-<run id prefix>.
    stages = sorted(path.name.rsplit("-", 2)[1] for path in (workspace / "tensorboard").iterdir())
    assert stages == ["evaluate", "train"]
    assert len(list((workspace / "wandb").glob("offline-run-*"))) == 2
