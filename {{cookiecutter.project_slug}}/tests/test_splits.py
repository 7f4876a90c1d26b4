"""The split: a fixed test set and k cross-validation folds, seeded, by patient when dataset.json
names patients (test_cv.py runs the folds as queued experiments)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from test_msd import write_msd

CASES = {f"case_{index:03d}": f"case_{index:03d}" for index in range(24)}  # each its own patient
# Twelve patients with two scans each, e.g. a baseline and a follow-up.
TWO_SCANS = {f"p{patient:02d}_scan{scan}": f"p{patient:02d}" for patient in range(12) for scan in (0, 1)}


@pytest.fixture
def splits(package_module):
    return package_module("data.splits")


def sides(split: dict) -> list[set[str]]:
    return [set(split["test"]), *(set(fold) for fold in split["folds"])]


@pytest.mark.parametrize(("patients", "folds"), [(CASES, 5), (CASES, 3), (TWO_SCANS, 5), (TWO_SCANS, 2)])
def test_folds_and_test_partition_the_cases(splits, patients: dict[str, str], folds: int) -> None:
    split = splits.split_cases(patients, folds, 0.17, seed=0)
    parts = sides(split)
    assert len(parts) == folds + 1 and all(parts)
    assert sum(len(part) for part in parts) == len(patients)
    assert set.union(*parts) == set(patients)
    # Whole patients: the test set reaches its share within one patient's scans, and the folds'
    # sizes differ by at most one patient's scans.
    scans = max(Counter(patients.values()).values())
    wanted = round(len(patients) * 0.17)
    assert wanted <= len(split["test"]) < wanted + scans
    sizes = [len(fold) for fold in split["folds"]]
    assert max(sizes) - min(sizes) <= scans


def test_no_patient_is_on_two_sides(splits) -> None:
    split = splits.split_cases(TWO_SCANS, 5, 0.17, seed=0)
    assert split["grouped_by"] == "patient"
    owners = [{TWO_SCANS[case] for case in part} for part in sides(split)]
    for index, patients in enumerate(owners):
        for other in owners[index + 1 :]:
            assert patients.isdisjoint(other), (patients, other)


def test_cases_without_patients_are_grouped_by_case_and_say_so(splits) -> None:
    assert splits.split_cases(CASES, 5, 0.17, seed=0)["grouped_by"] == "case"


def test_split_is_seeded_and_independent_of_listing_order(splits) -> None:
    first = splits.split_cases(CASES, 5, 0.17, seed=0)
    assert splits.split_cases(dict(reversed(CASES.items())), 5, 0.17, seed=0) == first
    assert splits.split_cases(CASES, 5, 0.17, seed=1) != first


def test_each_fold_validates_on_its_own_cases_and_trains_on_the_rest(splits, tmp_path: Path) -> None:
    split = splits.split_cases(TWO_SCANS, 3, 0.17, seed=0)
    (tmp_path / splits.SPLITS_FILE).write_text(json.dumps(split))
    folds = [splits.read_fold(tmp_path, fold) for fold in range(3)]
    pool = set(TWO_SCANS) - set(split["test"])
    assert set().union(*(set(fold["val"]) for fold in folds)) == pool
    for fold in folds:
        assert fold["test"] == split["test"]
        assert set(fold["train"]) | set(fold["val"]) == pool
        assert set(fold["train"]).isdisjoint(fold["val"])


def test_a_fold_beyond_the_split_is_named(splits, user_error, tmp_path: Path) -> None:
    (tmp_path / splits.SPLITS_FILE).write_text(json.dumps(splits.split_cases(CASES, 3, 0.17, seed=0)))
    with pytest.raises(user_error, match=r"data.fold=3, but .*splits.json holds 3 folds \(0 to 2\)"):
        splits.read_fold(tmp_path, 3)


def test_more_folds_than_patients_are_refused_with_the_fix(splits, user_error) -> None:
    with pytest.raises(user_error, match=r"data.folds=5 needs at least 5 patients .*\(-S data.folds=2\)"):
        splits.split_cases(dict(list(TWO_SCANS.items())[:6]), 5, 0.17, seed=0)


def test_dataset_json_names_patients(package_module, tmp_path: Path) -> None:
    """`patient` (or `subject`) in a `training` entry; preprocess splits by it."""
    root = write_msd(tmp_path / "raw", names=list(TWO_SCANS))
    spec = json.loads((root / "dataset.json").read_text())
    for entry in spec["training"]:
        name = Path(entry["image"]).name.removesuffix(".nii.gz")
        entry["patient" if name.endswith("0") else "subject"] = TWO_SCANS[name]
    (root / "dataset.json").write_text(json.dumps(spec))
    dataset = package_module("data.msd").read_msd(root)
    assert dataset.patients == TWO_SCANS
