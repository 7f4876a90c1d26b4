"""PNG overlays of prediction and ground truth, for a quick look at test cases."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save_overlay(path: Path, image: np.ndarray, label: np.ndarray, prediction: np.ndarray) -> None:
    """Axial slice with the most foreground: image, truth contours (green), prediction (red)."""
    depth = int(np.argmax((label > 0).sum(axis=(0, 1)))) if label.any() else image.shape[2] // 2
    figure, axis = plt.subplots(figsize=(4, 4), dpi=100)
    axis.imshow(image[:, :, depth].T, cmap="gray", origin="lower")
    if label[:, :, depth].any():
        axis.contour(label[:, :, depth].T, levels=[0.5], colors="lime", linewidths=1)
    if prediction[:, :, depth].any():
        axis.contour(prediction[:, :, depth].T, levels=[0.5], colors="red", linewidths=1)
    axis.set_title(f"{path.stem}  z={depth}  truth=green  prediction=red", fontsize=8)
    axis.axis("off")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, bbox_inches="tight")
    plt.close(figure)
