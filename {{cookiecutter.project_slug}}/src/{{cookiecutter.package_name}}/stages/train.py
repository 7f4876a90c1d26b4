"""Stage train: fit the configured network on the training split; log it all to MLflow."""

from __future__ import annotations

import contextlib
import logging
import resource
import time
from pathlib import Path

import mlflow
import pandas as pd
import psutil
import torch
from omegaconf import DictConfig

from .. import distributed, planning, tracking
from ..acceleration import Acceleration
from ..config import instantiate_node
from ..engine import configure_runtime, save_checkpoint, select_device, train_one_epoch, validate
from ..layout import FINGERPRINT, MODELS, PLOTS, PROCESSED, TRAIN_METRICS
from ..loaders import cache_choice, eval_loader, read_plan, train_loader
from ..models import build_model, model_card
from ..msd import read_msd

log = logging.getLogger(__name__)


def run(params: DictConfig, workdir: Path) -> None:
    device = select_device(params.trainer, distributed.local_rank())
    ranks = distributed.init(device)
    try:
        _train(params, workdir, device, ranks)
    finally:
        distributed.shutdown(ranks)


def _train(params: DictConfig, workdir: Path, device: torch.device, ranks: distributed.Ranks) -> None:
    # Each process its own seed, for its own random crops; DDP copies rank 0's initial weights.
    configure_runtime(params.trainer, params.seed + ranks.rank)
    acceleration = Acceleration.resolve(params.trainer, device)
    processed = workdir / PROCESSED
    dataset = read_msd(processed)
    plan = read_plan(processed)
    patch = planning.patch_size(params.patch_size, plan["median_shape"], params.patch_voxels)
    log.info(
        "Patch %s voxels (patch_size=%s, patch_voxels=%d)",
        planning.describe(patch),
        params.patch_size,
        params.patch_voxels,
    )
    card = model_card(params.model, dataset, plan["preprocessing"], patch)
    model = distributed.wrap(
        build_model(params.model, dataset.in_channels, dataset.num_classes).to(device), ranks, device
    )
    net = distributed.unwrap(model)  # the network itself: validation, checkpoints, the logged model
    model = acceleration.prepare(model)
    optimizer = instantiate_node(params.optimizer, "optimizer", model.parameters(), lr=params.lr)
    loss_fn = instantiate_node(params.loss, "loss")
    scaler = acceleration.grad_scaler()
    train_data = train_loader(params, processed, patch, ranks, plan["size_mb"], device)
    val_data = eval_loader(params, processed, "val", plan["size_mb"], device)

    inputs = [params.data.dir, str(FINGERPRINT), str(PROCESSED)]
    resolved = _resolved(params, plan, patch, device) | acceleration.resolved()
    resolved["resolved.world_size"] = str(ranks.world_size)
    # Rank 0 alone logs and writes checkpoints.
    tracked = (
        tracking.start_run(params, "train", workdir, inputs, resolved=resolved) if ranks.is_main else None
    )
    with tracked or contextlib.nullcontext() as run:
        losses, dices = [], []
        best_dice, best_epoch = -1.0, 0
        started = time.perf_counter()
        # From process start to the first batch: imports, device, caches, the MLflow run.
        startup_seconds = time.time() - psutil.Process().create_time()
        for epoch in range(1, params.epochs + 1):
            loss = train_one_epoch(model, train_data, loss_fn, optimizer, scaler, acceleration)
            loss = distributed.mean(loss, ranks, device)
            dice = None
            if epoch % params.train.val_every == 0 or epoch == params.epochs:
                # Every process validates the whole split: MONAI's metrics gather across
                # processes, and the mean over their identical results is the split's mean.
                dice = validate(net, val_data, dataset.num_classes, patch, acceleration)
            if not ranks.is_main:
                continue
            losses.append({"epoch": epoch, "train_loss": loss})
            epoch_metrics = {"train_loss": loss}
            message = f"epoch {epoch}/{params.epochs} train_loss {loss:.4f}"
            if dice is not None:
                dices.append({"epoch": epoch, "val_dice": dice})
                epoch_metrics["val_dice"] = dice
                message += f" val_dice {dice:.4f}"
                # The first validation always saves, so that a NaN Dice still leaves a best.pt.
                if best_epoch == 0 or dice > best_dice:
                    best_dice, best_epoch = dice, epoch
                    save_checkpoint(
                        workdir / MODELS / "best.pt", model=net.state_dict(), epoch=epoch, card=card
                    )
            mlflow.log_metrics(epoch_metrics, step=epoch)  # one write to the store per epoch
            log.info(message)
        if not ranks.is_main:
            return
        seconds = time.perf_counter() - started
        save_checkpoint(
            workdir / MODELS / "last.pt",
            model=net.state_dict(),
            optimizer=optimizer.state_dict(),
            scaler=scaler.state_dict(),
            epoch=params.epochs,
            card=card,
        )
        summary = {
            "best_val_dice": best_dice,
            "best_epoch": best_epoch,
            "final_train_loss": losses[-1]["train_loss"],
        }
        # Wall time and memory go to MLflow only: the DVC metrics file holds what reproduces exactly.
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        mlflow.log_metrics(
            {
                **summary,
                "train_seconds": round(seconds, 2),
                "startup_seconds": round(startup_seconds, 2),
                "peak_rss_mb": round(peak_rss_mb, 1),
            }
        )
        (workdir / PLOTS).mkdir(parents=True, exist_ok=True)
        pd.DataFrame(losses).to_csv(workdir / PLOTS / "train_loss.csv", index=False)
        pd.DataFrame(dices).to_csv(workdir / PLOTS / "val_dice.csv", index=False)
        if params.tracking.log_model:
            tracking.log_model(net, workdir / MODELS / "best.pt", card)
        tracking.write_run_metrics(
            workdir / TRAIN_METRICS, run.info.run_id, summary | {"patch_size": planning.describe(patch)}
        )
    log.info("Best val_dice %.4f at epoch %d; MLflow run %s", best_dice, best_epoch, run.info.run_id)


def _resolved(params: DictConfig, plan: dict, patch: list[int], device: torch.device) -> dict[str, str]:
    """The values that `auto` settings became, logged as MLflow params beside the settings."""
    preprocessing = plan["preprocessing"]
    return {
        "resolved.pixdim": planning.describe(preprocessing["pixdim"]),
        "resolved.normalization": preprocessing["normalization"]["kind"],
        "resolved.patch_size": planning.describe(patch),
        "resolved.cache": cache_choice(params.data, plan["size_mb"], device),
    }
