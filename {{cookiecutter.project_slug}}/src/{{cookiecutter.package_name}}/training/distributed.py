"""Data-parallel training under torchrun (DDP): the process group, and what only rank 0 does.

torchrun starts one process per GPU (or per share of the CPU) and sets RANK, WORLD_SIZE and
LOCAL_RANK. Every process trains on its own part of the training cases; gradients are averaged
across processes at each step. Rank 0 alone writes checkpoints, logs to MLflow and prints
progress. Without torchrun there is one process and nothing here does anything.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..paths import PACKAGE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def local_rank() -> int:
    """This process's index on its machine: the GPU it takes."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def init(device: torch.device) -> Ranks:
    """Join torchrun's process group (NCCL on CUDA, gloo on the CPU), if there is one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Ranks()
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    ranks = Ranks(dist.get_rank(), world_size, local_rank())
    if not ranks.is_main:
        logging.getLogger(PACKAGE).setLevel(logging.WARNING)  # one progress log: rank 0's
    log.info("DDP: %d processes, backend %s (trainer.nproc_per_node)", world_size, dist.get_backend())
    return ranks


def wrap(model: torch.nn.Module, ranks: Ranks, device: torch.device) -> torch.nn.Module:
    """The model as DDP sees it; batch norm statistics synchronised across GPUs (CUDA only)."""
    if not ranks.active:
        return model
    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The network itself, for validation, checkpoints and logging (its keys without ``module.``)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def mean(value: float, ranks: Ranks, device: torch.device) -> float:
    """The mean of ``value`` over all processes."""
    if not ranks.active:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / ranks.world_size


def shutdown(ranks: Ranks) -> None:
    if ranks.active:
        dist.destroy_process_group()
