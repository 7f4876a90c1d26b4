"""The automatic choices: target spacing, normalisation and patch size from a fingerprint."""

from __future__ import annotations

import math

import numpy as np
import pytest
from omegaconf import OmegaConf


@pytest.fixture
def planning(package_module):
    return package_module("data.planning")


def fingerprint(spacings: list[tuple[float, float, float]], modality: tuple[str, ...] = ("MRI",)) -> dict:
    return {
        "modality": list(modality),
        "cases": [{"spacing": list(spacing)} for spacing in spacings],
        "foreground_intensity": [
            {"p00_5": -80.0, "p50": 60.0, "p99_5": 210.0, "mean": 62.0, "std": 40.0} for _ in modality
        ],
    }


def data(**values: object):
    defaults = {"normalization": "auto", "intensity": {"a_min": -175.0, "a_max": 250.0}}
    return OmegaConf.create(defaults | values)


def test_isotropic_spacing_resolves_to_the_median(planning) -> None:
    spacings = [(1.0, 1.0, 1.2), (0.8, 0.9, 1.0), (1.2, 1.1, 1.4)]
    assert planning.target_spacing("auto", fingerprint(spacings), "RAS") == [1.0, 1.0, 1.2]


def test_strongly_anisotropic_axis_takes_its_tenth_percentile(planning) -> None:
    z = [3.0, 3.5, 4.0, 4.0, 4.5, 5.0, 5.0]
    spacings = [(0.8, 0.8, value) for value in z]
    resolved = planning.target_spacing("auto", fingerprint(spacings), "RAS")
    assert resolved[:2] == [0.8, 0.8]
    assert resolved[2] == pytest.approx(np.percentile(z, 10), abs=1e-4)
    assert resolved[2] < np.median(z)


def test_spacing_follows_the_target_orientations_axis_order(planning) -> None:
    spacings = [(0.7, 0.8, 2.0)] * 3  # along R-L, A-P, S-I
    assert planning.target_spacing("auto", fingerprint(spacings), "SPL") == [2.0, 0.8, 0.7]


def test_explicit_spacing_is_kept_and_a_bad_one_named(planning, user_error) -> None:
    assert planning.target_spacing([1.5, 1.5, 2], fingerprint([(1, 1, 1)]), "RAS") == [1.5, 1.5, 2.0]
    with pytest.raises(user_error, match="data.pixdim"):
        planning.target_spacing([1.5, 0], fingerprint([(1, 1, 1)]), "RAS")


@pytest.mark.parametrize(
    ("modality", "kind"), [(("CT",), "ct"), (("MRI",), "zscore"), (("T1", "T2"), "zscore")]
)
def test_auto_normalization_follows_the_modality(planning, modality: tuple, kind: str) -> None:
    resolved = planning.normalization(data(), fingerprint([(1, 1, 1)], modality))
    assert resolved["kind"] == kind


def test_ct_normalization_carries_the_foreground_statistics(planning) -> None:
    resolved = planning.normalization(data(normalization="ct"), fingerprint([(1, 1, 1)], ("CT",)))
    assert resolved["channels"] == [{"lower": -80.0, "upper": 210.0, "mean": 62.0, "std": 40.0}]


def test_window_normalization_is_the_explicit_window(planning) -> None:
    resolved = planning.normalization(data(normalization="window"), fingerprint([(1, 1, 1)]))
    assert resolved == {"kind": "window", "a_min": -175.0, "a_max": 250.0}


def test_auto_patch_fits_the_budget_in_multiples_of_sixteen(planning) -> None:
    patch = planning.patch_size("auto", [200, 180, 70], voxel_budget=96**3)
    assert math.prod(patch) <= 96**3
    assert all(edge % planning.PATCH_MULTIPLE == 0 and edge >= 16 for edge in patch)
    assert patch[2] == 64, "the short axis keeps its extent while the long ones shrink"


def test_auto_patch_is_the_median_shape_when_it_fits(planning) -> None:
    assert planning.patch_size("auto", [48, 48, 48], voxel_budget=48**3) == [48, 48, 48]
    assert planning.patch_size("auto", [40, 40, 10], voxel_budget=48**3) == [32, 32, 16]


def test_explicit_patch_is_kept(planning) -> None:
    assert planning.patch_size([64, 64, 32], [200, 200, 200], voxel_budget=1) == [64, 64, 32]
