"""The dataset fingerprint: what the automatic preprocessing choices are derived from.

Like nnU-Net's and MONAI Auto3DSeg's, it summarises the raw cases: per case the grid (shape,
spacing, orientation), per channel the intensities of sampled foreground voxels, per class the
voxel counts. Each case is read once; shapes and spacings are given along the world axes
(R-L, A-P, S-I), whatever the order of the voxel axes in the file.
"""

from __future__ import annotations

import zlib

import nibabel as nib
import numpy as np

from ..errors import UserError
from .msd import MsdDataset

# Foreground voxels sampled per case for the intensity statistics (nnU-Net samples 10,000).
SAMPLES_PER_CASE = 10_000
PERCENTILES = {"p00_5": 0.5, "p50": 50.0, "p99_5": 99.5}
# How far (mm) an image's and its label's voxel-to-world affines may differ: float32 headers
# round, a misplaced label is off by a voxel or more.
AFFINE_TOLERANCE_MM = 1e-3


def read_case(path: str) -> tuple[nib.Nifti1Image, np.ndarray]:
    """The NIfTI header and its voxels, read once; a clear error for an unreadable file."""
    try:
        image = nib.load(path)
        return image, np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel, gzip and zlib raise many types for a bad file
        raise UserError(f"Could not read {path}: {error}. Replace or remove this case.") from error


def in_world_axes(values: tuple[float, ...], affine: np.ndarray) -> list[float]:
    """Per-voxel-axis ``values`` reordered along the world axes (R-L, A-P, S-I)."""
    world_axis = nib.orientations.io_orientation(affine)[:, 0].astype(int)
    ordered = [0.0, 0.0, 0.0]
    for voxel_axis, axis in enumerate(world_axis):
        ordered[axis] = float(values[voxel_axis])
    return ordered


def fingerprint_case(case: dict[str, str], dataset: MsdDataset, seed: int) -> dict:
    """One case's grid, sampled foreground intensities per channel and class voxel counts."""
    image, voxels = read_case(case["image"])
    label_image, labels = read_case(case["label"])
    voxels, labels = voxels.astype(np.float32, copy=False), labels.astype(np.int64, copy=False)
    num_classes, in_channels = dataset.num_classes, dataset.in_channels
    voxels = voxels[..., None] if voxels.ndim == 3 else voxels  # channels last, as MSD stores them
    if voxels.ndim != 4 or voxels.shape[3] != in_channels:
        raise UserError(
            f"{case['image']} has shape {voxels.shape}; dataset.json's `modality` lists {in_channels} "
            f"channel(s). Images must be 3D, or 4D with the channels last."
        )
    if voxels.shape[:3] != labels.shape:
        raise UserError(
            f"{case['label']} has shape {labels.shape}, but its image {case['image']} has "
            f"{voxels.shape[:3]}; image and label must cover the same grid."
        )
    if not np.allclose(image.affine, label_image.affine, rtol=0, atol=AFFINE_TOLERANCE_MM):
        raise UserError(
            f"{case['label']} lies elsewhere in space than its image {case['image']}: their "
            f"affines differ (label {label_image.affine.round(3).tolist()}, image "
            f"{image.affine.round(3).tolist()}); image and label must cover the same grid."
        )
    if labels.min() < 0 or labels.max() >= num_classes:
        outside = int(labels.min()) if labels.min() < 0 else int(labels.max())
        raise UserError(
            f"{case['label']} contains label {outside}, but dataset.json names only "
            f"{num_classes} classes (0..{num_classes - 1}); add it to `labels` or fix the file."
        )
    foreground = voxels[labels > 0]  # (voxels, channels)
    rng = np.random.default_rng([seed, zlib.crc32(case["name"].encode())])  # any worker, same sample
    if len(foreground) > SAMPLES_PER_CASE:
        foreground = foreground[rng.choice(len(foreground), SAMPLES_PER_CASE, replace=False)]
    return {
        "name": case["name"],
        "shape": in_world_axes(labels.shape, image.affine),
        "spacing": in_world_axes(tuple(nib.affines.voxel_sizes(image.affine)), image.affine),
        "orientation": "".join(nib.aff2axcodes(image.affine)),
        "foreground_samples": foreground,
        "class_voxels": np.bincount(labels.ravel(), minlength=num_classes).tolist(),
    }


def summarise(dataset: MsdDataset, cases: list[dict]) -> dict:
    """The fingerprint: per case, per channel and per class summaries (JSON-ready)."""
    samples = np.concatenate([case.pop("foreground_samples") for case in cases])
    channels = []
    for index, name in enumerate(dataset.channel_names):
        values = samples[:, index].astype(np.float64)
        if values.size == 0:
            raise UserError(f"{dataset.root}: no case has a foreground voxel; check labelsTr/.")
        stats = {key: float(np.percentile(values, q)) for key, q in PERCENTILES.items()}
        channels.append({"name": name, **stats, "mean": float(values.mean()), "std": float(values.std())})
    counts = np.sum([case["class_voxels"] for case in cases], axis=0)
    return {
        "dataset": dataset.name,
        "modality": dataset.channel_names,
        "num_cases": len(cases),
        "axes": "shape and spacing along the world axes R-L, A-P, S-I",
        "cases": cases,
        "foreground_intensity": channels,
        "class_frequency": {
            name: float(counts[index] / counts.sum()) for index, name in dataset.labels.items()
        },
    }
