"""Automatic preprocessing choices, derived from the dataset fingerprint (nnU-Net's rules).

Each choice is a config value that is either explicit or ``auto``:
- ``data.pixdim``: the median spacing; along a strongly anisotropic axis (more than
  ANISOTROPY times the finest one) the 10th percentile of that axis instead, so that the few
  thin-slice cases are not thrown away by resampling them to the coarse median.
- ``data.normalization``: ``ct`` for a CT modality (clip to the 0.5/99.5 percentiles of the
  dataset's foreground, then z-score with its foreground mean and std: Hounsfield units mean
  the same in every scan), ``zscore`` otherwise (per image and channel: MRI units differ from
  scan to scan), or ``window`` (``data.intensity.a_min``/``a_max`` mapped to [0, 1]).
- ``patch_size``: the median preprocessed shape, rounded down to a multiple of
  PATCH_MULTIPLE, then shrunk along its longest edge until it fits ``patch_voxels``.
"""

from __future__ import annotations

import math

import numpy as np
from omegaconf import DictConfig, OmegaConf

from ..errors import UserError

ANISOTROPY = 3.0
# Every network in conf/model downsamples three times by 2: a patch edge divisible by 16
# keeps every level whole.
PATCH_MULTIPLE = 16
WORLD_AXIS = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}


def target_spacing(setting: object, fingerprint: dict, orientation: str) -> list[float]:
    """``data.pixdim``: explicit, or ``auto`` from the cases' spacings (in ``orientation``'s axes)."""
    if setting != "auto":
        return [float(value) for value in _explicit(setting, "data.pixdim", float)]
    order = [WORLD_AXIS[code] for code in orientation.upper()]
    spacings = np.array([case["spacing"] for case in fingerprint["cases"]])[:, order]
    target = np.median(spacings, axis=0)
    coarse = int(np.argmax(target))
    finest_other = max(np.delete(target, coarse))
    if target[coarse] > ANISOTROPY * finest_other:
        target[coarse] = max(np.percentile(spacings[:, coarse], 10), finest_other)
    return [round(float(value), 4) for value in target]


def normalization(data: DictConfig, fingerprint: dict) -> dict:
    """``data.normalization`` resolved: ``{"kind": ...}`` plus what that kind needs."""
    kind = data.normalization
    if kind == "auto":
        kind = "ct" if any(name.upper() == "CT" for name in fingerprint["modality"]) else "zscore"
    if kind == "window":
        return {"kind": "window", "a_min": float(data.intensity.a_min), "a_max": float(data.intensity.a_max)}
    if kind == "zscore":
        return {"kind": "zscore"}
    channels = [
        {"lower": c["p00_5"], "upper": c["p99_5"], "mean": c["mean"], "std": max(c["std"], 1e-8)}
        for c in fingerprint["foreground_intensity"]
    ]
    return {"kind": "ct", "channels": channels}


def patch_size(setting: object, median_shape: list[int], voxel_budget: int) -> list[int]:
    """``patch_size``: explicit, or ``auto`` from the median preprocessed shape and the budget."""
    if setting != "auto":
        return _explicit(setting, "patch_size", int)
    patch = [max(PATCH_MULTIPLE, edge // PATCH_MULTIPLE * PATCH_MULTIPLE) for edge in median_shape]
    while math.prod(patch) > voxel_budget and max(patch) > PATCH_MULTIPLE:
        patch[patch.index(max(patch))] -= PATCH_MULTIPLE
    return patch


def describe(values: list[float]) -> str:
    """``[0.8, 0.8, 4.0]`` as ``0.8x0.8x4``: one column in `dvc exp show`."""
    return "x".join(f"{value:g}" for value in values)


def _explicit(setting: object, key: str, kind: type) -> list:
    values = OmegaConf.to_object(setting) if OmegaConf.is_config(setting) else setting
    if not (isinstance(values, list) and len(values) == 3 and all(_positive(v, kind) for v in values)):
        raise UserError(
            f"`{key}` must be auto or three positive numbers, got {values!r}; e.g. -S '{key}=auto'."
        )
    return [kind(value) for value in values]


def _positive(value: object, kind: type) -> bool:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and value > 0 and (kind is float or isinstance(value, int))
