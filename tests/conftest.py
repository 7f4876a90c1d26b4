"""Shared helpers: bake the template, and run a baked project's real tools in subprocesses."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cookiecutter.main import cookiecutter

# The loopback servers (PostgreSQL, S3), defined here so that every module shares one of each.
from servers import postgres, s3_store  # noqa: F401

TEMPLATE = Path(__file__).resolve().parents[1]
TEMPLATE_PROJECT = TEMPLATE / "{{cookiecutter.project_slug}}"
OPTIONS = json.loads((TEMPLATE / "cookiecutter.json").read_text())
DEFAULT_SLUG = "organ-segmentation"
DEFAULT_PACKAGE = "organ_segmentation"
# Where a subprocess failure's output is cut: enough to see the error and what led to it.
TAIL_CHARS = 6000
# Shrinks every stage to seconds; only the literal end-to-end test runs the defaults.
TINY = (
    "-S",
    "epochs=2",
    "-S",
    "synthetic.num_cases=6",
    "-S",
    "synthetic.size=32",
    "-S",
    "patch_size=[32,32,32]",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--baked-full-tier",
        action="store_true",
        help="also run a baked project's full tier (`python -m pytest -m slow`, 9 to 13 minutes "
        "on 2 cores), which the baked project's own CI runs on pull requests and weekly",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: runs a baked project's DVC pipeline or its test suite"
    )
    config.addinivalue_line(
        "markers", "baked_full_tier: runs only with --baked-full-tier"
    )


# The longest modules, longest first. `.ci/test` runs the modules side by side (pytest-xdist,
# one module per worker at a time); starting these first lets the workers finish together.
LONGEST_FIRST = (
    "test_baked_full_tier",
    "test_end_to_end",
    "test_team",
    "test_real_data",
    "test_bench",
    "test_baked_project_tests",
)


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    # The baked full tier is the baked project's to run (its CI: pull requests and weekly);
    # here it is one option away, so that this suite runs each baked test once, in one place.
    if not config.getoption("--baked-full-tier"):
        full_tier = [item.get_closest_marker("baked_full_tier") for item in items]
        config.hook.pytest_deselected(
            items=[item for item, marked in zip(items, full_tier) if marked]
        )
        items[:] = [item for item, marked in zip(items, full_tier) if not marked]
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))


def project_env(project: Path, path_prefix: Path | None = None) -> dict[str, str]:
    """Environment for a baked project's tools.

    ``PYTHONPATH`` points at the project's ``src`` so that several baked projects share one
    virtualenv without installing each. ``path_prefix`` (a ``bin`` folder) goes first on PATH.
    """
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    bin_dirs = [str(Path(sys.executable).parent)]
    if path_prefix is not None:
        bin_dirs.insert(0, str(path_prefix))
    env.update(
        PATH=os.pathsep.join([*bin_dirs, env.get("PATH", "")]),
        PYTHONPATH=str(project / "src"),
        DVC_NO_ANALYTICS="1",
        GIT_AUTHOR_NAME="Template Tests",
        GIT_AUTHOR_EMAIL="template-tests@example.org",
        GIT_COMMITTER_NAME="Template Tests",
        GIT_COMMITTER_EMAIL="template-tests@example.org",
    )
    return env


def template_readme_commands() -> list[str]:
    """The commands of the template README's "The two commands" block, comments stripped."""
    section = (TEMPLATE / "README.md").read_text().split("## The two commands", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block, "README.md has no bash block under 'The two commands'"
    lines = (line.split("#")[0].strip() for line in block.group(1).splitlines())
    return [line for line in lines if line]


def fresh_clone(destination: Path) -> Path:
    """`git clone` of this repository, plus this checkout's uncommitted edits (if any), so
    that the tree under test is the one that runs."""
    run(["git", "clone", "--quiet", TEMPLATE, destination], cwd=destination.parent)
    listed = run(
        ["git", "ls-files", "-z", "--modified", "--others", "--exclude-standard"],
        cwd=TEMPLATE,
    ).stdout
    for relative in filter(None, listed.split("\0")):
        target = destination / relative
        if (TEMPLATE / relative).is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(TEMPLATE / relative, target)
        else:
            target.unlink(missing_ok=True)  # deleted here, not yet committed
    return destination


def tail(text: str | None) -> str:
    text = text or ""
    return text if len(text) <= TAIL_CHARS else "...\n" + text[-TAIL_CHARS:]


def describe(result: subprocess.CompletedProcess) -> str:
    command = shlex.join(str(part) for part in result.args)
    return (
        f"`{command}` exited with {result.returncode}\n"
        f"--- stdout (tail) ---\n{tail(result.stdout)}\n--- stderr (tail) ---\n{tail(result.stderr)}"
    )


def run(
    args: list[str | Path],
    cwd: Path,
    env: dict[str, str] | None = None,
    check: bool = True,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """Run a command; with ``check``, a non-zero exit fails the test with the output's tail."""
    result = subprocess.run(
        [str(part) for part in args],
        check=False,
        cwd=cwd,
        env=env if env is not None else project_env(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert result.returncode == 0, describe(result)
    return result


def run_test_tier(
    project: Path, command: str, record_property: Callable[[str, object], None]
) -> None:
    """Run one tier of a baked project's tests as its README writes it. Its slowest tests go
    into this test's report, which the summary below prints in CI's log (also under xdist)."""
    arguments = command.split()
    assert arguments[:3] == ["python", "-m", "pytest"], command
    extra = ["-q", "-p", "no:cacheprovider", "--durations=15"]
    result = run([sys.executable, *arguments[1:], *extra], cwd=project, timeout=1800)
    slowest = result.stdout[result.stdout.rfind("slowest") - 20 :]
    record_property(BAKED_SLOWEST, f"`{command}`:\n{slowest}")
    summary = result.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 1, f"no test passed: {summary}"
    assert not re.search(r"\d+ (failed|error)", summary), summary


BAKED_SLOWEST = "the baked tier's slowest tests"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for report in terminalreporter.stats.get("passed", []):
        for name, value in getattr(report, "user_properties", []):
            if name == BAKED_SLOWEST:
                terminalreporter.write_sep("=", f"{name}, from {report.nodeid}")
                terminalreporter.write_line(value)


def git(project: Path, *args: str) -> str:
    return run(["git", *args], cwd=project).stdout.strip()


def assert_one_clean_commit(project: Path) -> None:
    assert (project / ".git").is_dir(), "the baked project is not a git repository"
    assert git(project, "rev-list", "--count", "HEAD") == "1"
    status = git(project, "status", "--porcelain", "--untracked-files=all")
    assert status == "", (
        f"the baked project is not clean after its first commit:\n{status}"
    )


@pytest.fixture(scope="session")
def cookiecutter_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cookiecutter config of our own: no replay files in $HOME, no user defaults."""
    folder = tmp_path_factory.mktemp("cookiecutter-config")
    config = folder / "config.yaml"
    config.write_text(
        f'cookiecutters_dir: "{folder / "cookiecutters"}"\nreplay_dir: "{folder / "replay"}"\n'
    )
    return config


@pytest.fixture(scope="session")
def git_isolation(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str | None]:
    """Environment for bakes: no git identity or config of the machine, bytecode writes on.

    The post-generation hook must then fall back to the author from cookiecutter.json, as it
    does for a new student whose git has no identity yet. Bytecode writing is on because that
    is how users run cookiecutter; a hook that leaves ``__pycache__`` behind shows up.
    """
    empty = tmp_path_factory.mktemp("git-config") / "gitconfig"
    empty.write_text("")
    changes: dict[str, str | None] = {
        "GIT_CONFIG_GLOBAL": str(empty),
        "GIT_CONFIG_NOSYSTEM": "1",
        "PYTHONDONTWRITEBYTECODE": None,
    }
    for variable in ("AUTHOR", "COMMITTER"):
        for field in ("NAME", "EMAIL"):
            changes[f"GIT_{variable}_{field}"] = None
    return changes


@pytest.fixture(scope="session")
def bake(
    cookiecutter_config: Path, git_isolation: dict[str, str | None]
) -> Callable[..., Path]:
    """``bake(output_dir, **answers)`` bakes the template without prompts; returns the project."""

    def _bake(
        output_dir: Path, overwrite_if_exists: bool = False, **answers: str
    ) -> Path:
        output_dir.mkdir(parents=True, exist_ok=True)
        with pytest.MonkeyPatch.context() as patch:
            for name, value in git_isolation.items():
                if value is None:
                    patch.delenv(name, raising=False)
                else:
                    patch.setenv(name, value)
            project = cookiecutter(
                str(TEMPLATE),
                no_input=True,
                output_dir=str(output_dir),
                extra_context=answers,
                config_file=str(cookiecutter_config),
                overwrite_if_exists=overwrite_if_exists,
            )
        return Path(project)

    return _bake


@pytest.fixture(scope="session")
def install_venv(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], Path]:
    """``install_venv(project)``: a throwaway venv layered on this one, for `pip install -e`.

    The layer sees every package of the test virtualenv (through a ``.pth`` file), so its
    own pip finds the dependencies installed and only installs the project. The shared
    virtualenv is left as it was. Returns the layer's ``bin`` folder (with ``python`` and
    ``pip``, so that a README's bare `pip install` lands in the layer).
    """
    import sysconfig

    def _create(project: Path) -> Path:
        venv = tmp_path_factory.mktemp("project-venv")
        run([sys.executable, "-m", "venv", venv], cwd=project)
        layer_python = venv / "bin" / "python"
        site_packages = run(
            [
                layer_python,
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            cwd=project,
        ).stdout.strip()
        Path(site_packages, "_shared_test_venv.pth").write_text(
            sysconfig.get_paths()["purelib"] + "\n"
        )
        return venv / "bin"

    return _create


def exp_show(project: Path, env: dict[str, str] | None = None) -> dict[str, dict]:
    """``dvc exp show --json`` as {experiment name: its data (params, metrics, deps, outs)}."""
    entries = json.loads(
        run(["dvc", "exp", "show", "--json"], cwd=project, env=env).stdout
    )
    experiments: dict[str, dict] = {}
    for entry in entries:
        for experiment in entry.get("experiments") or []:
            for rev in experiment["revs"]:
                name = rev.get("name") or experiment.get("name")
                assert rev.get("error") is None, (
                    f"dvc exp show reports an error for {name}: {rev['error']}"
                )
                experiments[name] = rev["data"]
    return experiments


def params_of(data: dict) -> dict:
    return data["params"]["params.yaml"]["data"]


def metrics_of(data: dict, path: str) -> dict:
    return data["metrics"][path]["data"]


def wait_for_queue(project: Path, env: dict[str, str], count: int) -> str:
    """Wait until DVC's queue has nothing queued or running (as `make sweep` does); check
    that ``count`` experiments succeeded. Returns `dvc queue status`."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], cwd=project, env=env).stdout
        if not any(word in status for word in ("Queued", "Running")):
            break
        time.sleep(3)
    assert status.count("Success") == count, status
    return status


def commands_of(block: str) -> list[str]:
    """A bash block's commands in order: comments stripped, continued lines joined."""
    joined = re.sub(r"\\\n\s*", " ", block)
    lines = (re.sub(r"(^|\s)#.*", "", line).strip() for line in joined.splitlines())
    return [line for line in lines if line]


def readme_blocks(project: Path) -> list[tuple[str, list[str]]]:
    """Every bash block of the baked README, in order: (its section's heading, its commands)."""
    blocks = []
    for section in re.split(r"(?m)^## ", (project / "README.md").read_text())[1:]:
        heading, body = section.split("\n", 1)
        for block in re.findall(r"```bash\n(.*?)```", body, re.DOTALL):
            blocks.append((heading.strip(), commands_of(block)))
    return blocks
