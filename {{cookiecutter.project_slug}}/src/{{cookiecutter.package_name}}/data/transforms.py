"""MONAI transforms: the preprocessing every stage and `predict` share, and the loading of its output."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from monai.transforms import (
    CastToTyped,
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    Lambdad,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    ScaleIntensityRanged,
    Spacingd,
)

from .msd import KEYS


def preprocess_transforms(preprocessing: dict, keys: tuple[str, ...] = KEYS) -> Compose:
    """Orient, crop to the non-zero region, resample and normalise, as ``preprocessing`` says.

    ``preprocessing`` is what the preprocess stage resolved (``orientation``, ``pixdim``,
    ``normalization``) and what a model's metadata carries, so that `predict` prepares an
    input exactly as the model's training data was prepared. ``keys`` is ``("image",)`` there.
    """
    interpolation = {"image": "bilinear", "label": "nearest"}
    dtypes = {"image": np.float32, "label": np.uint8}
    return Compose(
        [
            LoadImaged(keys=keys),
            EnsureChannelFirstd(keys=keys),
            Orientationd(
                keys=keys, axcodes=preprocessing["orientation"], labels=None
            ),  # axes from the image's space
            # Air around a scan is 0 in most MRI and carries no information: cropping it makes
            # the stored volumes smaller. CT air is -1000, so nothing is cropped there.
            CropForegroundd(keys=keys, source_key="image", select_fn=_nonzero, allow_smaller=True),
            Spacingd(keys=keys, pixdim=tuple(preprocessing["pixdim"]), mode=[interpolation[k] for k in keys]),
            *_normalize(preprocessing["normalization"]),
            # LoadImage returns labels as float32; resampling may leave fractions.
            CastToTyped(keys=keys, dtype=[dtypes[k] for k in keys]),
        ]
    )


def _normalize(normalization: dict) -> list:
    kind = normalization["kind"]
    if kind == "window":
        return [
            ScaleIntensityRanged(
                keys="image",
                a_min=normalization["a_min"],
                a_max=normalization["a_max"],
                b_min=0.0,
                b_max=1.0,
                clip=True,
            )
        ]
    if kind == "zscore":
        return [NormalizeIntensityd(keys="image", channel_wise=True)]
    channels = normalization["channels"]
    return [
        Lambdad(
            keys="image",
            func=partial(
                _clip_channels, lower=[c["lower"] for c in channels], upper=[c["upper"] for c in channels]
            ),
        ),
        NormalizeIntensityd(
            keys="image",
            subtrahend=[c["mean"] for c in channels],
            divisor=[c["std"] for c in channels],
            channel_wise=True,
        ),
    ]


def _nonzero(image: torch.Tensor) -> torch.Tensor:
    return image != 0


def _clip_channels(image: torch.Tensor, lower: list[float], upper: list[float]) -> torch.Tensor:
    shape = (-1,) + (1,) * (image.ndim - 1)
    bounds = [torch.tensor(values, dtype=image.dtype).reshape(shape) for values in (lower, upper)]
    return torch.clamp(image, min=bounds[0], max=bounds[1])


def load_transforms() -> list:
    return [
        LoadImaged(keys=KEYS),
        EnsureChannelFirstd(keys=KEYS),
        CastToTyped(keys="label", dtype=torch.long),
    ]
