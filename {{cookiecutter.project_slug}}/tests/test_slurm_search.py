"""examples/slurm_search.sbatch, run as SLURM runs one array task (bash, with SLURM's variables) and
stopped as SLURM stops it (SIGTERM to the script, `--signal=B:TERM`): the script returns only once
the train stage has saved its resume checkpoint, and the requeued task resumes from it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import optuna
import pytest
import torch
from conftest import PROJECT_ROOT, TINY

pytestmark = pytest.mark.slow
# Enough that the stop lands mid-run: a tiny epoch takes well under a second on a quick CPU,
# and the poll below sees the second validation a second or two after it is reported.
EPOCHS = 30


def validations_reported(storage: str) -> int:
    """How many validation scores the study's trials have reported so far (0 before it exists)."""
    if not Path(storage.removeprefix("sqlite:///")).exists():
        return 0
    try:  # the storage's one study (Optuna finds it when no name is given)
        study = optuna.load_study(study_name=None, storage=storage)
    except Exception:  # the worker may still be creating the schema, or the study
        return 0
    return sum(len(trial.intermediate_values) for trial in study.trials)


def test_a_stopped_array_task_keeps_its_checkpoint_and_the_requeued_task_resumes(
    tmp_path: Path, copy_experiment: Callable
) -> None:
    submit = copy_experiment(tmp_path / "submit")
    task = tmp_path / "clones" / "task-0"
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    tiny = " ".join(f"-S {o}" for o in (*TINY[1:], f"epochs={EPOCHS}"))
    env = {
        **os.environ,
        "PYTHONPATH": "src",  # each task's own clone's code
        "SLURM_SUBMIT_DIR": str(submit),
        "SLURM_ARRAY_TASK_ID": "0",
        "SEARCH_CLONES": str(tmp_path / "clones"),
        "SEARCH_STORAGE_URL": storage,
        "SEARCH_TRIALS": "1",
        "SEARCH_ARGS": tiny,
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    script = ["bash", str(PROJECT_ROOT / "examples" / "slurm_search.sbatch")]
    job = subprocess.Popen(
        script, cwd=submit, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 300
    # Two validations reported to the study: the snapshot a stop takes holds a finished epoch.
    # (models/best.pt is no sign: the clone's workspace may hold the submitted experiment's.)
    while validations_reported(storage) < 2:
        assert job.poll() is None and time.monotonic() < deadline, job.stdout.read()[-3000:]
        time.sleep(0.5)
    job.send_signal(signal.SIGTERM)  # to the batch script alone, as SLURM's B: does
    output = job.communicate(timeout=300)[0]
    assert job.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "waiting until every one has exited" in output, output[-3000:]
    # Complete when the script returns: it loads, and holds where the run stopped.
    saved = torch.load(task / "checkpoints" / "train-resume.pt", weights_only=True)
    assert 1 <= saved["epoch"] < EPOCHS and saved["model"] and saved["run_id"]

    requeued = subprocess.run(script, cwd=submit, env=env, capture_output=True, text=True, timeout=600)
    assert requeued.returncode == 0, (requeued.stdout + requeued.stderr)[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{task / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.stage = 'train'")
    (resumed,) = [found for found in runs if found.info.status == "FINISHED"]
    assert resumed.data.tags["resumed_from"] == saved["run_id"]
    assert client.get_run(saved["run_id"]).info.status == "KILLED"
    assert not (task / "checkpoints" / "train-resume.pt").exists()
    # Its trial went back to the clone it was submitted from, where `dvc exp show` lists it.
    listed = subprocess.run(["git", "for-each-ref", "refs/exps"], cwd=submit, capture_output=True, text=True)
    assert "search-" in listed.stdout, listed
