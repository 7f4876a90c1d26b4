"""The template README's two commands, as written: the demo in a fresh clone, and CI's tests.

The demo is the first thing a newcomer runs, so it runs here exactly as the README gives it:
in a fresh `git clone` of this repository, with its default target, and with no git identity
configured. It shares the test virtualenv through ``VENV`` (a layer over it, so that the
demo's `pip install -e` does not touch the shared one).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest
from conftest import TEMPLATE, describe, run

README = TEMPLATE / "README.md"
# Lines the demo must no longer print: library chatter that buried the project's own lines.
NOISE = (
    "INFO mlflow.",
    "FutureWarning",
    "0/1 specialized",
    "Registered model",
    "Successfully registered model",
    "Created version",
    "No file hash info found",
    "DeprecationWarning",
)
PROMISED_DICE = (
    0.90  # the template's promise for the default synthetic experiment (lr 0.002)
)


def readme_commands() -> list[str]:
    """The commands of the README's "The two commands" block, comments stripped, in order."""
    section = README.read_text().split("## The two commands", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block, "README.md has no bash block under 'The two commands'"
    lines = (line.split("#")[0].strip() for line in block.group(1).splitlines())
    return [line for line in lines if line]


def test_readme_gives_the_demo_and_the_test_command_that_ci_runs() -> None:
    demo, tests = readme_commands()
    assert demo == "bash .ci/demo"
    ci_lines = [
        line.split("#")[0]
        for line in (TEMPLATE / ".ci" / "run").read_text().splitlines()
    ]
    assert any(tests in line for line in ci_lines), f"`.ci/run` does not call `{tests}`"


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


@pytest.mark.slow
def test_demo_runs_both_experiments_from_a_fresh_clone(
    install_venv,
    git_isolation: dict[str, str | None],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    clone = fresh_clone(tmp_path / "template")
    layer_bin = install_venv(clone)
    (layer_bin.parent / ".complete").touch()  # .ci/env.sh: the virtualenv is ready
    env = {key: value for key, value in os.environ.items() if key not in git_isolation}
    env |= {key: value for key, value in git_isolation.items() if value is not None}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("PYTHONPATH", None)
    shared_bin = Path(sys.executable).parent
    env |= {
        "VENV": str(layer_bin.parent),
        "PATH": f"{layer_bin}:{shared_bin}:{env['PATH']}",
    }

    demo, _ = readme_commands()
    result = run(["bash", "-c", demo], cwd=clone, env=env, check=False, timeout=900)
    output = result.stdout + result.stderr
    with capsys.disabled():
        print(f"\n  `{demo}` printed {len(output.splitlines())} lines", end="")
    assert result.returncode == 0, describe(result)

    rows = [
        line for line in result.stdout.splitlines() if re.match(r"\|.*\[[\w-]+\]", line)
    ]
    assert len(rows) == 2, (
        f"expected two experiments in the table:\n{result.stdout[-3000:]}"
    )
    header = next(line for line in result.stdout.splitlines() if "| Experiment" in line)
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    by_lr = {}
    for row in rows:
        cells = dict(
            zip(
                columns,
                (cell.strip() for cell in row.strip("|").split("|")),
                strict=True,
            )
        )
        by_lr[float(cells["lr"])] = cells
        assert 0.0 <= float(cells["dice_mean"]) <= 1.0, row
        assert re.fullmatch(
            r"[0-9a-f]{32}", cells["metrics/train.json:mlflow_run_id"]
        ), row
    assert set(by_lr) == {0.002, 1e-4}, rows
    dice = float(by_lr[0.002]["dice_mean"])
    assert dice >= PROMISED_DICE, (
        f"the default experiment's test dice_mean {dice} < {PROMISED_DICE}"
    )
    assert (clone / "demo" / "organ-segmentation" / ".git").is_dir()
    noisy = [
        line for line in output.splitlines() if any(noise in line for noise in NOISE)
    ]
    assert not noisy, "the demo prints library noise again:\n" + "\n".join(noisy)
