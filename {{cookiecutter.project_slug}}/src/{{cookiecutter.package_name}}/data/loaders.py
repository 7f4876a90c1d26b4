"""Datasets and loaders over the preprocessed set (data/processed), with augmentation.

``data.cache`` chooses where the loaded volumes are kept between epochs: ``gpu`` (CacheDataset
on the GPU: the random crops and flips then run there too, as in MONAI's fast-training
recipe), ``memory`` (CacheDataset in host memory), ``disk`` (PersistentDataset: one file per
case in a scratch folder, so memory holds only the current batch), or ``auto``: when the
preprocessed set fits ``data.cache_budget_mb``, the GPU if there is one with room, else host
memory; disk when it does not fit.
"""

from __future__ import annotations

import atexit
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from monai.data import CacheDataset, Dataset, PersistentDataset, ThreadDataLoader, partition_dataset
from monai.transforms import (
    Compose,
    EnsureTyped,
    RandCropByPosNegLabeld,
    RandFlipd,
    Randomizable,
    SpatialPadd,
)
from omegaconf import DictConfig

from ..errors import UserError
from ..paths import PLAN_FILE
from ..training.distributed import Ranks
from .msd import KEYS
from .splits import read_fold
from .transforms import load_transforms

log = logging.getLogger(__name__)

# data.cache=auto caches on the GPU only when the set takes at most this share of its free
# memory, leaving the rest to the network's activations.
GPU_CACHE_SHARE = 0.25


def read_plan(processed: Path) -> dict:
    """The preprocessing that preprocess resolved, and the preprocessed set's median shape and size."""
    return json.loads((processed / PLAN_FILE).read_text())


def processed_split(processed: Path, split: str, fold: int) -> list[dict[str, str]]:
    """Cases of one split (train, val or test) of fold ``fold`` of the preprocessed set, as
    LoadImaged inputs."""
    names = read_fold(processed, fold)[split]
    return [
        {
            "name": name,
            "image": str(processed / "imagesTr" / f"{name}.nii.gz"),
            "label": str(processed / "labelsTr" / f"{name}.nii.gz"),
        }
        for name in names
    ]


@dataclass(frozen=True)
class Caching:
    """Where loaded cases are kept between epochs, and how many workers load batches."""

    cache: str  # data.cache: auto | gpu | memory | disk
    budget_mb: float  # data.cache_budget_mb: the largest set `auto` keeps in memory or on the GPU
    num_workers: int  # trainer.num_workers

    @classmethod
    def of(cls, params: DictConfig) -> Caching:
        """The three keys of params.yaml that decide it."""
        return cls(params.data.cache, params.data.cache_budget_mb, params.trainer.num_workers)


def cache_choice(caching: Caching, size_mb: float, device: torch.device) -> str:
    """``data.cache`` resolved to gpu, memory or disk for a preprocessed set of ``size_mb``."""
    if caching.cache == "gpu" and device.type != "cuda":
        raise UserError(f"data.cache=gpu but training runs on {device.type}; use -S data.cache=auto.")
    if caching.cache != "auto":
        return caching.cache
    if size_mb > caching.budget_mb:
        return "disk"
    if device.type == "cuda" and size_mb * 2**20 <= GPU_CACHE_SHARE * torch.cuda.mem_get_info(device)[0]:
        return "gpu"
    return "memory"


def cached_dataset(
    items: list[dict], transforms: list, caching: Caching, size_mb: float, device: torch.device
) -> tuple[Dataset, str]:
    """``items`` with their deterministic transforms cached where ``data.cache`` says, and where."""
    choice = cache_choice(caching, size_mb, device)
    log.info(
        "Caching %d cases %s (data.cache=%s; preprocessed set %.1f MB, data.cache_budget_mb=%s)",
        len(items),
        {"gpu": "on the GPU", "memory": "in memory", "disk": "on disk"}[choice],
        caching.cache,
        size_mb,
        caching.budget_mb,
    )
    if choice == "disk":
        return PersistentDataset(items, Compose(transforms), cache_dir=_scratch_folder()), choice
    if choice == "gpu":
        # Inserted before the first random transform: the cached cases then live on the GPU,
        # and every transform after it runs on GPU tensors.
        first_random = next(
            (i for i, t in enumerate(transforms) if isinstance(t, Randomizable)), len(transforms)
        )
        transforms = [
            *transforms[:first_random],
            EnsureTyped(keys=KEYS, device=device),
            *transforms[first_random:],
        ]
    return CacheDataset(items, Compose(transforms), progress=False), choice


def _batches(
    dataset: Dataset, cache: str, num_workers: int, device: torch.device, **options
) -> ThreadDataLoader:
    """Batches of ``dataset``; no worker processes when its cases already sit on the GPU."""
    return ThreadDataLoader(
        dataset,
        num_workers=0 if cache == "gpu" else num_workers,
        # Page-locked host batches let `.to(device, non_blocking=True)` overlap the copy.
        pin_memory=device.type == "cuda" and cache != "gpu",
        **options,
    )


@dataclass(frozen=True)
class Sampling:
    """How training draws patches: the train.* keys, the batch size and the patch."""

    patch: list[int]  # voxels per axis
    batch_size: int
    foreground_ratio: float  # share of crops centred on foreground
    samples_per_volume: int  # crops per volume per epoch


def train_loader(
    processed: Path,
    fold: int,
    sampling: Sampling,
    caching: Caching,
    ranks: Ranks,
    size_mb: float,
    device: torch.device,
) -> ThreadDataLoader:
    """Cached, augmented patches from fold ``fold``'s training split (under DDP: this process's share)."""
    ratio = sampling.foreground_ratio
    transforms = [
        *load_transforms(),
        # Volumes thinner than the patch are padded, so that every crop has the patch's size.
        SpatialPadd(keys=KEYS, spatial_size=tuple(sampling.patch)),
        RandCropByPosNegLabeld(
            keys=KEYS,
            label_key="label",
            spatial_size=tuple(sampling.patch),
            pos=ratio,
            neg=1.0 - ratio,
            num_samples=sampling.samples_per_volume,
        ),
        RandFlipd(keys=KEYS, prob=0.5, spatial_axis=0),
    ]
    cases = processed_split(processed, "train", fold)
    if ranks.active:  # each process caches and trains on its own share, of equal size
        cases = partition_dataset(cases, num_partitions=ranks.world_size, even_divisible=True)[ranks.rank]
    dataset, cache = cached_dataset(cases, transforms, caching, size_mb, device)
    return _batches(dataset, cache, caching.num_workers, device, batch_size=sampling.batch_size, shuffle=True)


def eval_loader(
    processed: Path, split: str, fold: int, caching: Caching, size_mb: float, device: torch.device
) -> ThreadDataLoader:
    """Whole cached volumes of ``split`` of fold ``fold``, one per batch, for sliding-window inference.

    ``size_mb``: the preprocessed set's size (from its plan), which ``data.cache=auto`` weighs.
    """
    cases = processed_split(processed, split, fold)
    dataset, cache = cached_dataset(cases, load_transforms(), caching, size_mb, device)
    return _batches(dataset, cache, caching.num_workers, device, batch_size=1)


def _scratch_folder() -> Path:
    """A folder for this process's disk cache, removed when it exits.

    Per process, because PersistentDataset keys its files by the cases' paths, which stay the
    same when preprocess rewrites their contents.
    """
    folder = Path(tempfile.mkdtemp(prefix="dataset-cache-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder
