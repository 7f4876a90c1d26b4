"""The real-data contract: an MSD folder at data/raw, `dvc add`-ed, chosen with `-S data=msd`."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pytest
import yaml
from conftest import DEFAULT_SLUG, TINY, git, run

pytestmark = pytest.mark.slow

LABELS = {"0": "background", "1": "liver", "2": "tumour"}
# Voxels: 36 slices after resampling to data.pixdim, more than the patch's 32.
SHAPE = (40, 40, 24)
SPACING = (1.5, 1.5, 3.0)  # mm, anisotropic like most CT
NUM_CASES = 6


def case_name(index: int) -> str:
    return f"liver_{index:03d}.nii.gz"


def write_msd(root: Path, shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> None:
    """Small CT-like cases: a liver ellipsoid holding a tumour sphere, in Hounsfield units."""
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir(parents=True)
    affine = np.diag([*SPACING, 1.0])
    millimetres = (
        np.indices(shape).astype(np.float32)
        * np.array(SPACING, np.float32)[:, None, None, None]
    )
    extent = np.array(shape) * np.array(SPACING)
    training = []
    for index in range(NUM_CASES):
        liver_centre = extent / 2 + rng.uniform(-4, 4, 3)
        tumour_centre = liver_centre + rng.uniform(-5, 5, 3)
        radii = rng.uniform(14, 20, 3)
        in_liver = (
            sum(
                ((millimetres[axis] - liver_centre[axis]) / radii[axis]) ** 2
                for axis in range(3)
            )
            <= 1
        )
        in_tumour = (
            sum((millimetres[axis] - tumour_centre[axis]) ** 2 for axis in range(3))
            <= 6.0**2
        )
        label = np.zeros(shape, np.uint8)
        label[in_liver] = 1
        label[in_liver & in_tumour] = 2
        image = np.choose(label, [-100.0, 60.0, 140.0]) + rng.normal(0, 20, shape)
        nib.save(
            nib.Nifti1Image(image.astype(np.float32), affine),
            root / "imagesTr" / case_name(index),
        )
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / case_name(index))
        training.append(
            {
                "image": f"./imagesTr/{case_name(index)}",
                "label": f"./labelsTr/{case_name(index)}",
            }
        )
    dataset = {
        "name": "TinyLiver",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": LABELS,
        "numTraining": NUM_CASES,
        "training": training,
    }
    (root / "dataset.json").write_text(json.dumps(dataset, indent=2))


def add_raw_data(project: Path) -> None:
    """The README's steps for real data: `dvc add`, then commit the .dvc file."""
    run(["dvc", "add", "data/raw"], cwd=project)
    git(project, "add", "data/raw.dvc", "data/.gitignore")
    git(project, "commit", "--quiet", "-m", "Add raw data")


def run_msd(project: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run(["dvc", "exp", "run", "-S", "data=msd", *TINY], cwd=project, check=check)


@pytest.fixture
def msd_project(bake, tmp_path: Path) -> Path:
    project = bake(tmp_path)
    write_msd(project / "data" / "raw")
    return project


def test_msd_data_trains_with_its_class_names_and_is_traced(msd_project: Path) -> None:
    add_raw_data(msd_project)
    run_msd(msd_project)

    metrics = json.loads((msd_project / "metrics" / "evaluate.json").read_text())
    expected = {
        f"{metric}_{name}"
        for metric in ("dice", "hd95")
        for name in ("liver", "tumour", "mean")
    }
    assert expected <= set(metrics), sorted(metrics)

    params = yaml.safe_load((msd_project / "params.yaml").read_text())
    processed = nib.load(msd_project / "data" / "processed" / "imagesTr" / case_name(0))
    assert processed.header.get_zooms()[:3] == pytest.approx(
        params["data"]["pixdim"]
    ), "preprocess did not resample to data.pixdim"

    raw_md5 = yaml.safe_load((msd_project / "data" / "raw.dvc").read_text())["outs"][0][
        "md5"
    ]
    train_run_id = json.loads((msd_project / "metrics" / "train.json").read_text())[
        "mlflow_run_id"
    ]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{msd_project / 'mlflow.db'}")
    train_run = client.get_run(train_run_id)
    assert train_run.data.tags["data.raw.md5"] == raw_md5
    assert "data.synthetic.md5" not in train_run.data.tags, (
        "data=msd does not read data/synthetic"
    )
    experiment = client.get_experiment_by_name(DEFAULT_SLUG)
    assert train_run.info.experiment_id == experiment.experiment_id


def test_volumes_thinner_than_the_patch_train(bake, tmp_path: Path) -> None:
    """Scans with few slices (30 after resampling, patch 32) are common; they must still train."""
    project = bake(tmp_path)
    write_msd(project / "data" / "raw", shape=(40, 40, 20))
    add_raw_data(project)
    run_msd(project)
    assert (
        json.loads((project / "metrics" / "evaluate.json").read_text())["dice_liver"]
        is not None
    )


def test_corrupt_image_is_named_without_a_traceback(msd_project: Path) -> None:
    corrupt = msd_project / "data" / "raw" / "imagesTr" / case_name(3)
    corrupt.write_bytes(np.random.default_rng(1).bytes(2048))
    add_raw_data(msd_project)

    result = run_msd(msd_project, check=False)

    output = result.stdout + result.stderr
    assert result.returncode != 0, "a corrupt image was accepted"
    assert case_name(3) in output, output[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


def test_label_outside_dataset_json_is_named(msd_project: Path) -> None:
    label_file = msd_project / "data" / "raw" / "labelsTr" / case_name(2)
    label = nib.load(label_file)
    values = np.asarray(label.dataobj).copy()
    values[:4, :4, :4] = 5
    nib.save(nib.Nifti1Image(values, label.affine), label_file)
    add_raw_data(msd_project)

    result = run_msd(msd_project, check=False)

    assert result.returncode != 0, (
        "a label value missing from dataset.json was accepted"
    )
    named = [
        line
        for line in result.stderr.splitlines()
        if f"labelsTr/{case_name(2)}" in line
    ]
    assert any(re.search(r"\b5\b", line) for line in named), result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
