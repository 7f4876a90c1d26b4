"""``cv``: k-fold cross-validation, one queued DVC experiment per fold, and its summary.

`cv` composes conf/ as `dvc exp run` would (with the same ``-S`` overrides), queues one
experiment per fold (``-S data.fold=0`` ... ``data.folds - 1``), runs the queue and prints the
summary. Every fold is an ordinary experiment in `dvc exp show` and ordinary MLflow runs, whose
``cv.group`` tag (the hash of the params without ``data.fold``) ties the folds of one
configuration together. The summary gives per fold, and as mean ± sd over the folds, the
validation Dice of each fold's best epoch and the test Dice, per class; it is logged as an
MLflow run that lists its fold runs.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from ..config import schema
from ..errors import UserError
from . import provenance, queue
from .tracking import tracking_uri

log = logging.getLogger(__name__)


def cv(root: Path, jobs: int, fixed: list[str], summary_only: bool, group: str | None) -> pd.DataFrame:
    """Run every fold of the configuration (unless ``summary_only``), then summarise its folds."""
    params = composed(root, fixed)
    group = group or provenance.cv_group(params)
    if not summary_only:
        folds = params.data.folds
        prefix = f"cv-{group[:6]}-{time.strftime('%m%d-%H%M%S')}"
        for fold in range(folds):
            overrides = [*fixed, f"data.fold={fold}"]
            queue.dvc(
                root, "exp", "run", "--queue", "--name", f"{prefix}-fold{fold}", *queue.set_args(overrides)
            )
        log.info(
            "Queued %d folds as %s-fold0..%d (cv.group %s); running %d at a time",
            folds,
            prefix,
            folds - 1,
            group,
            jobs,
        )
        queue.dvc(root, "exp", "run", "--run-all", "--jobs", str(jobs), check=False)
    return summarise(root, group, params.data.folds)


def composed(root: Path, overrides: list[str]) -> DictConfig:
    """conf/ composed with ``overrides`` exactly as `dvc exp run -S ...` composes params.yaml."""
    # Imported here: `predict --model cv:<group>` reads this module's latest_per_fold, not DVC.
    from dvc.utils.hydra import compose_and_dump

    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "params.yaml"
        try:
            compose_and_dump(output, str(root / "conf"), None, "config", str(root / "src"), overrides)
        except Exception as error:  # Hydra's override and config errors come in several types
            raise UserError(f"Cannot compose conf/ with {overrides}: {error}") from error
        params = OmegaConf.load(output)
    schema.check(params, f"conf/ composed with {overrides}")  # a bad -S stops before anything is queued
    return params


def summarise(root: Path, group: str, folds: int) -> pd.DataFrame:
    """Per fold and over folds: best-epoch validation Dice and test Dice per class; logged to MLflow."""
    client = mlflow.MlflowClient(tracking_uri(root))
    evaluations = latest_per_fold(client, group, "evaluate")
    if not evaluations:
        raise UserError(
            f"No finished evaluate run has cv.group {group} in {client.tracking_uri}; run `cv` "
            "first, with the same -S overrides, or give --group."
        )
    rows = {fold: _scores(client, run) for fold, run in evaluations.items()}
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis("fold")
    missing = sorted(set(range(folds)) - set(rows))
    table.loc["mean"] = table.mean()
    table.loc["sd"] = table.drop(index="mean").std(ddof=1) if len(rows) > 1 else np.nan
    text = _report(table, group, missing)
    print(text)
    _log(client, evaluations, group, table, text)
    return table


def latest_per_fold(client: mlflow.MlflowClient, group: str, stage: str) -> dict[int, mlflow.entities.Run]:
    """The newest finished ``stage`` run (train or evaluate) of each fold of ``group``, by fold."""
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    runs = client.search_runs(
        experiments,
        f"tags.`cv.group` = '{group}' and tags.stage = '{stage}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )
    latest: dict[int, mlflow.entities.Run] = {}
    for run in runs:
        latest.setdefault(int(run.data.tags["cv.fold"].split("/")[0]), run)
    return dict(sorted(latest.items()))


def _scores(client: mlflow.MlflowClient, evaluation: mlflow.entities.Run) -> dict[str, float]:
    """val_dice_* at the train run's best epoch and test_dice_*, from the fold's two runs."""
    train_id = evaluation.data.tags["mlflow.parentRunId"]
    best_epoch = int(client.get_run(train_id).data.metrics["best_epoch"])
    scores = {}
    classes = sorted(
        key.removeprefix("test_dice_") for key in evaluation.data.metrics if key.startswith("test_dice_")
    )
    for name in classes:
        key = "val_dice" if name == "mean" else f"val_dice_{name}"
        history = client.get_metric_history(train_id, key)
        scores[f"val_dice_{name}"] = next((m.value for m in history if m.step == best_epoch), np.nan)
    # A class with an empty mask in every case has no score (no metric logged): NaN here.
    return scores | {
        f"test_dice_{name}": evaluation.data.metrics.get(f"test_dice_{name}", np.nan) for name in classes
    }


def _report(table: pd.DataFrame, group: str, missing: list[int]) -> str:
    folds = table.drop(index=["mean", "sd"])
    lines = [f"Cross-validation of cv.group {group}: {len(folds)} fold(s)"]
    if missing:
        lines.append(f"Folds without a finished evaluate run: {', '.join(map(str, missing))}")
    lines += ["", table.to_string(float_format=lambda value: f"{value:.4f}"), ""]
    for column in table.columns:
        lines.append(f"{column}: {table.at['mean', column]:.4f} ± {table.at['sd', column]:.4f}")
    return "\n".join(lines) + "\n"


def _log(
    client: mlflow.MlflowClient,
    evaluations: dict[int, mlflow.entities.Run],
    group: str,
    table: pd.DataFrame,
    text: str,
) -> None:
    """The summary as an MLflow run beside its folds, tagged with their evaluate runs' ids."""
    first = next(iter(evaluations.values()))
    tags = {
        "stage": "cv",
        "cv.group": group,
        "cv.runs": ",".join(run.info.run_id for run in evaluations.values()),
    }
    run = client.create_run(first.info.experiment_id, tags=tags, run_name=f"cv {group}")
    for statistic in ("mean", "sd"):
        for column, value in table.loc[statistic].items():
            if np.isfinite(value):
                client.log_metric(run.info.run_id, f"{column}_{statistic}", float(value))
    client.log_text(run.info.run_id, text, "cv.md")
    client.set_terminated(run.info.run_id)
    log.info("Logged to MLflow run %s (cv.md)", run.info.run_id)
