"""Datasets and loaders over the preprocessed set (data/processed), with augmentation."""

from __future__ import annotations

import json
from pathlib import Path

from monai.data import CacheDataset, ThreadDataLoader
from monai.transforms import Compose, RandCropByPosNegLabeld, RandFlipd, SpatialPadd
from omegaconf import DictConfig

from .msd import KEYS, SPLITS_FILE
from .transforms import load_transforms


def processed_split(processed: Path, split: str) -> list[dict[str, str]]:
    """Cases of one split of the preprocessed set, as LoadImaged inputs."""
    names = json.loads((processed / SPLITS_FILE).read_text())[split]
    return [
        {
            "name": name,
            "image": str(processed / "imagesTr" / f"{name}.nii.gz"),
            "label": str(processed / "labelsTr" / f"{name}.nii.gz"),
        }
        for name in names
    ]


def train_loader(params: DictConfig, processed: Path) -> ThreadDataLoader:
    """Cached, augmented patches from the training split."""
    ratio = params.train.foreground_ratio
    transforms = Compose(
        [
            *load_transforms(),
            # Volumes thinner than the patch are padded, so that every crop has patch_size.
            SpatialPadd(keys=KEYS, spatial_size=tuple(params.patch_size)),
            RandCropByPosNegLabeld(
                keys=KEYS,
                label_key="label",
                spatial_size=tuple(params.patch_size),
                pos=ratio,
                neg=1.0 - ratio,
                num_samples=params.train.samples_per_volume,
            ),
            RandFlipd(keys=KEYS, prob=0.5, spatial_axis=0),
        ]
    )
    dataset = CacheDataset(processed_split(processed, "train"), transforms, progress=False)
    return ThreadDataLoader(
        dataset,
        batch_size=params.batch_size,
        shuffle=True,
        num_workers=params.trainer.num_workers,
    )


def eval_loader(params: DictConfig, processed: Path, split: str) -> ThreadDataLoader:
    """Whole cached volumes of ``split``, one per batch, for sliding-window inference."""
    dataset = CacheDataset(processed_split(processed, split), Compose(load_transforms()), progress=False)
    return ThreadDataLoader(dataset, batch_size=1, num_workers=params.trainer.num_workers)
