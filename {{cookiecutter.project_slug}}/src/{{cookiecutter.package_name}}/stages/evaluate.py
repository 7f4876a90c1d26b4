"""Stage evaluate: sliding-window inference on the test split; Dice and HD95 per class."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import mlflow
import pandas as pd
import torch
from omegaconf import DictConfig

from .. import lab
from ..data import planning
from ..data.loaders import Caching, eval_loader, read_plan
from ..data.msd import read_msd
from ..evaluation.overlays import ranked_picks, save_overlay
from ..evaluation.scoring import finite_mean, score_cases, summarise
from ..model.networks import build_model
from ..paths import EVALUATE_METRICS, FINGERPRINT, MODELS, PROCESSED, REPORTS, TRAIN_METRICS
from ..training.acceleration import Acceleration
from ..training.engine import configure_runtime, select_device, sliding_window_logits

log = logging.getLogger(__name__)


def run(params: DictConfig, workdir: Path) -> None:
    configure_runtime(params.trainer, params.seed)
    device = select_device(params.trainer)
    acceleration = Acceleration.resolve(params.trainer, device)
    processed = workdir / PROCESSED
    dataset = read_msd(processed)
    plan = read_plan(processed)
    patch = planning.patch_size(params.patch_size, plan["median_shape"], params.patch_voxels)
    spacing = plan["preprocessing"]["pixdim"]
    model = build_model(params.model, dataset.in_channels, dataset.num_classes).to(device)
    checkpoint = torch.load(workdir / MODELS / "best.pt", map_location=device, weights_only=True)
    model.load_state_dict(checkpoint["model"])
    model.eval()
    train_run_id = json.loads((workdir / TRAIN_METRICS).read_text())["mlflow_run_id"]
    names = list(dataset.foreground.values())

    test_data = eval_loader(processed, "test", params.data.fold, Caching.of(params), plan["size_mb"], device)
    rows, views = score_cases(
        lambda images: sliding_window_logits(model, images, patch, params.evaluate.overlap, acceleration),
        test_data,
        names,
        spacing,
        params.evaluate.hd_percentile,
        device,
    )
    metrics = summarise(rows, names, params.evaluate.hd_percentile)
    case_dice = {row["case"]: finite_mean([row[f"dice_{n}"] for n in names]) for row in rows}
    for case, role in ranked_picks(case_dice, params.evaluate.overlays).items():
        title = f"{role}: {case}, Dice {case_dice[case]:.3f}"
        save_overlay(
            workdir / REPORTS / "overlays" / f"{role}-{case}.png", views[case], dataset.foreground, title
        )

    with lab.start_run(
        params,
        "evaluate",
        workdir,
        [params.data.dir, str(FINGERPRINT), str(PROCESSED), str(MODELS)],
        parent_run_id=train_run_id,
        resolved={"resolved.patch_size": planning.describe(patch)},
    ) as run:
        # How many cases the scores average over, beside them in MLflow and in `dvc exp show`.
        scored = {"test_cases": len(rows)}
        # Which fold's model scored them, and the configuration its folds share (`cv --summary`).
        fold = {"fold": params.data.fold, "cv_group": lab.cv_group(params)}
        lab.log_metrics(
            {f"test_{key}": value for key, value in metrics.items() if value is not None} | scored
        )
        (workdir / REPORTS).mkdir(parents=True, exist_ok=True)  # also when evaluate.overlays is 0
        pd.DataFrame(rows).to_csv(workdir / REPORTS / "per_case.csv", index=False)
        mlflow.log_artifacts(str(workdir / REPORTS), "reports")
        lab.register(params, train_run_id, run.info.run_id, metrics)
        lab.write_run_metrics(workdir / EVALUATE_METRICS, run.info.run_id, metrics | scored | fold)
    dice_mean = "n/a" if metrics["dice_mean"] is None else f"{metrics['dice_mean']:.4f}"
    log.info("Test dice_mean %s (%d cases), run %s", dice_mean, len(rows), run.info.run_id)
