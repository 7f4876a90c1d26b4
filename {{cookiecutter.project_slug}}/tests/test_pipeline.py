"""End to end: the DVC pipeline on tiny synthetic data, in a copy of this project."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[1]
# Small enough for a CPU CI job; the real defaults live in conf/.
TINY = ["epochs=2", "synthetic.num_cases=6", "synthetic.size=32", "patch_size=[32,32,32]"]
CONTRACT_TAGS = ("git.commit", "git.dirty", "code.sha256", "params.sha256", "seed", "dvc.exp_name")


def run(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    # DVC runs `python -m ...`: the interpreter running these tests must come first on PATH.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "PYTHONPATH": str(cwd / "src"), "DVC_NO_ANALYTICS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.setdefault("GIT_AUTHOR_NAME", "test")
    env.setdefault("GIT_AUTHOR_EMAIL", "test@example.org")
    env.setdefault("GIT_COMMITTER_NAME", "test")
    env.setdefault("GIT_COMMITTER_EMAIL", "test@example.org")
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        output = f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        pytest.fail(f"{' '.join(args)} exited {result.returncode}:\n{output}")
    return result


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This project's working tree (tracked and new files) as a fresh git repo."""
    target = tmp_path_factory.mktemp("pipeline") / PROJECT.name
    files = run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], PROJECT).stdout.split()
    for name in files:
        if (PROJECT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT / name, target / name)
    run(["git", "init", "--quiet"], target)
    run(["git", "add", "--all"], target)
    run(["git", "commit", "--quiet", "-m", "copy"], target)
    sets = [arg for override in TINY for arg in ("-S", override)]
    run([sys.executable, "-m", "dvc", "exp", "run", *sets], target)
    return target


@pytest.mark.slow
def test_pipeline_writes_metrics_linked_to_mlflow(workspace: Path) -> None:
    metrics = json.loads((workspace / "metrics/evaluate.json").read_text())
    assert 0.0 <= metrics["dice_mean"] <= 1.0
    train = json.loads((workspace / "metrics/train.json").read_text())
    client = mlflow.MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    train_run = client.get_run(train["mlflow_run_id"])
    evaluate_run = client.get_run(metrics["mlflow_run_id"])
    assert evaluate_run.data.tags["mlflow.parentRunId"] == train_run.info.run_id
    assert len(client.get_metric_history(train_run.info.run_id, "train_loss")) == 2
    assert evaluate_run.data.metrics["test_dice_mean"] == pytest.approx(metrics["dice_mean"])


@pytest.mark.slow
def test_runs_carry_the_provenance_contract(workspace: Path) -> None:
    lock = yaml.safe_load((workspace / "dvc.lock").read_text())
    recorded = {
        entry["path"]: entry["md5"]
        for stage in lock["stages"].values()
        for entry in [*stage.get("deps", []), *stage.get("outs", [])]
    }
    head = run(["git", "rev-parse", "HEAD"], workspace).stdout.strip()
    client = mlflow.MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(_experiment_name(workspace)).experiment_id])
    assert len(runs) == 2
    for found in runs:
        tags = found.data.tags
        assert all(tag in tags for tag in CONTRACT_TAGS), sorted(tags)
        assert tags["git.commit"] == head
        assert tags["git.dirty"] == "false"
        assert tags["data.synthetic.md5"] == recorded["data/synthetic"]
        assert tags["data.processed.md5"] == recorded["data/processed"]
        assert found.data.params["lr"] == "0.002"


@pytest.mark.slow
def test_stale_params_are_refused(workspace: Path) -> None:
    config = workspace / "conf/config.yaml"
    original = config.read_text()
    config.write_text(original.replace("epochs: 20", "epochs: 3"))
    try:
        result = run([sys.executable, "-m", "dvc", "repro", "--force", "train"], workspace, check=False)
    finally:
        config.write_text(original)
    assert result.returncode != 0
    assert "stale" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def _experiment_name(workspace: Path) -> str:
    return yaml.safe_load((workspace / "params.yaml").read_text())["tracking"]["experiment_name"]
