"""Scoring the test cases: Dice and HD95 per case and class (MONAI's metrics), and their means.

The evaluate stage scores one model; `ensemble` scores several combined. Both give
``score_cases`` a function from a batch of prepared volumes to per-class scores (logits or
probabilities: only their argmax counts), so that a model and an ensemble are scored alike.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable

import torch
from monai.data import decollate_batch
from monai.metrics import DiceMetric, HausdorffDistanceMetric
from monai.transforms import AsDiscrete

from ..progress import track
from .overlays import OverlaySlice

# MONAI's own HausdorffDistanceMetric passes get_mask_edges an argument that MONAI itself
# deprecates; the warning is about MONAI's internals, not about anything set here.
warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)


def score_cases(
    segment: Callable[[torch.Tensor], torch.Tensor],
    test_data: Iterable[dict],
    class_names: list[str],
    spacing: list[float],
    hd_percentile: float,
    device: torch.device,
) -> tuple[list[dict], dict[str, OverlaySlice]]:
    """Per test case: {"case", "dice_<class>", "hd<p>_<class>"}; and each case's overlay slice."""
    num_classes = len(class_names) + 1  # and the background
    to_pred = AsDiscrete(argmax=True, to_onehot=num_classes)
    to_label = AsDiscrete(to_onehot=num_classes)
    dice = DiceMetric(include_background=False, reduction="none")
    hausdorff = HausdorffDistanceMetric(include_background=False, percentile=hd_percentile, reduction="none")
    rows, views = [], {}
    for batch in track(test_data, "evaluate"):
        images, labels = batch["image"].to(device), batch["label"].to(device)
        scores = segment(images)
        predictions = [to_pred(item) for item in decollate_batch(scores)]
        truths = [to_label(item) for item in decollate_batch(labels)]
        case_dice = dice(predictions, truths)[0].tolist()
        case_hd = hausdorff(predictions, truths, spacing=spacing)[0].tolist()
        name = batch["name"][0]
        rows.append(
            {"case": name}
            | {f"dice_{n}": d for n, d in zip(class_names, case_dice, strict=True)}
            | {f"hd{hd_percentile}_{n}": h for n, h in zip(class_names, case_hd, strict=True)}
        )
        # One slice per case is kept, so that the cases worth a picture can be chosen at the end.
        views[name] = OverlaySlice.of(
            name, images[0, 0].cpu().numpy(), labels[0, 0].cpu().numpy(), scores[0].argmax(0).cpu().numpy()
        )
    return rows, views


def finite_mean(values: list[float]) -> float:
    """Mean of the finite values; NaN when there are none (e.g. every mask empty)."""
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def summarise(rows: list[dict], class_names: list[str], percentile: float) -> dict:
    """Mean over cases per class, then over classes; NaN (empty masks) is left out and kept None."""

    def mean(values: list[float]) -> float | None:
        value = finite_mean(values)
        return None if math.isnan(value) else value

    summary: dict[str, float | None] = {}
    for prefix in ("dice", f"hd{percentile}"):
        per_class = {f"{prefix}_{n}": mean([row[f"{prefix}_{n}"] for row in rows]) for n in class_names}
        summary[f"{prefix}_mean"] = mean([v for v in per_class.values() if v is not None])
        summary |= per_class
    return summary
