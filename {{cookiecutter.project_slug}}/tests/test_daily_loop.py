"""The daily loop's entry points: a fast `--help`, the Makefile targets, the pre-commit hooks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT

MAKE_TARGETS = ("run", "sweep", "cv", "show", "ui", "test", "test-full", "doctor")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, copy_project: Callable) -> Path:
    return copy_project(tmp_path_factory.mktemp("daily"))


def package_name() -> str:
    return next(path.name for path in (PROJECT_ROOT / "src").iterdir() if (path / "cli.py").exists())


def test_help_answers_in_under_a_second_without_torch() -> None:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src")}
    command = [sys.executable, "-X", "importtime", "-m", package_name(), "--help"]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    assert result.returncode == 0 and "doctor" in result.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert not {"torch", "monai", "mlflow", "dvc"} & imported
    assert seconds < 1.0


def test_make_lists_and_runs_the_daily_targets(project: Path, run: Callable) -> None:
    listed = run(["make", "help"], project).stdout
    assert [line.split("\t")[0] for line in listed.splitlines()] == ["help", *MAKE_TARGETS]
    dry = run(["make", "-n", "run", "S=-S lr=1e-4", "ui", "PORT=5001"], project).stdout.splitlines()
    assert dry == ["dvc exp run -S lr=1e-4", "mlflow ui --backend-store-uri sqlite:///mlflow.db --port 5001"]
    sweep = run(["make", "-n", "sweep", "SWEEP=lr=1e-3,3e-4", "JOBS=3"], project).stdout
    assert "dvc exp run --queue -S 'lr=1e-3,3e-4'" in sweep and "dvc queue start -j 3" in sweep
    cv = run(["make", "-n", "cv", "S=-S data.folds=3", "JOBS=3"], project).stdout.strip()
    assert cv == f"python -m {package_name()} cv --jobs 3 -S data.folds=3", cv
    doctor = run(["make", "doctor"], project, check=False)
    assert "PASS  dvc repo" in doctor.stdout


def test_pre_commit_hooks_pass_and_catch_a_misformatted_file(
    project: Path, run: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRE_COMMIT_HOME", str(tmp_path / "pre-commit"))
    clean = run([sys.executable, "-m", "pre_commit", "run", "--all-files"], project)
    assert "ruff check" in clean.stdout and "Passed" in clean.stdout
    messy = project / "src" / package_name() / "messy.py"
    messy.write_text("import os, sys\nx=1\n")
    run(["git", "add", str(messy)], project)
    try:
        failed = run([sys.executable, "-m", "pre_commit", "run", "--all-files"], project, check=False)
    finally:
        run(["git", "rm", "--quiet", "--force", str(messy)], project)
    assert failed.returncode != 0
    assert "ruff check" in failed.stdout and "Failed" in failed.stdout
    assert "messy.py" in failed.stdout
