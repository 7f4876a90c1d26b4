"""SIGTERM during training saves a resumable state and marks the run KILLED; the next run resumes
it, and on the CPU ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable

import mlflow
import pytest

EPOCHS = 6
STOP_AFTER = f"epoch 2/{EPOCHS} "


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory, copy_experiment: Callable, exp_run: Callable) -> dict:
    workspace = copy_experiment(tmp_path_factory.mktemp("resume"))
    exp_run(workspace, f"epochs={EPOCHS}")  # the uninterrupted run; params.yaml keeps its values
    uninterrupted = json.loads((workspace / "metrics/train.json").read_text())

    package = next(path.name for path in (workspace / "src").iterdir() if (path / "cli.py").exists())
    env = {**os.environ, "PYTHONPATH": str(workspace / "src")}
    env.pop("MLFLOW_TRACKING_URI", None)
    train = [sys.executable, "-m", package, "train"]
    stopped = subprocess.Popen(train, cwd=workspace, env=env, stderr=subprocess.PIPE, text=True)
    log = []
    for line in stopped.stderr:
        log.append(line)
        if STOP_AFTER in line:
            stopped.send_signal(signal.SIGTERM)
    stopped.wait()
    checkpoint_existed = (workspace / "checkpoints/train-resume.pt").exists()
    resumed = subprocess.run(train, cwd=workspace, env=env, capture_output=True, text=True)
    return {
        "workspace": workspace,
        "uninterrupted": uninterrupted,
        "stopped": stopped.returncode,
        "stopped_log": "".join(log),
        "checkpoint_existed": checkpoint_existed,
        "resumed": resumed,
        "client": mlflow.MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}"),
    }


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_non_zero(story: dict) -> None:
    assert story["stopped"] == 128 + signal.SIGTERM, story["stopped_log"]
    assert "Stopped after epoch" in story["stopped_log"]
    assert "error: stopped by SIGTERM" in story["stopped_log"]
    assert "Traceback" not in story["stopped_log"]
    assert story["checkpoint_existed"]


@pytest.mark.slow
def test_the_next_run_resumes_and_matches_an_uninterrupted_run_bitwise(story: dict) -> None:
    resumed = story["resumed"]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "train-resume.pt after epoch" in resumed.stderr
    final = json.loads((story["workspace"] / "metrics/train.json").read_text())
    for metric in ("best_val_dice", "best_epoch", "final_train_loss"):
        assert final[metric] == story["uninterrupted"][metric], metric
    assert not (story["workspace"] / "checkpoints/train-resume.pt").exists()


@pytest.mark.slow
def test_the_killed_run_is_killed_and_linked_from_the_resumed_one(story: dict) -> None:
    client = story["client"]
    final = json.loads((story["workspace"] / "metrics/train.json").read_text())
    resumed_run = client.get_run(final["mlflow_run_id"])
    killed_run = client.get_run(resumed_run.data.tags["resumed_from"])
    assert killed_run.info.status == "KILLED"
    assert resumed_run.info.status == "FINISHED"
    history = client.get_metric_history(resumed_run.info.run_id, "train_loss")
    assert sorted(metric.step for metric in history) == list(range(1, EPOCHS + 1))
