"""The network, built from the `model` config group, and the card that lets it be rebuilt."""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

from ..config.instantiate import instantiate_node
from ..data.msd import MsdDataset


def build_model(model: DictConfig, in_channels: int, out_channels: int) -> torch.nn.Module:
    """Instantiate ``model.net``; channel counts come from the data, not from config."""
    return instantiate_node(model.net, "model.net", in_channels=in_channels, out_channels=out_channels)


def model_card(model: DictConfig, dataset: MsdDataset, preprocessing: dict, patch: list[int]) -> dict:
    """What a trained network needs to be rebuilt and fed, saved in its checkpoints and in the
    logged model's metadata: the network config, the input channels, the labels, and the
    preprocessing of its training data (which `predict` applies to new inputs)."""
    return {
        "net": OmegaConf.to_container(model.net, resolve=True),
        "channels": list(dataset.channel_names),
        "labels": {str(index): name for index, name in dataset.labels.items()},
        "preprocessing": preprocessing,
        "patch_size": list(patch),
    }


def model_from_card(card: dict, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The network a card describes, with the weights ``state``, in eval mode."""
    model = build_model(OmegaConf.create({"net": card["net"]}), len(card["channels"]), len(card["labels"]))
    model.load_state_dict(state)
    return model.eval()
