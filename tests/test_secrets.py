"""Credentials stay where they belong: the environment and .dvc/config.local.

A lab's machines hold cloud keys, MLflow tokens and git remotes with tokens in their URL. One
tiny experiment runs with all of them planted; none may reach MLflow (database, params, tags,
artifacts) or a file of the repository, and git must ignore the files that hold them.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from conftest import TINY, git, project_env, run

pytestmark = pytest.mark.slow

# Fake values, each distinctive enough that any occurrence is a leak.
PLANTED_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIAPLANTEDKEYID0001",
    "AWS_SECRET_ACCESS_KEY": "planted-aws-secret-access-key-0002",
    "AWS_SESSION_TOKEN": "planted-aws-session-token-0003",
    "MLFLOW_TRACKING_USERNAME": "lab-member",
    "MLFLOW_TRACKING_PASSWORD": "planted-mlflow-password-0004",
    "MLFLOW_TRACKING_TOKEN": "planted-mlflow-token-0005",
}
DVC_SECRET = "planted-dvc-config-local-secret-0006"
GIT_TOKEN = "planted-git-remote-token-0007"
SECRETS = [
    *(
        value
        for name, value in PLANTED_ENV.items()
        if name != "MLFLOW_TRACKING_USERNAME"
    ),
    DVC_SECRET,
    GIT_TOKEN,
]


@pytest.fixture(scope="module")
def project(bake, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A baked project with a DVC remote, its keys in config.local, after one tiny run."""
    project = bake(tmp_path_factory.mktemp("secrets"))
    env = project_env(project) | PLANTED_ENV
    git(
        project,
        "remote",
        "add",
        "origin",
        f"https://oauth2:{GIT_TOKEN}@git.example.org/lab/seg.git",
    )
    run(["dvc", "remote", "add", "-d", "storage", "s3://lab-bucket/seg"], cwd=project)
    for option, value in (
        ("access_key_id", "AKIAPLANTED"),
        ("secret_access_key", DVC_SECRET),
    ):
        run(
            ["dvc", "remote", "modify", "--local", "storage", option, value],
            cwd=project,
        )
    git(project, "commit", "--quiet", "--all", "-m", "Add the lab's data remote")
    run(["dvc", "exp", "run", *TINY], cwd=project, env=env)
    return project


def test_no_credential_reaches_mlflow_or_the_repository(project: Path) -> None:
    credentials = project / ".dvc" / "config.local"
    files = [
        path
        for path in project.rglob("*")
        if path.is_file() and ".git" not in path.parts and path != credentials
    ]
    assert project / "mlflow.db" in files
    assert any("mlartifacts" in path.parts for path in files)
    leaks = [
        f"{path.relative_to(project)} contains {secret}"
        for path in files
        for secret in SECRETS
        if secret.encode() in path.read_bytes()
    ]
    assert leaks == []

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 2
    for found in runs:
        recorded = str(found.data.params) + str(found.data.tags) + str(found.inputs)
        assert not [secret for secret in SECRETS if secret in recorded]


def test_git_ignores_what_holds_secrets_or_half_written_files(project: Path) -> None:
    paths = [
        "mlflow.db",
        "mlartifacts/1/model.pt2",
        ".dvc/config.local",
        ".env",
        "checkpoints/train.pt",
        "models/best.pt",
        "models/best.partial",
        "data/fingerprint.partial",
    ]
    result = run(
        ["git", "check-ignore", "--verbose", "--non-matching", *paths],
        cwd=project,
        check=False,
    )
    not_ignored = [
        line.split("\t")[1]
        for line in result.stdout.splitlines()
        if line.startswith("::")
    ]
    assert not_ignored == []
    (project / ".env").write_text(
        f"AWS_SECRET_ACCESS_KEY={PLANTED_ENV['AWS_SECRET_ACCESS_KEY']}\n"
    )
    assert git(project, "status", "--porcelain", "--untracked-files=all", ".env") == ""
