"""Networks built from the `model` config group: output shape, and a clear error for bad config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import compose_conf

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
MODEL_OPTIONS = sorted(path.stem for path in (CONF_DIR / "model").glob("*.yaml"))


@pytest.fixture
def models(package_module):
    return package_module("model.networks")


def test_both_shipped_models_are_options() -> None:
    assert {"unet", "segresnet"} <= set(MODEL_OPTIONS)


@pytest.mark.parametrize("option", MODEL_OPTIONS)
def test_model_gives_logits_per_class(models, option: str) -> None:
    torch.manual_seed(0)
    model = models.build_model(compose_conf([f"model={option}"]).model, in_channels=1, out_channels=3)
    assert isinstance(model, torch.nn.Module)
    model.eval()
    with torch.no_grad():
        logits = model(torch.rand(1, 1, 32, 32, 32))
    assert logits.shape == (1, 3, 32, 32, 32)
    assert torch.isfinite(logits).all()


def test_channel_counts_come_from_the_caller(models) -> None:
    model = models.build_model(compose_conf(["model=unet"]).model, in_channels=2, out_channels=4)
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(1, 2, 16, 16, 16)).shape == (1, 4, 16, 16, 16)


def test_unknown_target_is_a_user_error(package_module, models) -> None:
    cfg = compose_conf(["model=unet", "model.net._target_=monai.networks.nets.NoSuchNet"])
    with pytest.raises(package_module("errors").UserError) as raised:
        models.build_model(cfg.model, in_channels=1, out_channels=2)
    assert "monai.networks.nets.NoSuchNet" in str(raised.value)
    assert "model.net" in str(raised.value)


def test_bad_argument_is_a_user_error(package_module, models) -> None:
    cfg = compose_conf(["model=unet", "+model.net.no_such_argument=1"])
    with pytest.raises(package_module("errors").UserError, match="no_such_argument"):
        models.build_model(cfg.model, in_channels=1, out_channels=2)
