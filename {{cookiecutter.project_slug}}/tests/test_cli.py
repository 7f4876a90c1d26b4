"""The stage command line: user errors come out as one line on stderr and exit status 2."""

from __future__ import annotations

import shutil
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
