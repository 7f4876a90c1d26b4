"""Shared fixtures: the project root and its package (found by name at run time), and for the
end-to-end tests a way to run commands as DVC stages see them in a copy of this project.

Two tiers. `python -m pytest` runs the fast one (everything not marked ``slow``), which shares
one tiny finished experiment (the ``experiment`` fixture) among the tests that only need one,
made once per session even when pytest-xdist runs the tests in several processes.
`python -m pytest -m slow` runs the rest: the tests that need pipelines of their own.

The package name is discovered from ``src/`` rather than written here, so that these tests
carry no template variables and run unchanged in every baked project.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from filelock import FileLock
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import hydra_plugins.conf_sha256  # noqa: F401  registers the ${conf_sha256:} resolver

# The tests run side by side (pytest-xdist), each torch process with `trainer.num_threads`
# threads: more threads than cores. OpenMP's idle threads then spin on cores that another
# worker needs; passive waiting gives the same results, bit for bit, with far less CPU.
# Set before torch loads OpenMP here, and inherited by every stage the tests start.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Small enough for a CPU CI job; the real defaults live in conf/.
TINY = ("epochs=2", "synthetic.num_cases=6", "synthetic.size=32", "patch_size=[32,32,32]")


def _package_name() -> str:
    """The one importable package under ``src/`` besides the Hydra plugin namespace."""
    src = PROJECT_ROOT / "src"
    names = sorted(
        path.name
        for path in src.iterdir()
        if (path / "__init__.py").is_file() and path.name != "hydra_plugins"
    )
    if len(names) != 1:
        raise RuntimeError(f"Expected exactly one package under {src}, found {names}.")
    return names[0]


def compose_conf(overrides: list[str] | None = None) -> DictConfig:
    """conf/ composed by Hydra, as `dvc exp run` composes it (before resolution)."""
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base=None):
        return compose(config_name="config", overrides=overrides or [])


@pytest.fixture
def config(package_module: Callable[[str], ModuleType]) -> ModuleType:
    """The module that loads and checks params.yaml."""
    return package_module("config.params")


@pytest.fixture
def build(package_module: Callable[[str], ModuleType]) -> Callable[..., object]:
    """The one function that builds objects from config (behind the `_target_` guard)."""
    return package_module("config.instantiate").instantiate_node


@pytest.fixture
def user_error(package_module: Callable[[str], ModuleType]) -> type[Exception]:
    return package_module("errors").UserError


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT_ROOT


@pytest.fixture(scope="session")
def pkg() -> ModuleType:
    return importlib.import_module(_package_name())


@pytest.fixture
def package_module(pkg: ModuleType) -> Callable[[str], ModuleType]:
    """Import a submodule of the package by its short name, e.g. ``package_module("data.msd")``."""

    def load(name: str) -> ModuleType:
        return importlib.import_module(f"{pkg.__name__}.{name}")

    return load


def _run(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
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


@pytest.fixture(scope="session")
def run() -> Callable[..., subprocess.CompletedProcess]:
    """``run(args, cwd, check=True)``: a command with the stages' environment; fails the test on error.

    The copy's ``src/`` is on PYTHONPATH and ``MLFLOW_TRACKING_URI`` is dropped, so that each
    copy logs to its own ``mlflow.db``.
    """
    return _run


@pytest.fixture(scope="session")
def copy_project() -> Callable[[Path], Path]:
    """``copy_project(parent)``: this project's working tree (tracked and new files) as a fresh
    git repo under ``parent``, committed, so that the copy is clean for ``git.dirty``."""

    def copy(parent: Path) -> Path:
        target = parent / PROJECT_ROOT.name
        listing = ["git", "ls-files", "--cached", "--others", "--exclude-standard"]
        for name in _run(listing, PROJECT_ROOT).stdout.split():
            if (PROJECT_ROOT / name).is_file():
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(PROJECT_ROOT / name, target / name)
        _run(["git", "init", "--quiet"], target)
        _run(["git", "add", "--all"], target)
        _run(["git", "commit", "--quiet", "-m", "copy"], target)
        return target

    return copy


@pytest.fixture(scope="session")
def exp_run() -> Callable[..., subprocess.CompletedProcess]:
    """``exp_run(workspace, *overrides)``: `dvc exp run` on tiny data, plus ``-S`` overrides."""

    def exp_run(workspace: Path, *overrides: str) -> subprocess.CompletedProcess:
        sets = [arg for override in (*TINY, *overrides) for arg in ("-S", override)]
        return _run([sys.executable, "-m", "dvc", "exp", "run", *sets], workspace)

    return exp_run


@pytest.fixture(scope="session")
def made_experiment(
    tmp_path_factory: pytest.TempPathFactory, copy_project: Callable[[Path], Path], exp_run: Callable
) -> Path:
    """A copy of this project after one tiny `dvc exp run`, made once per session: tests work in
    copies of it (``experiment``, ``copy_experiment``) and never change it. What the run
    printed is kept beside it, in ``exp-run.log``.

    Under pytest-xdist the first worker that needs it makes it, under a lock in the folder that
    the session's workers share, and the others wait for it.
    """
    base = tmp_path_factory.getbasetemp()  # under pytest-xdist, a worker's, in the session's
    folder = (base.parent if "PYTEST_XDIST_WORKER" in os.environ else base) / "made-experiment"
    with FileLock(f"{folder}.lock"):
        if not (folder / "exp-run.log").exists():
            shutil.rmtree(folder, ignore_errors=True)  # left by a worker that failed half-way
            folder.mkdir()
            result = exp_run(copy_project(folder))
            (folder / "exp-run.log").write_text(result.stdout + result.stderr)
    return folder / PROJECT_ROOT.name


@pytest.fixture(scope="session")
def copy_experiment(made_experiment: Path) -> Callable[[Path], Path]:
    """``copy_experiment(parent)``: a copy of the finished tiny experiment under ``parent``, for a
    test that goes on from it (its data stages then come from DVC's cache)."""

    def copy(parent: Path) -> Path:
        target = parent / PROJECT_ROOT.name
        shutil.copytree(made_experiment, target, symlinks=True)
        return target

    return copy


@pytest.fixture(scope="session")
def experiment(tmp_path_factory: pytest.TempPathFactory, copy_experiment: Callable[[Path], Path]) -> Path:
    """The finished tiny experiment, shared by every test of this process that only needs one. A
    test that changes it puts it back, and runs a test logs itself stay apart from the pipeline's."""
    return copy_experiment(tmp_path_factory.mktemp("experiment"))
