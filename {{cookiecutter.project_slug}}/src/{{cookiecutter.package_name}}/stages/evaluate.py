"""Stage evaluate: sliding-window inference on the test split; Dice and HD95 per class."""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path

import mlflow
import pandas as pd
import torch
from monai.data import decollate_batch
from monai.metrics import DiceMetric, HausdorffDistanceMetric
from monai.transforms import AsDiscrete
from omegaconf import DictConfig

from .. import lab
from ..data import planning
from ..data.loaders import Caching, eval_loader, read_plan
from ..data.msd import read_msd
from ..evaluation.overlays import OverlaySlice, ranked_picks, save_overlay
from ..model.networks import build_model
from ..paths import EVALUATE_METRICS, FINGERPRINT, MODELS, PROCESSED, REPORTS, TRAIN_METRICS
from ..progress import track
from ..training.acceleration import Acceleration
from ..training.engine import configure_runtime, select_device, sliding_window_logits

log = logging.getLogger(__name__)
# MONAI's own HausdorffDistanceMetric passes get_mask_edges an argument that MONAI itself
# deprecates; the warning is about MONAI's internals, not about anything set here.
warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)


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

    to_pred = AsDiscrete(argmax=True, to_onehot=dataset.num_classes)
    to_label = AsDiscrete(to_onehot=dataset.num_classes)
    dice = DiceMetric(include_background=False, reduction="none")
    hausdorff = HausdorffDistanceMetric(
        include_background=False, percentile=params.evaluate.hd_percentile, reduction="none"
    )
    rows, views = [], {}
    test_data = eval_loader(processed, "test", params.data.fold, Caching.of(params), plan["size_mb"], device)
    for batch in track(test_data, "evaluate"):
        images, labels = batch["image"].to(device), batch["label"].to(device)
        logits = sliding_window_logits(model, images, patch, params.evaluate.overlap, acceleration)
        predictions = [to_pred(item) for item in decollate_batch(logits)]
        truths = [to_label(item) for item in decollate_batch(labels)]
        case_dice = dice(predictions, truths)[0].tolist()
        case_hd = hausdorff(predictions, truths, spacing=spacing)[0].tolist()
        name = batch["name"][0]
        rows.append(
            {"case": name}
            | {f"dice_{n}": d for n, d in zip(names, case_dice, strict=True)}
            | {f"hd{params.evaluate.hd_percentile}_{n}": h for n, h in zip(names, case_hd, strict=True)}
        )
        # One slice per case is kept, so that the cases worth a picture can be chosen at the end.
        views[name] = OverlaySlice.of(
            name, images[0, 0].cpu().numpy(), labels[0, 0].cpu().numpy(), logits[0].argmax(0).cpu().numpy()
        )
    metrics = _summarise(rows, names, params.evaluate.hd_percentile)
    case_dice = {row["case"]: _mean([row[f"dice_{n}"] for n in names]) for row in rows}
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


def _mean(values: list[float]) -> float:
    """Mean of the finite values; NaN when there are none (e.g. every mask empty)."""
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _summarise(rows: list[dict], names: list[str], percentile: int) -> dict:
    """Mean over cases per class, then over classes; NaN (empty masks) is left out and kept None."""

    def mean(values: list[float]) -> float | None:
        value = _mean(values)
        return None if math.isnan(value) else value

    summary: dict[str, float | None] = {}
    for prefix in ("dice", f"hd{percentile}"):
        per_class = {f"{prefix}_{n}": mean([row[f"{prefix}_{n}"] for row in rows]) for n in names}
        summary[f"{prefix}_mean"] = mean([v for v in per_class.values() if v is not None])
        summary |= per_class
    return summary
