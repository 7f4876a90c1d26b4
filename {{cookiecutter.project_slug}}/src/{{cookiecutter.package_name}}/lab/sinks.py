"""Extra sinks beside MLflow: TensorBoard event files and Weights & Biases in offline mode.

``tracking.sinks`` lists them (``[]``, ``[tensorboard]``, ``[wandb]`` or both). Each receives
the same params, provenance tags and metrics as the MLflow run, and is named after it; MLflow
stays the record that ``verify`` and ``reproduce`` read. Neither package is a dependency:
``pip install tensorboard`` or ``pip install wandb`` adds one. W&B runs offline (files under
``wandb/``); ``wandb sync wandb/offline-run-*`` uploads them when you want them online.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ..errors import UserError

SINKS = {"tensorboard": "tensorboard", "wandb": "wandb"}  # sink -> the package it needs
TENSORBOARD_DIR = Path("tensorboard")


class Sinks:
    """The extra sinks of one MLflow run."""

    def __init__(
        self, names: list[str], run_name: str, run_id: str, params: dict[str, str], tags: dict[str, str]
    ):
        self._writers = []
        for name in names:
            if importlib.util.find_spec(SINKS[name]) is None:
                raise UserError(
                    f"tracking.sinks includes {name}, but the {SINKS[name]} package is not installed: "
                    f"pip install {SINKS[name]}, or remove it from tracking.sinks."
                )
        if "tensorboard" in names:
            self._writers.append(_TensorBoard(run_name, run_id, params, tags))
        if "wandb" in names:
            self._writers.append(_WandB(run_name, run_id, params, tags))

    def log_metrics(self, metrics: dict[str, float], step: int | None) -> None:
        for writer in self._writers:
            writer.log_metrics(metrics, step)

    def close(self) -> None:
        for writer in self._writers:
            writer.close()


def _table(values: dict[str, str]) -> str:
    """A markdown table, which TensorBoard's text tab renders."""
    return "| key | value |\n|---|---|\n" + "\n".join(
        f"| {key} | {value} |" for key, value in sorted(values.items())
    )


class _TensorBoard:
    def __init__(self, run_name: str, run_id: str, params: dict[str, str], tags: dict[str, str]):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(TENSORBOARD_DIR / f"{run_name}-{run_id[:8]}"))
        self.writer.add_text("params", _table(params))
        self.writer.add_text("provenance", _table(tags | {"mlflow.run_id": run_id}))

    def log_metrics(self, metrics: dict[str, float], step: int | None) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step)

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, run_name: str, run_id: str, params: dict[str, str], tags: dict[str, str]):
        import wandb

        # Offline unless the user chose otherwise: no account or network needed to record.
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(
            project=params.get("tracking.experiment_name"),
            name=run_name,
            id=run_id,  # the MLflow run id, so that the two records point at each other
            config=params | {"provenance": tags},
            reinit="create_new",
        )

    def log_metrics(self, metrics: dict[str, float], step: int | None) -> None:
        # W&B steps must increase; metrics without a step (the run's summary) go to the summary.
        if step is None:
            self.run.summary.update(metrics)
        else:
            self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()
