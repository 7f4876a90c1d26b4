"""The network, built from the `model` config group."""

from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from .errors import UserError


def build_model(model: DictConfig, in_channels: int, out_channels: int) -> torch.nn.Module:
    """Instantiate ``model.net``; channel counts come from the data, not from config."""
    try:
        return instantiate(model.net, in_channels=in_channels, out_channels=out_channels)
    except Exception as error:  # Hydra wraps the constructor's own error
        raise UserError(f"Could not build `model.net` ({model.net.get('_target_')}): {error}") from error
