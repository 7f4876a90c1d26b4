"""Preprocessing transforms on a real anisotropic NIfTI: orientation, crop, spacing, normalisation, labels."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

SHAPE = (10, 20, 20)
SPACING = (2.0, 1.0, 1.0)
ORIGIN = (10.0, 20.0, -5.0)


@pytest.fixture
def transforms(package_module):
    return package_module("data.transforms")


def write_case(folder: Path) -> dict[str, str]:
    """An image/label pair on a 2x1x1 mm grid whose first two axes run towards L and P."""
    affine = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
    affine[:3, 3] = ORIGIN
    image = np.linspace(-1000.0, 1000.0, np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[2:6, 4:12, 4:12] = 1
    label[7:10, 13:18, 13:18] = 2  # one voxel apart from region 1
    nib.save(nib.Nifti1Image(image, affine), folder / "image.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), folder / "label.nii.gz")
    return {"image": str(folder / "image.nii.gz"), "label": str(folder / "label.nii.gz")}


WINDOW = {"kind": "window", "a_min": -175.0, "a_max": 250.0}


def preprocessing(pixdim: tuple[float, ...] = (1.0, 1.0, 1.0), normalization: dict | None = None) -> dict:
    """What the preprocess stage resolves from data.* and the fingerprint."""
    return {"orientation": "RAS", "pixdim": list(pixdim), "normalization": normalization or WINDOW}


@pytest.mark.parametrize("pixdim", [(1.5, 1.5, 2.0), (1.0, 1.0, 1.0)])
def test_preprocess_resamples_to_pixdim_in_ras(transforms, tmp_path: Path, pixdim: tuple) -> None:
    item = transforms.preprocess_transforms(preprocessing(pixdim))(write_case(tmp_path))
    for key in ("image", "label"):
        affine = item[key].affine.numpy()
        # Orientation RAS: axes point along +x, +y, +z with the configured spacing.
        np.testing.assert_allclose(affine[:3, :3], np.diag(pixdim), atol=1e-6)
        # The first voxel centre is the old corner at the R/A end: the same physical space.
        expected_origin = [
            ORIGIN[0] - (SHAPE[0] - 1) * SPACING[0],
            ORIGIN[1] - (SHAPE[1] - 1) * SPACING[1],
            ORIGIN[2],
        ]
        np.testing.assert_allclose(affine[:3, 3], expected_origin, atol=1e-6)
        extent = (np.array(SHAPE) - 1) * np.array(SPACING)
        shape = np.array(item[key].shape[1:])
        assert item[key].shape[0] == 1
        assert np.all(np.abs(shape - (extent / np.array(pixdim) + 1)) <= 1), shape
    assert item["image"].shape == item["label"].shape


def test_preprocess_output_shape_at_one_millimetre(transforms, tmp_path: Path) -> None:
    item = transforms.preprocess_transforms(preprocessing())(write_case(tmp_path))
    # 10 voxels 2 mm apart span 18 mm: 19 voxels at 1 mm; the 1 mm axes keep their 20.
    assert tuple(item["image"].shape) == (1, 19, 20, 20)


def test_preprocess_crops_the_zero_border_of_image_and_label_alike(transforms, tmp_path: Path) -> None:
    case = write_case(tmp_path)
    image = nib.load(case["image"])
    voxels = np.asarray(image.dataobj).copy()
    voxels[:, :5, :] = 0  # air around the scan, as in most MRI
    nib.save(nib.Nifti1Image(voxels, image.affine), case["image"])
    item = transforms.preprocess_transforms(preprocessing())(case)
    assert tuple(item["image"].shape) == (1, 19, 15, 20)
    assert item["label"].shape == item["image"].shape


def test_window_scales_intensity_into_unit_range(transforms, tmp_path: Path) -> None:
    image = transforms.preprocess_transforms(preprocessing())(write_case(tmp_path))["image"]
    assert image.dtype == torch.float32
    assert float(image.min()) == 0.0 and float(image.max()) == 1.0
    inside = (image > 0) & (image < 1)
    assert inside.any(), "values inside the window must map into (0, 1), not only to its ends"


def test_zscore_gives_each_image_mean_zero_and_unit_std(transforms, tmp_path: Path) -> None:
    prepare = transforms.preprocess_transforms(preprocessing(normalization={"kind": "zscore"}))
    image = prepare(write_case(tmp_path))["image"]
    assert float(image.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(image.std(unbiased=False)) == pytest.approx(1.0, abs=1e-3)


def test_ct_clips_to_the_dataset_percentiles_then_standardises(transforms, tmp_path: Path) -> None:
    stats = {"lower": -100.0, "upper": 300.0, "mean": 50.0, "std": 100.0}
    prepare = transforms.preprocess_transforms(
        preprocessing(normalization={"kind": "ct", "channels": [stats]})
    )
    image = prepare(write_case(tmp_path))["image"]
    # -1000..1000 HU clipped to -100..300, then (x - 50) / 100.
    assert float(image.min()) == pytest.approx(-1.5)
    assert float(image.max()) == pytest.approx(2.5)


def test_preprocess_keeps_label_values_as_uint8(transforms, tmp_path: Path) -> None:
    label = transforms.preprocess_transforms(preprocessing())(write_case(tmp_path))["label"]
    assert label.dtype == torch.uint8
    assert sorted(torch.unique(label).tolist()) == [0, 1, 2]
    # Nearest-neighbour resampling keeps each region at about its physical volume (mm^3).
    for value, voxels in ((1, 4 * 8 * 8), (2, 3 * 5 * 5)):
        volume = int((label == value).sum())
        assert 0.7 * voxels * SPACING[0] <= volume <= 1.3 * voxels * SPACING[0]
    # Interpolating labels would put fractions (cast down to 1) on the rim of region 2.
    near_two = torch.nn.functional.max_pool3d((label == 2).float(), kernel_size=3, stride=1, padding=1)
    assert not ((near_two > 0) & (label == 1)).any()


def test_load_transforms_read_processed_labels_as_long(transforms, tmp_path: Path) -> None:
    from monai.transforms import Compose

    item = Compose(transforms.load_transforms())(write_case(tmp_path))
    assert item["label"].dtype == torch.long
    assert item["image"].shape == (1, *SHAPE)
    assert sorted(torch.unique(item["label"]).tolist()) == [0, 1, 2]
