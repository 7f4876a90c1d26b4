"""Stage train: fit the configured network on the training split; log it all to MLflow.

Stopped by SIGTERM or SIGINT, it saves a resumable checkpoint, marks its MLflow run KILLED and
exits non-zero; the next run of the same experiment resumes (see resume.py).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import resource
import shutil
import time
from pathlib import Path

import mlflow
import pandas as pd
import psutil
import torch
from omegaconf import DictConfig

from ..config.instantiate import instantiate_node
from ..data import planning
from ..data.loaders import cache_choice, eval_loader, read_plan, train_loader
from ..data.msd import read_msd
from ..errors import Interrupted
from ..lab import tracking
from ..lab.progress import logs_above_bars, track
from ..model.networks import build_model, model_card
from ..paths import FINGERPRINT, MODELS, PLOTS, PROCESSED, RESUME_CHECKPOINT, TRAIN_METRICS
from ..training import distributed, resume
from ..training.acceleration import Acceleration
from ..training.engine import configure_runtime, save_checkpoint, select_device, train_one_epoch, validate

log = logging.getLogger(__name__)


def run(params: DictConfig, workdir: Path) -> None:
    device = select_device(params.trainer, distributed.local_rank())
    ranks = distributed.init(device)
    try:
        with resume.stop_on_signals():
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
    inputs_sha256 = resume.inputs_sha256(params, workdir)
    saved = resume.load(workdir / RESUME_CHECKPOINT, params, inputs_sha256, device)
    net = build_model(params.model, dataset.in_channels, dataset.num_classes).to(device)
    if saved:
        net.load_state_dict(saved["model"])  # before DDP, which copies rank 0's weights to all
    wrapped = distributed.wrap(net, ranks, device)
    net = distributed.unwrap(wrapped)  # the network itself: validation, checkpoints, the logged model
    model = acceleration.prepare(wrapped)
    optimizer = instantiate_node(params.optimizer, "optimizer", model.parameters(), lr=params.lr)
    loss_fn = instantiate_node(params.loss, "loss")
    scaler = acceleration.grad_scaler()
    progress = {"epoch": 0, "losses": [], "dices": [], "best_dice": -1.0, "best_epoch": 0}
    if saved:
        optimizer.load_state_dict(saved["optimizer"])
        scaler.load_state_dict(saved["scaler"])
        progress = {key: saved[key] for key in progress}
        if ranks.is_main and saved["best"]:  # DVC removed models/ before this run; it comes back
            save_checkpoint(workdir / MODELS / "best.pt", **saved["best"])
    train_data = train_loader(params, processed, patch, ranks, plan["size_mb"], device)
    val_data = eval_loader(params, processed, "val", plan["size_mb"], device)

    inputs = [params.data.dir, str(FINGERPRINT), str(PROCESSED)]
    resolved = _resolved(params, plan, patch, device) | acceleration.resolved()
    resolved["resolved.world_size"] = str(ranks.world_size)
    # Rank 0 alone logs and writes checkpoints.
    tracked = (
        tracking.start_run(params, "train", workdir, inputs, resolved=resolved) if ranks.is_main else None
    )
    with tracked or contextlib.nullcontext() as run, logs_above_bars():
        if saved and ranks.is_main:
            mlflow.set_tag("resumed_from", saved["run_id"])
            for epoch, metrics in _epoch_metrics(progress).items():  # this run holds whole curves
                tracking.log_metrics(metrics, step=epoch)
        started = time.perf_counter()
        # From process start to the first batch: imports, device, caches, the MLflow run.
        startup_seconds = time.time() - psutil.Process().create_time()
        snapshot = None
        epochs = range(progress["epoch"] + 1, params.epochs + 1)
        try:
            for epoch in track(epochs, "train", unit="epoch") if ranks.is_main else epochs:
                if ranks.is_main:
                    # Where a stop during this epoch resumes from; copies on the device are cheap.
                    snapshot = _snapshot(net, optimizer, scaler, progress)
                resume.seed_epoch(params.seed, ranks.rank, epoch, train_data.dataset)
                batches = track(train_data, f"epoch {epoch}", unit="batch", leave=False)
                loss = train_one_epoch(
                    model, batches if ranks.is_main else train_data, loss_fn, optimizer, scaler, acceleration
                )
                loss = distributed.mean(loss, ranks, device)
                dice = None
                if epoch % params.train.val_every == 0 or epoch == params.epochs:
                    # Every process validates the whole split: MONAI's metrics gather across
                    # processes, and the mean over their identical results is the split's mean.
                    mean, per_class = validate(net, val_data, dataset.num_classes, patch, acceleration)
                    dice = {"val_dice": mean} | {
                        f"val_dice_{name}": value
                        for name, value in zip(dataset.foreground.values(), per_class, strict=True)
                    }
                if ranks.is_main:
                    _record(progress, epoch, loss, dice, params.epochs, workdir, net, card)
        except Interrupted:
            if ranks.is_main and run is not None:
                if snapshot is not None:
                    best = (
                        torch.load(workdir / MODELS / "best.pt", weights_only=True)
                        if snapshot["best_epoch"]
                        else None
                    )
                    resume.save(
                        workdir / RESUME_CHECKPOINT,
                        snapshot | {"best": best, "run_id": run.info.run_id, "inputs_sha256": inputs_sha256},
                    )
            raise  # tracking.start_run ends the run KILLED
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
            "best_val_dice": progress["best_dice"],
            "best_epoch": progress["best_epoch"],
            "final_train_loss": progress["losses"][-1]["train_loss"],
        }
        # Wall time and memory go to MLflow only: the DVC metrics file holds what reproduces exactly.
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        tracking.log_metrics(
            {
                **summary,
                "train_seconds": round(seconds, 2),
                "startup_seconds": round(startup_seconds, 2),
                "peak_rss_mb": round(peak_rss_mb, 1),
            }
            | _peak_gpu_memory(device)
        )
        _write_curves(workdir / PLOTS, progress)
        if params.tracking.log_model:
            tracking.log_model(net, workdir / MODELS / "best.pt", card)
        tracking.write_run_metrics(
            workdir / TRAIN_METRICS, run.info.run_id, summary | {"patch_size": planning.describe(patch)}
        )
        resume.discard(workdir / RESUME_CHECKPOINT)
    log.info(
        "Best val_dice %.4f at epoch %d; MLflow run %s",
        progress["best_dice"],
        progress["best_epoch"],
        run.info.run_id,
    )


def _record(
    progress: dict,
    epoch: int,
    loss: float,
    dice: dict[str, float] | None,
    epochs: int,
    workdir: Path,
    net: torch.nn.Module,
    card: dict,
) -> None:
    """One finished epoch: its metrics, its log line, and best.pt when its Dice is the best yet."""
    progress["epoch"] = epoch
    progress["losses"].append({"epoch": epoch, "train_loss": loss})
    epoch_metrics = {"train_loss": loss}
    message = f"epoch {epoch}/{epochs} train_loss {loss:.4f}"
    if dice is not None:  # val_dice, the mean over classes, and val_dice_<class> for each
        progress["dices"].append({"epoch": epoch, **dice})
        epoch_metrics |= dice
        message += f" val_dice {dice['val_dice']:.4f}"
        # The first validation always saves, so that a NaN Dice still leaves a best.pt.
        if progress["best_epoch"] == 0 or dice["val_dice"] > progress["best_dice"]:
            progress["best_dice"], progress["best_epoch"] = dice["val_dice"], epoch
            save_checkpoint(workdir / MODELS / "best.pt", model=net.state_dict(), epoch=epoch, card=card)
    tracking.log_metrics(epoch_metrics, step=epoch)  # one write to the store per epoch
    log.info(message)


def _snapshot(
    net: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, progress: dict
) -> dict:
    """Copies of everything that a resumed run continues from."""
    return {
        "model": {key: value.detach().clone() for key, value in net.state_dict().items()},
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "scaler": scaler.state_dict(),
        **copy.deepcopy(progress),
    }


def _peak_gpu_memory(device: torch.device) -> dict[str, float]:
    """The most GPU memory this process's tensors held at once (MLflow's system metrics sample
    the whole GPU's use, other processes included)."""
    if device.type != "cuda":
        return {}
    return {"peak_gpu_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)}


def _write_curves(folder: Path, progress: dict) -> None:
    """The CSV files dvc.yaml plots: loss, mean validation Dice, and one file per class."""
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(progress["losses"]).to_csv(folder / "train_loss.csv", index=False)
    dices = pd.DataFrame(progress["dices"])
    dices[["epoch", "val_dice"]].to_csv(folder / "val_dice.csv", index=False)
    per_class = folder / "val_dice_per_class"
    shutil.rmtree(per_class, ignore_errors=True)  # no file left from another dataset's classes
    per_class.mkdir()
    for column in dices.columns.drop(["epoch", "val_dice"]):
        name = column.removeprefix("val_dice_")
        dices[["epoch", column]].rename(columns={column: "val_dice"}).to_csv(
            per_class / f"{name}.csv", index=False
        )


def _epoch_metrics(progress: dict) -> dict[int, dict[str, float]]:
    """Per finished epoch, its metrics (train_loss, and val_dice where it validated)."""
    metrics = {row["epoch"]: {"train_loss": row["train_loss"]} for row in progress["losses"]}
    for row in progress["dices"]:
        metrics[row["epoch"]] |= {key: value for key, value in row.items() if key != "epoch"}
    return metrics


def _resolved(params: DictConfig, plan: dict, patch: list[int], device: torch.device) -> dict[str, str]:
    """The values that `auto` settings became, logged as MLflow params beside the settings."""
    preprocessing = plan["preprocessing"]
    return {
        "resolved.pixdim": planning.describe(preprocessing["pixdim"]),
        "resolved.normalization": preprocessing["normalization"]["kind"],
        "resolved.patch_size": planning.describe(patch),
        "resolved.cache": cache_choice(params.data, plan["size_mb"], device),
    }
