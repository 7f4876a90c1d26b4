"""Where a project is baked decides its git repository, and `dvc exp run` works in each case.

- outside any repository: the project becomes its own, with a first commit;
- inside a repository, in a folder it ignores (a scratch or demo folder): the same;
- inside a repository that tracks the folder (a monorepo): the project stays a folder of it,
  and DVC runs it as a subdirectory project, with the monorepo's commit as `git.commit`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow
import pytest
from conftest import (
    DEFAULT_PACKAGE,
    TINY,
    assert_one_clean_commit,
    exp_show,
    git,
    metrics_of,
    project_env,
    run,
)


def outer_repository(path: Path, ignored: str | None = None) -> Path:
    """A git repository with one commit; ``ignored`` goes into its .gitignore."""
    path.mkdir(parents=True)
    git(path, "init", "--quiet", "--initial-branch=main")
    (path / ".gitignore").write_text(f"{ignored}\n" if ignored else "")
    git(path, "add", ".gitignore")
    git(path, "commit", "--quiet", "-m", "Lab repository")
    return path


def dvc_exp_run_accepts(project: Path) -> None:
    """`dvc exp run` loads the pipeline (it refuses a git-ignored dvc.yaml) and runs a stage."""
    result = run(["dvc", "exp", "run", "check_params"], cwd=project)
    assert "Ran experiment(s)" in result.stdout, result.stdout


def test_outside_any_repository_the_project_is_its_own(bake, tmp_path: Path) -> None:
    project = bake(tmp_path / "scratch")
    assert_one_clean_commit(project)
    dvc_exp_run_accepts(project)


def test_in_an_ignored_folder_the_project_is_its_own(bake, tmp_path: Path) -> None:
    """The demo's case: `bash .ci/demo` bakes into ./demo/, which the template ignores."""
    outer = outer_repository(tmp_path / "template-clone", ignored="/demo/")
    project = bake(outer / "demo")
    assert_one_clean_commit(project)
    assert Path(git(project, "rev-parse", "--show-toplevel")) == project.resolve()
    assert git(outer, "status", "--porcelain") == "", "the outer repository changed"
    dvc_exp_run_accepts(project)


@pytest.mark.slow
def test_in_a_monorepo_dvc_runs_it_as_a_subdirectory_project(
    bake, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    outer = outer_repository(tmp_path / "lab-monorepo")
    project = bake(outer / "projects")
    head_before = git(outer, "rev-parse", "HEAD")

    assert not (project / ".git").exists()
    assert git(outer, "rev-parse", "HEAD") == head_before, (
        "the hook committed into the monorepo"
    )
    advice = capfd.readouterr().out
    assert "stays part of it" in advice, advice
    # The user follows the hook's advice, as printed.
    command = next(
        line for line in advice.splitlines() if line.startswith("Commit it there: ")
    )
    run(
        ["bash", "-c", command.removeprefix("Commit it there: ")],
        cwd=tmp_path,
        env=project_env(project),
    )
    assert git(outer, "status", "--porcelain") == ""

    env = project_env(project)
    run(["dvc", "exp", "run", *TINY], cwd=project, env=env)
    shown = exp_show(project, env)
    assert len(shown) == 1, sorted(shown)
    ((name, data),) = shown.items()
    head = git(outer, "rev-parse", "HEAD")
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    train_run = metrics_of(data, "metrics/train.json")["mlflow_run_id"]
    for stage_metrics in ("metrics/train.json", "metrics/evaluate.json"):
        tags = client.get_run(
            metrics_of(data, stage_metrics)["mlflow_run_id"]
        ).data.tags
        assert tags["git.commit"] == head and tags["git.dirty"] == "false", tags
        assert tags["dvc.exp_name"] == name

    cli = [sys.executable, "-m", DEFAULT_PACKAGE]
    verified = run([*cli, "verify"], cwd=project, env=env)
    assert "MISMATCH" not in verified.stdout, verified.stdout
    reproduced = run([*cli, "reproduce", train_run], cwd=project, env=env)
    assert "metrics agree" in reproduced.stdout, reproduced.stdout
    assert (
        json.loads((project / "metrics" / "train.json").read_text())["mlflow_run_id"]
        == train_run
    )
