"""Datasets and loaders over the preprocessed set (data/processed), with augmentation.

``data.cache`` chooses where the loaded volumes are kept between epochs: ``memory``
(MONAI's CacheDataset: fastest), ``disk`` (PersistentDataset: one file per case in a scratch
folder, so memory holds only the current batch), or ``auto``: memory when the preprocessed
set fits ``data.cache_budget_mb``, else disk.
"""

from __future__ import annotations

import atexit
import json
import logging
import shutil
import tempfile
from pathlib import Path

from monai.data import CacheDataset, Dataset, PersistentDataset, ThreadDataLoader, partition_dataset
from monai.transforms import Compose, RandCropByPosNegLabeld, RandFlipd, SpatialPadd
from omegaconf import DictConfig

from .distributed import Ranks
from .errors import UserError
from .layout import PLAN_FILE
from .msd import KEYS, SPLITS_FILE
from .transforms import load_transforms

log = logging.getLogger(__name__)

CACHES = ("auto", "memory", "disk")


def read_plan(processed: Path) -> dict:
    """The preprocessing that preprocess resolved, and the preprocessed set's median shape and size."""
    return json.loads((processed / PLAN_FILE).read_text())


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


def cache_choice(data: DictConfig, size_mb: float) -> str:
    """``data.cache`` resolved to memory or disk for a preprocessed set of ``size_mb``."""
    if data.cache not in CACHES:
        raise UserError(f"data.cache must be one of {', '.join(CACHES)}, got {data.cache!r}.")
    if data.cache != "auto":
        return data.cache
    return "memory" if size_mb <= data.cache_budget_mb else "disk"


def cached_dataset(items: list[dict], transforms: Compose, params: DictConfig, size_mb: float) -> Dataset:
    """``items`` with their deterministic transforms cached where ``data.cache`` says."""
    choice = cache_choice(params.data, size_mb)
    log.info(
        "Caching %d cases %s (data.cache=%s; preprocessed set %.1f MB, data.cache_budget_mb=%s)",
        len(items),
        "in memory" if choice == "memory" else "on disk",
        params.data.cache,
        size_mb,
        params.data.cache_budget_mb,
    )
    if choice == "memory":
        return CacheDataset(items, transforms, progress=False)
    return PersistentDataset(items, transforms, cache_dir=_scratch_folder())


def train_loader(
    params: DictConfig, processed: Path, patch: list[int], ranks: Ranks, size_mb: float
) -> ThreadDataLoader:
    """Cached, augmented patches from the training split (under DDP: this process's share)."""
    ratio = params.train.foreground_ratio
    transforms = Compose(
        [
            *load_transforms(),
            # Volumes thinner than the patch are padded, so that every crop has the patch's size.
            SpatialPadd(keys=KEYS, spatial_size=tuple(patch)),
            RandCropByPosNegLabeld(
                keys=KEYS,
                label_key="label",
                spatial_size=tuple(patch),
                pos=ratio,
                neg=1.0 - ratio,
                num_samples=params.train.samples_per_volume,
            ),
            RandFlipd(keys=KEYS, prob=0.5, spatial_axis=0),
        ]
    )
    cases = processed_split(processed, "train")
    if ranks.active:  # each process caches and trains on its own share, of equal size
        cases = partition_dataset(cases, num_partitions=ranks.world_size, even_divisible=True)[ranks.rank]
    dataset = cached_dataset(cases, transforms, params, size_mb)
    return ThreadDataLoader(
        dataset,
        batch_size=params.batch_size,
        shuffle=True,
        num_workers=params.trainer.num_workers,
    )


def eval_loader(params: DictConfig, processed: Path, split: str, size_mb: float) -> ThreadDataLoader:
    """Whole cached volumes of ``split``, one per batch, for sliding-window inference.

    ``size_mb``: the preprocessed set's size (from its plan), which ``data.cache=auto`` weighs.
    """
    dataset = cached_dataset(processed_split(processed, split), Compose(load_transforms()), params, size_mb)
    return ThreadDataLoader(dataset, batch_size=1, num_workers=params.trainer.num_workers)


def _scratch_folder() -> Path:
    """A folder for this process's disk cache, removed when it exits.

    Per process, because PersistentDataset keys its files by the cases' paths, which stay the
    same when preprocess rewrites their contents.
    """
    folder = Path(tempfile.mkdtemp(prefix="dataset-cache-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder
