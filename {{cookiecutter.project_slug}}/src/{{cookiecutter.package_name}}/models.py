"""The network, built from the `model` config group."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from .config import instantiate_node


def build_model(model: DictConfig, in_channels: int, out_channels: int) -> torch.nn.Module:
    """Instantiate ``model.net``; channel counts come from the data, not from config."""
    return instantiate_node(model.net, "model.net", in_channels=in_channels, out_channels=out_channels)
