"""PNG overlays of ground truth and prediction for a quick look at test cases: one colour per
class, with a legend, for the worst, the median and the best case by Dice."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

PALETTE = plt.get_cmap("tab10").colors


@dataclass(frozen=True)
class OverlaySlice:
    """The axial slice of a case worth looking at: where its truth has the most foreground."""

    case: str
    depth: int
    image: np.ndarray
    label: np.ndarray
    prediction: np.ndarray

    @classmethod
    def of(cls, case: str, image: np.ndarray, label: np.ndarray, prediction: np.ndarray) -> OverlaySlice:
        depth = int(np.argmax((label > 0).sum(axis=(0, 1)))) if label.any() else image.shape[2] // 2
        return cls(case, depth, image[:, :, depth], label[:, :, depth], prediction[:, :, depth])


def ranked_picks(scores: dict[str, float], count: int) -> dict[str, str]:
    """Up to ``count`` cases spread evenly from the worst score to the best: name -> role."""
    ranked = sorted((score, case) for case, score in scores.items() if np.isfinite(score))
    if not ranked or count <= 0:
        return {}
    positions = sorted({round(i * (len(ranked) - 1) / max(count - 1, 1)) for i in range(count)})
    if len(ranked) == 1:
        return {ranked[0][1]: "only"}
    roles = {}
    for position in positions:
        role = "worst" if position == 0 else "best" if position == len(ranked) - 1 else "median"
        if role == "median" and position != (len(ranked) - 1) // 2:
            role = f"rank{position + 1}"
        roles[ranked[position][1]] = role
    return roles


def save_overlay(path: Path, view: OverlaySlice, classes: dict[int, str], title: str) -> None:
    """Truth and prediction side by side, each class filled in its colour, with a legend."""
    colours = ListedColormap([PALETTE[(index - 1) % len(PALETTE)] for index in sorted(classes)])
    figure, axes = plt.subplots(1, 2, figsize=(7, 3.8), dpi=100)
    for axis, mask, name in ((axes[0], view.label, "truth"), (axes[1], view.prediction, "prediction")):
        axis.imshow(view.image.T, cmap="gray", origin="lower")
        shown = np.ma.masked_equal(mask.T, 0)
        axis.imshow(
            shown, cmap=colours, vmin=min(classes) - 0.5, vmax=max(classes) + 0.5, alpha=0.45, origin="lower"
        )
        axis.set_title(name, fontsize=9)
        axis.axis("off")
    legend = [
        Patch(color=PALETTE[(index - 1) % len(PALETTE)], label=name)
        for index, name in sorted(classes.items())
    ]
    figure.legend(handles=legend, loc="lower center", ncol=min(len(legend), 5), fontsize=8, frameon=False)
    figure.suptitle(f"{title}  z={view.depth}", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, bbox_inches="tight")
    plt.close(figure)
