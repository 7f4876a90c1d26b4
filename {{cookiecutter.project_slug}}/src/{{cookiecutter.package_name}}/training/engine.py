"""Device choice, determinism, and the train/validation loops."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from monai.data import ThreadDataLoader, decollate_batch
from monai.inferers import sliding_window_inference
from monai.metrics import DiceMetric
from monai.transforms import AsDiscrete
from monai.utils import set_determinism
from omegaconf import DictConfig

from ..errors import UserError
from ..paths import write_atomically
from .acceleration import Acceleration

log = logging.getLogger(__name__)

# Sliding-window overlap while validating during training: low, because validation runs every
# epoch; the final test uses evaluate.overlap.
VALIDATION_OVERLAP = 0.25


def select_device(trainer: DictConfig, local_rank: int = 0) -> torch.device:
    """``trainer.accelerator``: auto picks CUDA when visible, else the CPU.

    Under torchrun, process ``local_rank`` takes the GPU of that index.
    """
    choice = trainer.accelerator
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("trainer.accelerator=cuda but no CUDA GPU is visible; use -S trainer=auto.")
    use_cuda = choice == "cuda" or (choice == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    log.info("Device %s (trainer.accelerator=%s)", device, choice)
    return device


def configure_runtime(trainer: DictConfig, seed: int) -> None:
    """Seed everything and pin threads so that CPU runs repeat bitwise (trainer.deterministic)."""
    torch.set_num_threads(trainer.num_threads)
    set_determinism(seed=seed)
    if not trainer.deterministic:
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True


def train_one_epoch(
    model: torch.nn.Module,
    loader: ThreadDataLoader,
    loss_fn: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    acceleration: Acceleration,
) -> float:
    """One pass over ``loader``; returns the mean batch loss."""
    model.train()
    # Summed on the device and read once per epoch: a `.item()` per batch would make the host
    # wait for the GPU at every step.
    total, batches = torch.zeros((), dtype=torch.float64, device=acceleration.device), 0
    for batch in loader:
        images = acceleration.inputs(batch["image"])
        labels = batch["label"].to(acceleration.device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with acceleration.autocast():
            loss = loss_fn(model(images), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += loss.detach()
        batches += 1
    return float(total) / max(batches, 1)


def sliding_window_logits(
    model: torch.nn.Module,
    images: torch.Tensor,
    patch_size: list[int],
    overlap: float,
    acceleration: Acceleration,
) -> torch.Tensor:
    """Sliding-window logits for whole volumes (batch, classes, *spatial)."""
    with torch.no_grad(), acceleration.autocast():
        return sliding_window_inference(images, tuple(patch_size), 1, model, overlap=overlap).float()


def validate(
    model: torch.nn.Module,
    loader: ThreadDataLoader,
    num_classes: int,
    patch_size: list[int],
    acceleration: Acceleration,
) -> tuple[float, list[float]]:
    """Mean foreground Dice over the validation volumes, and its mean per foreground class."""
    model.eval()
    to_pred, to_label = AsDiscrete(argmax=True, to_onehot=num_classes), AsDiscrete(to_onehot=num_classes)
    metric = DiceMetric(include_background=False, reduction="mean")
    for batch in loader:
        images = acceleration.inputs(batch["image"])
        logits = sliding_window_logits(model, images, patch_size, VALIDATION_OVERLAP, acceleration)
        metric(
            [to_pred(item) for item in decollate_batch(logits)],
            [to_label(item) for item in decollate_batch(batch["label"].to(acceleration.device))],
        )
    return float(metric.aggregate().item()), metric.aggregate("mean_batch").tolist()


def save_checkpoint(path: Path, **state: object) -> None:
    """Write atomically, so that an interrupted save leaves the old file intact."""
    write_atomically(path, lambda partial: torch.save(state, partial))
