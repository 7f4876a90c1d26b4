"""MSD folders: reading dataset.json and refusing broken ones (splits: test_splits.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

LABELS = {"0": "background", "1": "liver", "2": "tumour"}
NAMES = ["liver_0", "liver_1", "liver_2"]


@pytest.fixture
def msd(package_module):
    return package_module("data.msd")


def write_msd(root: Path, names: list[str] = NAMES, labels: dict[str, str] = LABELS) -> Path:
    """A small MSD folder: dataset.json plus one 4^3 image/label pair per name."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir(parents=True)
    for index, name in enumerate(names):
        image = np.full((4, 4, 4), float(index), dtype=np.float32)
        label = np.zeros((4, 4, 4), dtype=np.uint8)
        label[1:3, 1:3, 1:3] = 1
        nib.save(nib.Nifti1Image(image, np.eye(4)), root / "imagesTr" / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), root / "labelsTr" / f"{name}.nii.gz")
    spec = {
        "name": "test",
        "modality": {"0": "CT"},
        "labels": labels,
        "training": [
            {"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"} for name in names
        ],
    }
    (root / "dataset.json").write_text(json.dumps(spec))
    return root


def test_read_msd_lists_cases_and_classes(msd, tmp_path: Path) -> None:
    root = write_msd(tmp_path / "raw")
    dataset = msd.read_msd(root)
    assert dataset.root == root
    assert dataset.labels == {0: "background", 1: "liver", 2: "tumour"}
    assert dataset.num_classes == 3
    assert dataset.foreground == {1: "liver", 2: "tumour"}
    assert dataset.in_channels == 1
    assert [case["name"] for case in dataset.cases] == NAMES
    for case in dataset.cases:
        for key in ("image", "label"):
            assert Path(case[key]).is_absolute()
            assert Path(case[key]).is_file()
        assert Path(case["image"]).parent.name == "imagesTr"
        assert Path(case["label"]).parent.name == "labelsTr"


def test_missing_dataset_json_names_the_path(msd, user_error, tmp_path: Path) -> None:
    root = write_msd(tmp_path / "raw")
    (root / "dataset.json").unlink()
    with pytest.raises(user_error) as raised:
        msd.read_msd(root)
    assert str(root / "dataset.json") in str(raised.value)


@pytest.mark.parametrize(
    "text",
    [
        '{"labels": {"0": "background", "1": "liver"}, "training": [',  # not JSON
        '{"labels": {"0": "background", "1": "liver"}}',  # no `training`
        '{"labels": {"zero": "background"}, "training": []}',  # label index not a number
    ],
)
def test_invalid_dataset_json_names_the_path(msd, user_error, tmp_path: Path, text: str) -> None:
    root = write_msd(tmp_path / "raw")
    (root / "dataset.json").write_text(text)
    with pytest.raises(user_error) as raised:
        msd.read_msd(root)
    assert str(root / "dataset.json") in str(raised.value)


@pytest.mark.parametrize("labels", [{"0": "background"}, {"0": "background", "2": "tumour"}])
def test_labels_must_be_numbered_from_zero(msd, user_error, tmp_path: Path, labels: dict) -> None:
    root = write_msd(tmp_path / "raw", labels=labels)
    with pytest.raises(user_error, match="`labels` must be numbered 0..K"):
        msd.read_msd(root)


@pytest.mark.parametrize("key", ["image", "label"])
def test_listed_file_that_does_not_exist_is_named(msd, user_error, tmp_path: Path, key: str) -> None:
    root = write_msd(tmp_path / "raw")
    missing = root / f"{key}sTr" / "liver_1.nii.gz"
    missing.unlink()
    with pytest.raises(user_error) as raised:
        msd.read_msd(root)
    assert str(missing.resolve()) in str(raised.value)


@pytest.mark.parametrize("folder", ["missing", "empty"])
def test_a_missing_or_empty_data_folder_is_named(msd, user_error, tmp_path: Path, folder: str) -> None:
    root = tmp_path / "raw"
    if folder == "empty":
        root.mkdir()
    with pytest.raises(user_error, match=rf"{re.escape(str(root))}.*dvc add data/raw"):
        msd.read_msd(root)


def test_empty_training_list_is_refused(msd, user_error, tmp_path: Path) -> None:
    root = write_msd(tmp_path / "raw", names=[])
    with pytest.raises(user_error, match="no cases"):
        msd.read_msd(root)
