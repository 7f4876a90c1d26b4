"""The stage command line: user errors come out as one line on stderr and exit status 2; stages
run as DVC runs them, `python -m <package>`, with Python's cycle collector on."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture
def cli(package_module):
    return package_module("cli")


def test_unknown_stage_is_refused_by_argparse(cli, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["no-such-stage"])
    assert exited.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("stage", ["synthesize", "train"])
def test_missing_params_yaml_is_reported_without_traceback(
    cli, stage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        cli.main([stage])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "params.yaml is missing" in err
    assert "Traceback" not in err


def test_stale_params_yaml_stops_a_stage(
    cli,
    project_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    shutil.copytree(project_root / "conf", tmp_path / "conf")
    shutil.copy2(project_root / "params.yaml", tmp_path / "params.yaml")
    config_yaml = tmp_path / "conf" / "config.yaml"
    config_yaml.write_text(config_yaml.read_text().replace("seed: 0", "seed: 1", 1))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        cli.main(["synthesize"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "stale" in err and "dvc exp run" in err
    assert not (tmp_path / "data").exists(), "the stage must not run on stale params"


def test_a_stage_runs_with_the_cycle_collector_on(pkg, project_root: Path) -> None:
    """`python -m <package>` pauses the collector while a stage loads; the stage itself must run
    with it on again, or a long training would never free reference cycles."""
    probe = (
        "import gc, runpy, sys\n"
        f"from {pkg.__name__}.stages import synthesize\n"
        "def probe(params, workdir): print('collecting', gc.isenabled(), gc.get_freeze_count() > 0)\n"
        "synthesize.run = probe\n"
        f"sys.argv = ['{pkg.__name__}', 'synthesize']\n"
        f"runpy.run_module('{pkg.__name__}', run_name='__main__')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(project_root / "src")}
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=project_root, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # On, with what had loaded frozen out of its walks.
    assert "collecting True True" in result.stdout
