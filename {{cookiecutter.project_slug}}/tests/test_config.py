"""conf/ (Hydra) -> params.yaml -> config.load_params: composition, staleness and validation."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import compose_conf
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.conf_sha256.hashing import conf_sha256

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def group_options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


@pytest.fixture
def workdir(project_root: Path, tmp_path: Path) -> Path:
    """A copy of the project's conf/ and params.yaml: what a stage reads."""
    shutil.copytree(project_root / "conf", tmp_path / "conf")
    shutil.copy2(project_root / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def set_param(workdir: Path, key: str, value: object) -> Path:
    """Change one top-level key of params.yaml, as `dvc exp run -S` would (conf/ untouched)."""
    path = workdir / "params.yaml"
    params = OmegaConf.load(path)
    params[key] = value
    OmegaConf.save(params, path)
    return path


def test_params_yaml_fingerprint_matches_conf(project_root: Path) -> None:
    params = OmegaConf.load(project_root / "params.yaml")
    assert params.conf_sha256 == conf_sha256(project_root / "conf")
    assert len(params.conf_sha256) == 64


def test_load_params_reads_a_fresh_copy(config, workdir: Path) -> None:
    params = config.load_params(workdir)
    assert isinstance(params, DictConfig)
    assert params == OmegaConf.load(workdir / "params.yaml")
    assert isinstance(params.epochs, int) and params.epochs >= 1


@pytest.mark.parametrize(
    "edit",
    ["change a value", "add a file", "remove a file"],
)
def test_load_params_refuses_params_composed_from_another_conf(
    config, user_error, workdir: Path, edit: str
) -> None:
    conf = workdir / "conf"
    if edit == "change a value":
        path = conf / "config.yaml"
        path.write_text(path.read_text().replace("epochs: 20", "epochs: 21", 1))
    elif edit == "add a file":
        shutil.copy2(conf / "model" / "unet.yaml", conf / "model" / "unet_copy.yaml")
    else:
        (conf / "loss" / "dice_focal.yaml").unlink()
    with pytest.raises(user_error) as raised:
        config.load_params(workdir)
    message = str(raised.value)
    assert "stale" in message
    assert "dvc exp run" in message


def test_override_of_params_alone_is_not_stale(config, workdir: Path) -> None:
    # `dvc exp run -S lr=1e-4` rewrites params.yaml but not conf/: no false alarm.
    set_param(workdir, "lr", 1.0e-4)
    assert config.load_params(workdir).lr == pytest.approx(1.0e-4)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("epochs", "abc"),
        ("lr", "abc"),
        ("batch_size", 2.5),
        ("seed", True),
        ("patch_size", 48),
        ("patch_size", "big"),
        ("patch_size", [0, 1]),
        ("patch_size", [32, 32, 0]),
        ("model", "unet"),
    ],
)
def test_wrong_type_names_the_key(config, user_error, workdir: Path, key: str, value: object) -> None:
    path = set_param(workdir, key, value)
    with pytest.raises(user_error) as raised:
        config.load_params(workdir)
    message = str(raised.value)
    assert f"`{key}=" in message and "dvc exp run -S" in message
    assert str(path) in message


@pytest.mark.parametrize(
    ("key", "value"),
    [("epochs", 0), ("epochs", -1), ("batch_size", 0), ("patch_voxels", 0), ("lr", 0.0), ("lr", -1.0)],
)
def test_out_of_range_value_names_the_key(config, user_error, workdir: Path, key: str, value: object) -> None:
    set_param(workdir, key, value)
    with pytest.raises(user_error, match=f"`{key}="):
        config.load_params(workdir)


def test_integer_lr_is_accepted(config, workdir: Path) -> None:
    set_param(workdir, "lr", 1)
    assert config.load_params(workdir).lr == 1


def test_missing_key_is_named(config, user_error, workdir: Path) -> None:
    path = workdir / "params.yaml"
    params = OmegaConf.load(path)
    del params["tracking"]
    OmegaConf.save(params, path)
    with pytest.raises(user_error, match="`tracking` is missing"):
        config.load_params(workdir)


def test_missing_params_yaml_says_how_to_make_it(config, user_error, tmp_path: Path) -> None:
    with pytest.raises(user_error) as raised:
        config.load_params(tmp_path)
    assert str(tmp_path / "params.yaml") in str(raised.value)
    assert "dvc exp run" in str(raised.value)


def test_invalid_yaml_is_a_user_error(config, user_error, workdir: Path) -> None:
    (workdir / "params.yaml").write_text("seed: [0\nlr: : :\n")
    with pytest.raises(user_error, match="not valid YAML"):
        config.load_params(workdir)


def test_resolved_params_drops_the_fingerprint(config, workdir: Path) -> None:
    params = config.load_params(workdir)
    resolved = config.resolved_params(params)
    assert type(resolved) is dict
    assert "conf_sha256" not in resolved
    assert "conf_sha256" in params  # the loaded config itself is left as it was
    expected = OmegaConf.to_container(params, resolve=True)
    expected.pop("conf_sha256")
    assert resolved == expected


def test_repo_root_prefers_dvc_root(config, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert config.repo_root() == tmp_path.resolve()


def test_repo_root_finds_the_nearest_dvc_folder(
    config, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".dvc").mkdir()
    nested = tmp_path / "data" / "raw"
    nested.mkdir(parents=True)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(nested)
    assert config.repo_root() == tmp_path.resolve()


@pytest.mark.parametrize("option", group_options("data"))
def test_data_options_keep_paths_relative(option: str) -> None:
    # Absolute or ${oc.env:...} paths would make params.yaml machine-specific.
    data = compose_conf([f"data={option}"]).data
    assert not Path(data.dir).is_absolute()
    assert data.pixdim == "auto" or (len(data.pixdim) == 3 and all(spacing > 0 for spacing in data.pixdim))
    assert 0 < data.test_fraction < 1 and 0 <= data.fold < data.folds


@pytest.mark.parametrize("option", group_options("loss"))
def test_every_loss_option_instantiates(build, option: str) -> None:
    loss_fn = build(compose_conf([f"loss={option}"]).loss, "loss")
    logits = torch.randn(1, 2, 4, 4, 4)
    labels = torch.randint(0, 2, (1, 1, 4, 4, 4))
    loss = loss_fn(logits, labels)
    assert loss.ndim == 0 and torch.isfinite(loss)


@pytest.mark.parametrize("option", group_options("optimizer"))
def test_every_optimizer_option_takes_the_top_level_lr(build, option: str) -> None:
    cfg = compose_conf([f"optimizer={option}"])
    weights = torch.nn.Parameter(torch.zeros(3))
    optimizer = build(cfg.optimizer, "optimizer", [weights], lr=cfg.lr)
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert optimizer.param_groups[0]["lr"] == cfg.lr
