"""MONAI transforms: the preprocessing every stage shares, and the loading of its output."""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import (
    CastToTyped,
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    Orientationd,
    ScaleIntensityRanged,
    Spacingd,
)
from omegaconf import DictConfig

from .msd import KEYS


def preprocess_transforms(data: DictConfig) -> Compose:
    """Orientation, spacing and intensity window: what every later stage sees."""
    return Compose(
        [
            LoadImaged(keys=KEYS),
            EnsureChannelFirstd(keys=KEYS),
            Orientationd(keys=KEYS, axcodes=data.orientation, labels=None),  # axes from the image's space
            Spacingd(keys=KEYS, pixdim=tuple(data.pixdim), mode=("bilinear", "nearest")),
            ScaleIntensityRanged(
                keys="image",
                a_min=data.intensity.a_min,
                a_max=data.intensity.a_max,
                b_min=0.0,
                b_max=1.0,
                clip=True,
            ),
            # LoadImage returns labels as float32; resampling may leave fractions.
            CastToTyped(keys=KEYS, dtype=(np.float32, np.uint8)),
        ]
    )


def load_transforms() -> list:
    return [
        LoadImaged(keys=KEYS),
        EnsureChannelFirstd(keys=KEYS),
        CastToTyped(keys="label", dtype=torch.long),
    ]
