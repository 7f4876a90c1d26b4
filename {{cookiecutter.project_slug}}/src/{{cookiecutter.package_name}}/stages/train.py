"""Stage train: fit the configured network on the training split; log it all to MLflow.

It reads top to bottom: :func:`_setup` builds what the loop needs, :func:`_fit` runs the epochs,
:func:`_finish` writes what DVC and MLflow keep.

Stopped by SIGTERM or SIGINT, it saves a resumable checkpoint, marks its MLflow run KILLED and
exits non-zero; the next run of the same experiment resumes (see resume.py).
"""

from __future__ import annotations

import contextlib
import logging
import resource
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import mlflow
import psutil
import torch
from omegaconf import DictConfig

from .. import lab
from ..config.instantiate import instantiate_node
from ..data import planning
from ..data.loaders import Caching, Sampling, cache_choice, eval_loader, read_plan, train_loader
from ..data.msd import MsdDataset, read_msd
from ..data.splits import read_fold
from ..errors import Interrupted
from ..model.networks import build_model, model_card
from ..paths import FINGERPRINT, MODELS, PLOTS, PROCESSED, RESUME_CHECKPOINT, TRAIN_METRICS
from ..progress import logs_above_bars, track
from ..training import distributed, resume
from ..training.acceleration import Acceleration
from ..training.engine import configure_runtime, save_checkpoint, select_device, train_one_epoch, validate
from ..training.history import History

log = logging.getLogger(__name__)


@dataclass
class Fit:
    """The objects the epoch loop works on, built once by :func:`_setup`."""

    net: torch.nn.Module  # the network itself: validation, checkpoints, the logged model
    model: torch.nn.Module  # what the loop calls: the network, wrapped for DDP and prepared for AMP
    optimizer: torch.optim.Optimizer
    loss_fn: torch.nn.Module
    scaler: torch.amp.GradScaler
    acceleration: Acceleration
    train_data: Iterable
    val_data: Iterable
    dataset: MsdDataset
    plan: dict
    patch: list[int]
    card: dict
    history: History
    resumed_from: str | None  # the stopped run this one continues
    inputs_sha256: str
    pruned_at: int | None = None  # the epoch after which a search stopped this trial


def run(params: DictConfig, workdir: Path) -> None:
    device = select_device(params.trainer, distributed.local_rank())
    ranks = distributed.init(device)
    try:
        with resume.stop_on_signals():
            fit = _setup(params, workdir, device, ranks)
            # Rank 0 alone logs and writes checkpoints.
            inputs = [params.data.dir, str(FINGERPRINT), str(PROCESSED)]
            resolved = _resolved(params, fit.plan, fit.patch, device) | fit.acceleration.resolved()
            resolved["resolved.world_size"] = str(ranks.world_size)
            tracked = (
                lab.start_run(params, "train", workdir, inputs, resolved=resolved) if ranks.is_main else None
            )
            with tracked or contextlib.nullcontext() as mlflow_run, logs_above_bars():
                if ranks.is_main:  # the cases this fold trains and validates on, and the test cases
                    mlflow.log_dict(read_fold(workdir / PROCESSED, params.data.fold), "split.json")
                started = time.perf_counter()
                # From process start to the first batch: imports, device, caches, the MLflow run.
                startup_seconds = time.time() - psutil.Process().create_time()
                _fit(params, workdir, fit, ranks, mlflow_run, lab.search_trial() if ranks.is_main else None)
                if ranks.is_main:
                    seconds = {
                        "train_seconds": time.perf_counter() - started,
                        "startup_seconds": startup_seconds,
                    }
                    _finish(params, workdir, fit, mlflow_run, seconds, device)
    finally:
        distributed.shutdown(ranks)


def _setup(params: DictConfig, workdir: Path, device: torch.device, ranks: distributed.Ranks) -> Fit:
    """The network, optimizer, loss and loaders, continued from a stopped run when there is one."""
    # Each process its own seed, for its own random crops; DDP copies rank 0's initial weights.
    configure_runtime(params.trainer, params.seed + ranks.rank)
    acceleration = Acceleration.resolve(params.trainer, device)
    processed = workdir / PROCESSED
    dataset, plan = read_msd(processed), read_plan(processed)
    patch = planning.patch_size(params.patch_size, plan["median_shape"], params.patch_voxels)
    log.info(
        "Patch %s voxels (patch_size=%s, patch_voxels=%d)",
        planning.describe(patch),
        params.patch_size,
        params.patch_voxels,
    )
    inputs_sha256 = lab.inputs_sha256(params, workdir, "train", [str(PROCESSED)])
    saved = resume.load(workdir / RESUME_CHECKPOINT, params.train.resume, inputs_sha256, device)
    net = build_model(params.model, dataset.in_channels, dataset.num_classes).to(device)
    if saved:
        net.load_state_dict(saved["model"])  # before DDP, which copies rank 0's weights to all
    wrapped = distributed.wrap(net, ranks, device)
    model = acceleration.prepare(wrapped)
    fit = Fit(
        net=distributed.unwrap(wrapped),
        model=model,
        optimizer=instantiate_node(params.optimizer, "optimizer", model.parameters(), lr=params.lr),
        loss_fn=instantiate_node(params.loss, "loss"),
        scaler=acceleration.grad_scaler(),
        acceleration=acceleration,
        train_data=train_loader(
            processed,
            params.data.fold,
            _sampling(params, patch),
            Caching.of(params),
            ranks,
            plan["size_mb"],
            device,
        ),
        val_data=eval_loader(processed, "val", params.data.fold, Caching.of(params), plan["size_mb"], device),
        dataset=dataset,
        plan=plan,
        patch=patch,
        card=model_card(params.model, dataset, plan["preprocessing"], patch),
        history=History(),
        resumed_from=None,
        inputs_sha256=inputs_sha256,
    )
    if saved:
        fit.optimizer.load_state_dict(saved["optimizer"])
        fit.scaler.load_state_dict(saved["scaler"])
        fit.history = resume.restored_history(saved)
        fit.resumed_from = saved["run_id"]
        if ranks.is_main and saved["best"]:  # DVC removed models/ before this run; it comes back
            save_checkpoint(workdir / MODELS / "best.pt", **saved["best"])
    return fit


def _fit(
    params: DictConfig,
    workdir: Path,
    fit: Fit,
    ranks: distributed.Ranks,
    mlflow_run: object,
    trial: object | None,  # lab.search_trial(): the search trial this run is, None outside one
) -> None:
    """The epochs still to run; a stop (SIGTERM, Ctrl-C) saves where the current epoch began.

    In a search (``trial``, rank 0's), each validation is reported, and the study may stop it.
    """
    if fit.resumed_from and ranks.is_main:
        mlflow.set_tag("resumed_from", fit.resumed_from)
        for epoch, metrics in fit.history.epoch_metrics().items():  # this run holds whole curves
            lab.log_metrics(metrics, step=epoch)
    snapshot = None
    epochs = range(fit.history.epoch + 1, params.epochs + 1)
    try:
        for epoch in track(epochs, "train", unit="epoch") if ranks.is_main else epochs:
            if ranks.is_main:  # where a stop during this epoch resumes from
                snapshot = resume.snapshot(fit.net, fit.optimizer, fit.scaler, fit.history)
            resume.seed_epoch(params.seed, ranks.rank, epoch, fit.train_data.dataset)
            batches = track(fit.train_data, f"epoch {epoch}", unit="batch", leave=False)
            loss = train_one_epoch(
                fit.model,
                batches if ranks.is_main else fit.train_data,
                fit.loss_fn,
                fit.optimizer,
                fit.scaler,
                fit.acceleration,
            )
            loss = distributed.mean(loss, ranks, fit.acceleration.device)
            dice = None
            if epoch % params.train.val_every == 0 or epoch == params.epochs:
                # Every process validates the whole split: MONAI's metrics gather across
                # processes, and the mean over their identical results is the split's mean.
                mean, per_class = validate(
                    fit.net, fit.val_data, fit.dataset.num_classes, fit.patch, fit.acceleration
                )
                dice = {"val_dice": mean} | {
                    f"val_dice_{name}": value
                    for name, value in zip(fit.dataset.foreground.values(), per_class, strict=True)
                }
            if ranks.is_main:
                _record(fit, epoch, loss, dice, params.epochs, workdir)
            if dice is not None and _pruned(trial, epoch, dice["val_dice"], ranks, fit.acceleration.device):
                fit.pruned_at = epoch
                break
    except Interrupted:
        if ranks.is_main and mlflow_run is not None and snapshot is not None:
            best = (
                torch.load(workdir / MODELS / "best.pt", weights_only=True)
                if snapshot["best_epoch"]
                else None
            )
            resume.save(
                workdir / RESUME_CHECKPOINT,
                snapshot
                | {"best": best, "run_id": mlflow_run.info.run_id, "inputs_sha256": fit.inputs_sha256},
            )
        raise  # lab.start_run ends the run KILLED


def _pruned(
    trial: object | None, epoch: int, val_dice: float, ranks: distributed.Ranks, device: torch.device
) -> bool:
    """Whether the search stops this trial now; every process learns rank 0's answer."""
    stop = trial is not None and trial.prunes(epoch, val_dice)
    return distributed.mean(float(stop), ranks, device) > 0


def _finish(
    params: DictConfig,
    workdir: Path,
    fit: Fit,
    mlflow_run: object,
    seconds: dict[str, float],
    device: torch.device,
) -> None:
    """The final checkpoint, curves, summary metrics and model: what DVC and MLflow keep."""
    save_checkpoint(
        workdir / MODELS / "last.pt",
        model=fit.net.state_dict(),
        optimizer=fit.optimizer.state_dict(),
        scaler=fit.scaler.state_dict(),
        epoch=fit.history.epoch,
        card=fit.card,
    )
    history = fit.history
    summary = {
        "best_val_dice": history.best_dice,
        "best_epoch": history.best_epoch,
        "final_train_loss": history.losses[-1]["train_loss"],
    }
    if fit.pruned_at is not None:  # a column of `dvc exp show` that says the trial stopped early
        summary["pruned_at_epoch"] = fit.pruned_at
    # Wall time and memory go to MLflow only: the DVC metrics file holds what reproduces exactly.
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    timing = {name: round(value, 2) for name, value in seconds.items()}
    lab.log_metrics(summary | timing | {"peak_rss_mb": round(peak_rss_mb, 1)} | _peak_gpu_memory(device))
    history.write_curves(workdir / PLOTS)
    if params.tracking.log_model:
        lab.log_model(fit.net, workdir / MODELS / "best.pt", fit.card)
    lab.write_run_metrics(
        workdir / TRAIN_METRICS,
        mlflow_run.info.run_id,
        summary | {"patch_size": planning.describe(fit.patch)},
    )
    resume.discard(workdir / RESUME_CHECKPOINT)
    log.info(
        "Best val_dice %.4f at epoch %d; MLflow run %s",
        history.best_dice,
        history.best_epoch,
        mlflow_run.info.run_id,
    )


def _record(
    fit: Fit, epoch: int, loss: float, dice: dict[str, float] | None, epochs: int, workdir: Path
) -> None:
    """One finished epoch: its metrics, its log line, and best.pt when its Dice is the best yet."""
    if fit.history.add(epoch, loss, dice):
        save_checkpoint(workdir / MODELS / "best.pt", model=fit.net.state_dict(), epoch=epoch, card=fit.card)
    message = f"epoch {epoch}/{epochs} train_loss {loss:.4f}"
    if dice is not None:  # val_dice, the mean over classes, and val_dice_<class> for each
        message += f" val_dice {dice['val_dice']:.4f}"
    lab.log_metrics({"train_loss": loss} | (dice or {}), step=epoch)  # one write to the store per epoch
    log.info(message)


def _peak_gpu_memory(device: torch.device) -> dict[str, float]:
    """The most GPU memory this process's tensors held at once (MLflow's system metrics sample
    the whole GPU's use, other processes included)."""
    if device.type != "cuda":
        return {}
    return {"peak_gpu_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)}


def _resolved(params: DictConfig, plan: dict, patch: list[int], device: torch.device) -> dict[str, str]:
    """The values that `auto` settings became, logged as MLflow params beside the settings."""
    preprocessing = plan["preprocessing"]
    return {
        "resolved.pixdim": planning.describe(preprocessing["pixdim"]),
        "resolved.normalization": preprocessing["normalization"]["kind"],
        "resolved.patch_size": planning.describe(patch),
        "resolved.cache": cache_choice(Caching.of(params), plan["size_mb"], device),
    }


def _sampling(params: DictConfig, patch: list[int]) -> Sampling:
    train = params.train
    return Sampling(patch, params.batch_size, train.foreground_ratio, train.samples_per_volume)
