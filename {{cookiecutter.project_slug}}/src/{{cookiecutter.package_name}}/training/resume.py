"""Stopping and resuming the train stage.

SIGTERM (a scheduler's pre-emption, `kill`) or SIGINT (Ctrl-C) stops training at once. The
state at the start of the interrupted epoch (model, optimizer, grad scaler, the curves so far,
the best model) goes to ``checkpoints/train-resume.pt``, atomically. Running the same
experiment again continues from that epoch when ``train.resume: auto`` and the code, params and
preprocessed data are those the checkpoint was written with.

Resumed runs equal uninterrupted ones bitwise on the CPU with ``trainer.deterministic``, because
each epoch's randomness (crops, flips, shuffling, dropout) is seeded from (seed, rank, epoch)
alone: an epoch replays the same whether it follows a resume or not.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import random
import signal
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from monai.data import Dataset

from ..errors import Interrupted
from .engine import save_checkpoint
from .history import History

log = logging.getLogger(__name__)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into ``Interrupted`` in this (the main) thread."""

    def interrupt(signum: int, _frame: object) -> None:
        raise Interrupted(signum)

    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def seed_epoch(seed: int, rank: int, epoch: int, dataset: Dataset) -> None:
    """Seed every random source of one epoch from (seed, rank, epoch)."""
    epoch_seed = int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0])
    torch.manual_seed(epoch_seed)
    np.random.seed(epoch_seed)
    random.seed(epoch_seed)
    dataset.transform.set_random_state(seed=epoch_seed)  # MONAI transforms keep their own generators


def snapshot(
    net: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, history: History
) -> dict:
    """Copies of everything a resumed run continues from, taken where an epoch begins; copies
    on the device are cheap."""
    return {
        "model": {key: value.detach().clone() for key, value in net.state_dict().items()},
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "scaler": scaler.state_dict(),
        **copy.deepcopy(asdict(history)),
    }


def restored_history(state: dict) -> History:
    """The history a saved state holds (the fields that :func:`snapshot` copied)."""
    return History(**{key: state[key] for key in asdict(History())})


def load(path: Path, resume: str, inputs: str, device: torch.device) -> dict | None:
    """The saved state to continue from (``train.resume``: auto or never), or None to start at epoch 1."""
    if resume == "never" or not path.exists():
        return None
    state = torch.load(path, map_location=device, weights_only=True)
    if state["inputs_sha256"] != inputs:
        log.warning(
            "Not resuming from %s: it was written for other code, params or data; starting at epoch 1",
            path,
        )
        return None
    log.info("Resuming from %s after epoch %d (MLflow run %s)", path, state["epoch"], state["run_id"])
    return state


def save(path: Path, state: dict) -> None:
    save_checkpoint(path, **state)
    log.warning(
        "Stopped after epoch %d; saved %s. Run the same experiment again to resume (train.resume=auto).",
        state["epoch"],
        path,
    )


def discard(path: Path) -> None:
    """A finished run leaves nothing to resume."""
    path.unlink(missing_ok=True)
