"""The schema of params.yaml: every bad value is refused at load time, naming the key, the value,
what is allowed and the `-S` that fixes it (check-params runs this before any data stage)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf


@pytest.fixture
def workdir(project_root: Path, tmp_path: Path) -> Path:
    shutil.copytree(project_root / "conf", tmp_path / "conf")
    shutil.copy2(project_root / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def load_with(package_module, workdir: Path, **changes: object):
    """load_params after `-S key=value` for each dotted key (``__`` stands for ``.``)."""
    path = workdir / "params.yaml"
    params = OmegaConf.load(path)
    for key, value in changes.items():
        OmegaConf.update(params, key.replace("__", "."), value, force_add=True)
    OmegaConf.save(params, path)
    return package_module("config.params").load_params(workdir)


@pytest.mark.parametrize(
    ("key", "value", "allowed", "fix"),
    [
        ("trainer.amp_dtype", "bf16", "one of auto, bfloat16, float16", "trainer.amp_dtype=auto"),
        ("trainer.accelerator", "gpu", "one of auto, cpu, cuda", "trainer.accelerator=auto"),
        ("tracking.champion_mode", "maximum", "one of max, min", "tracking.champion_mode=max"),
        (
            "tracking.champion_policy",
            "noise",
            "one of significant, best",
            "tracking.champion_policy=significant",
        ),
        ("data.folds", 1, "an integer >= 2", "data.folds=5"),
        (
            "tracking.sinks",
            ["neptune"],
            "a list of any of tensorboard, wandb",
            "tracking.sinks='[tensorboard]'",
        ),
        ("train.resume", "always", "one of auto, never", "train.resume=auto"),
        ("data.normalization", "minmax", "one of auto, ct, zscore, window", "data.normalization=auto"),
        ("data.cache", "ram", "one of auto, gpu, memory, disk", "data.cache=auto"),
        ("data.orientation", "RAX", "three axis codes", "data.orientation=RAS"),
        ("data.pixdim", [1, 0, 1], "auto or three positive numbers", "data.pixdim=auto"),
        ("patch_size", [64, 64], "auto or three positive integers", "patch_size='[64,64,64]'"),
        ("lr", 0, r"a number in \(0, inf\]", "lr=1e-3"),
        ("epochs", 0, "an integer >= 1", "epochs=20"),
        ("batch_size", 1.5, "an integer >= 1", "batch_size=2"),
        ("seed", True, "an integer >= 0", "seed=0"),
        ("evaluate.overlap", 1.0, r"a number in \[0, 1\)", "evaluate.overlap=0.25"),
        ("trainer.num_threads", "two", "an integer >= 1", "trainer.num_threads=2"),
        ("tracking.log_model", "yes", "true or false", "tracking.log_model=true"),
    ],
)
def test_a_bad_value_names_its_key_what_is_allowed_and_the_fix(
    package_module, user_error, workdir: Path, key: str, value: object, allowed: str, fix: str
) -> None:
    with pytest.raises(user_error) as refused:
        load_with(package_module, workdir, **{key.replace(".", "__"): value})
    message = str(refused.value)
    assert f"`{key}=" in message
    assert re.search(f"must be {allowed}", message), message
    assert f"dvc exp run -S {fix}" in message


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"data__fold": 5},
            r"`data.fold=5` is not one of the 5 folds \(0 to 4, data.folds\); e.g. -S data.fold=0",
        ),
        (
            {"data__intensity__a_min": 1.0, "data__intensity__a_max": 0.0},
            "must be below `data.intensity.a_max`",
        ),
        ({"synthetic__size": 16}, r"`synthetic.size` \(16\) must exceed twice the largest radius \(10\)"),
        ({"tracking__log_model": False}, "`tracking.register_model=true` needs a logged model"),
        ({"patch_size": [30, 32, 32]}, r"must be divisible by 8, .*-S 'patch_size=\[32,32,32\]'"),
        (
            {"model__net": {"_target_": "monai.networks.nets.SegResNet", "blocks_down": [1, 2, 2, 2, 4]}},
            "must be divisible by 16",
        ),
    ],
)
def test_rules_between_keys(package_module, user_error, workdir: Path, changes: dict, expected: str) -> None:
    if "model__net" in changes:
        changes["patch_size"] = [40, 40, 40]
    with pytest.raises(user_error, match=expected):
        load_with(package_module, workdir, **changes)


def test_a_missing_key_is_named(package_module, user_error, workdir: Path) -> None:
    path = workdir / "params.yaml"
    params = OmegaConf.load(path)
    del params.train["resume"]
    OmegaConf.save(params, path)
    with pytest.raises(user_error, match="key `train.resume` is missing"):
        package_module("config.params").load_params(workdir)


def test_every_shipped_option_passes_the_schema(package_module) -> None:
    from conftest import compose_conf

    schema = package_module("config.schema")
    conf = Path(__file__).resolve().parents[1] / "conf"
    for group in ("data", "model", "trainer", "optimizer", "loss"):
        for option in sorted(path.stem for path in (conf / group).glob("*.yaml")):
            schema.check(compose_conf([f"{group}={option}"]), f"{group}={option}")
