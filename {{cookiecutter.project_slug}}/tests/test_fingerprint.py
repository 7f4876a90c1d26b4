"""The dataset fingerprint on real NIfTI files: grid in world axes, foreground statistics, classes."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

SHAPE = (12, 10, 6)
SPACING = (0.8, 0.9, 4.0)  # voxel axes; the file's axes run towards L, P, S


@pytest.fixture
def fingerprint(package_module):
    return package_module("data.fingerprint")


def write_dataset(root: Path, channels: int = 1, num_cases: int = 3) -> None:
    """Cases whose foreground (label 1) is 100 + case index, background 0."""
    rng = np.random.default_rng(0)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir(parents=True)
    affine = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
    training = []
    for index in range(num_cases):
        label = np.zeros(SHAPE, np.uint8)
        label[2:8, 2:6, 1:4] = 1
        image = np.where(label > 0, 100.0 + index, 0.0) + rng.normal(0, 0.01, SHAPE)
        image = np.stack([image * (channel + 1) for channel in range(channels)], axis=-1)
        name = f"case_{index}.nii.gz"
        nib.save(
            nib.Nifti1Image(np.squeeze(image, -1) if channels == 1 else image, affine),
            root / "imagesTr" / name,
        )
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    modality = {str(channel): f"MR{channel}" for channel in range(channels)}
    labels = {"0": "background", "1": "lesion"}
    (root / "dataset.json").write_text(
        json.dumps({"name": "tiny", "modality": modality, "labels": labels, "training": training})
    )


def run_fingerprint(package_module, root: Path, num_workers: int = 1) -> dict:
    fingerprint = package_module("data.fingerprint")
    dataset = package_module("data.msd").read_msd(root)
    work = partial(fingerprint.fingerprint_case, dataset=dataset, seed=0)
    cases = package_module("data.parallel").map_cases(work, dataset.cases, num_workers, "fingerprint")
    return fingerprint.summarise(dataset, cases)


def test_grid_is_given_along_the_world_axes(package_module, tmp_path: Path) -> None:
    write_dataset(tmp_path)
    result = run_fingerprint(package_module, tmp_path)
    case = result["cases"][0]
    assert case["spacing"] == pytest.approx(list(SPACING))
    assert case["shape"] == list(SHAPE)
    assert case["orientation"] == "LPS"
    assert result["modality"] == ["MR0"] and result["num_cases"] == 3


def test_foreground_statistics_and_class_frequencies(package_module, tmp_path: Path) -> None:
    write_dataset(tmp_path)
    result = run_fingerprint(package_module, tmp_path)
    (channel,) = result["foreground_intensity"]
    assert 100.0 - 0.1 < channel["p00_5"] < channel["p50"] < channel["p99_5"] < 102.0 + 0.1
    assert channel["mean"] == pytest.approx(101.0, abs=0.05)
    foreground = 6 * 4 * 3 / np.prod(SHAPE)
    assert result["class_frequency"]["lesion"] == pytest.approx(foreground)
    assert sum(result["class_frequency"].values()) == pytest.approx(1.0)


def test_two_channels_are_summarised_apart(package_module, tmp_path: Path) -> None:
    write_dataset(tmp_path, channels=2)
    first, second = run_fingerprint(package_module, tmp_path)["foreground_intensity"]
    assert second["mean"] == pytest.approx(2 * first["mean"], rel=1e-3)


def test_result_does_not_depend_on_the_number_of_workers(package_module, tmp_path: Path) -> None:
    write_dataset(tmp_path, num_cases=4)
    assert run_fingerprint(package_module, tmp_path, 1) == run_fingerprint(package_module, tmp_path, 2)


def test_a_label_outside_dataset_json_is_named(package_module, user_error, tmp_path: Path) -> None:
    write_dataset(tmp_path)
    path = tmp_path / "labelsTr" / "case_1.nii.gz"
    label = nib.load(path)
    values = np.asarray(label.dataobj).copy()
    values[0, 0, 0] = 3
    nib.save(nib.Nifti1Image(values, label.affine), path)
    with pytest.raises(user_error, match=r"labelsTr/case_1.nii.gz contains label 3"):
        run_fingerprint(package_module, tmp_path)


def test_a_channel_count_unlike_dataset_json_is_named(package_module, user_error, tmp_path: Path) -> None:
    write_dataset(tmp_path, channels=2)
    spec = json.loads((tmp_path / "dataset.json").read_text())
    spec["modality"] = {"0": "MR0"}
    (tmp_path / "dataset.json").write_text(json.dumps(spec))
    with pytest.raises(user_error, match=r"imagesTr/case_0.nii.gz has shape .*1 channel"):
        run_fingerprint(package_module, tmp_path)


def test_a_truncated_file_is_named(package_module, user_error, tmp_path: Path) -> None:
    write_dataset(tmp_path)
    path = tmp_path / "imagesTr" / "case_2.nii.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(user_error, match=r"imagesTr/case_2.nii.gz"):
        run_fingerprint(package_module, tmp_path)


def replace_label(
    root: Path, name: str, values: np.ndarray | None = None, affine: np.ndarray | None = None
) -> None:
    """Rewrite one case's label with other voxels or another affine."""
    path = root / "labelsTr" / name
    label = nib.load(path)
    values = np.asarray(label.dataobj) if values is None else values
    nib.save(nib.Nifti1Image(values, label.affine if affine is None else affine), path)


def test_a_label_on_another_grid_than_its_image_is_named(package_module, user_error, tmp_path: Path) -> None:
    write_dataset(tmp_path)
    replace_label(tmp_path, "case_1.nii.gz", values=np.zeros((12, 10, 5), np.uint8))
    with pytest.raises(user_error, match=r"labelsTr/case_1.nii.gz has shape \(12, 10, 5\), but its image"):
        run_fingerprint(package_module, tmp_path)


def test_a_label_elsewhere_in_space_than_its_image_is_named(
    package_module, user_error, tmp_path: Path
) -> None:
    write_dataset(tmp_path)
    shifted = nib.load(tmp_path / "labelsTr" / "case_0.nii.gz").affine.copy()
    shifted[0, 3] += SPACING[0]  # one voxel along x
    replace_label(tmp_path, "case_0.nii.gz", affine=shifted)
    with pytest.raises(user_error, match=r"labelsTr/case_0.nii.gz lies elsewhere in space .*affines differ"):
        run_fingerprint(package_module, tmp_path)


def test_a_negative_label_is_named(package_module, user_error, tmp_path: Path) -> None:
    write_dataset(tmp_path)
    values = np.asarray(nib.load(tmp_path / "labelsTr" / "case_2.nii.gz").dataobj).astype(np.int16)
    values[0, 0, 0] = -1
    replace_label(tmp_path, "case_2.nii.gz", values=values)
    with pytest.raises(user_error, match=r"labelsTr/case_2.nii.gz contains label -1"):
        run_fingerprint(package_module, tmp_path)
