"""`doctor` on a ready project passes; with no git identity and an MLflow server that is down,
it fails those two checks, says how to fix them, and exits non-zero."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, copy_project: Callable, run: Callable) -> Path:
    """A copy with no default DVC remote: reaching a real bucket is not this test's business."""
    copy = copy_project(tmp_path_factory.mktemp("doctor"))
    run([sys.executable, "-m", "dvc", "remote", "default", "--unset"], copy, check=False)
    return copy


def doctor(project: Path, **env: str) -> subprocess.CompletedProcess:
    """`doctor` in ``project`` with this environment plus ``env`` (an empty value unsets)."""
    package = next(path.name for path in (project / "src").iterdir() if (path / "lab" / "doctor.py").exists())
    environment = {**os.environ, "PYTHONPATH": str(project / "src"), "DVC_NO_ANALYTICS": "1"}
    environment.pop("MLFLOW_TRACKING_URI", None)
    environment.update(env)
    environment = {key: value for key, value in environment.items() if value}
    command = [sys.executable, "-m", package, "doctor"]
    return subprocess.run(command, cwd=project, env=environment, capture_output=True, text=True)


def test_a_ready_project_passes(project: Path) -> None:
    identity = {"GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.org"}
    result = doctor(project, **identity)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for check in ("python", "libraries", "git identity", "dvc repo", "mlflow store", "disk"):
        assert any(line.startswith(f"PASS  {check}:") for line in lines), (check, result.stdout)
    assert any(line.startswith(("PASS  cuda:", "WARN  cuda:")) for line in lines)
    assert "WARN  dvc remote: no default remote" in result.stdout
    assert result.stdout.splitlines()[-1].startswith("0 failed, ")


def test_no_identity_and_a_server_that_is_down_fail(project: Path, tmp_path: Path) -> None:
    with socket.socket() as probe:  # a loopback port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = doctor(
        project,
        GIT_AUTHOR_NAME="",
        GIT_AUTHOR_EMAIL="",
        EMAIL="",
        HOME=str(tmp_path),
        GIT_CONFIG_GLOBAL=str(tmp_path / "no-gitconfig"),
        GIT_CONFIG_NOSYSTEM="1",
        MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}",
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL  git identity: not set" in result.stdout
    assert "fix: git config --global user.name" in result.stdout
    (store,) = [line for line in result.stdout.splitlines() if line.startswith("FAIL  mlflow store:")]
    assert f"http://127.0.0.1:{port}" in store and "MLFLOW_TRACKING_URI" in store
    assert "2 failed" in result.stdout


def test_an_edited_conf_is_checked_before_the_run_that_recomposes_params(project: Path) -> None:
    """After an edit of conf/, params.yaml is stale until `dvc exp run`: that is no fault."""
    config = project / "conf" / "config.yaml"
    original = config.read_text()
    config.write_text(re.sub(r"(?m)^(  experiment_name:) \S+", r"\1 doctor-edited", original))
    try:
        result = doctor(project, GIT_AUTHOR_NAME="Test", GIT_AUTHOR_EMAIL="test@example.org")
    finally:
        config.write_text(original)
    assert result.returncode == 0, result.stdout + result.stderr
    assert mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}").get_experiment_by_name("doctor-edited")
