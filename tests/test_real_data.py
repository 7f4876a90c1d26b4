"""Real data: an MSD folder at data/raw, `dvc add`-ed, chosen with `-S data=msd`.

Each dataset is made here and is like a kind of real data (see msd_datasets.py). The checks
are the README's promises: what `auto` resolves to, that the resolved preprocessing learns,
that `predict` gives masks on each input's own grid, and that bad inputs are named. The CT
dataset's `auto` is checked on the README's own CT experiment, in test_end_to_end.py.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pytest
from conftest import DEFAULT_PACKAGE, DEFAULT_SLUG, TINY, git, run
from msd_datasets import CT_SPACINGS, case_name, write_ct, write_mri

pytestmark = pytest.mark.slow

# The MRI-like dataset must reach this test mean Dice with only `epochs` raised. At 40 epochs it
# scored 0.87-0.88 on most machines but 0.81 in one CI run, so the check trains 60.
MRI_EPOCHS = 60
MRI_PROMISED_DICE = 0.85


def add_raw_data(project: Path) -> None:
    """The README's steps for real data: `dvc add`, then commit the .dvc file."""
    run(["dvc", "add", "data/raw"], cwd=project)
    git(project, "add", "data/raw.dvc", "data/.gitignore")
    git(project, "commit", "--quiet", "-m", "Add raw data")


def run_msd(
    project: Path, *overrides: str, check: bool = True
) -> subprocess.CompletedProcess:
    sets = [arg for override in overrides for arg in ("-S", override)]
    return run(["dvc", "exp", "run", "-S", "data=msd", *sets], cwd=project, check=check)


def cli(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", DEFAULT_PACKAGE, *args], cwd=project, check=check)


def read_json(project: Path, name: str) -> dict:
    return json.loads((project / name).read_text())


def tracking_client(project: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")


def dice(prediction: np.ndarray, truth: np.ndarray, value: int) -> float:
    both = np.logical_and(prediction == value, truth == value).sum()
    return float(2 * both / ((prediction == value).sum() + (truth == value).sum()))


def report(dataset: str, metrics: dict) -> None:
    """The test Dice of a dataset, printed with the test's result (pytest -s)."""
    dices = {
        key[5:]: value for key, value in metrics.items() if key.startswith("dice_")
    }
    shown = ", ".join(
        f"{name} {'n/a' if value is None else f'{value:.4f}'}"
        for name, value in dices.items()
    )
    print(f"\n  {dataset}: test Dice {shown}", end="")


def tiny_overrides() -> list[str]:
    return [
        override for override in TINY[1::2] if not override.startswith("synthetic.")
    ]


@pytest.fixture
def ct_project(bake, tmp_path: Path) -> Path:
    project = bake(tmp_path)
    write_ct(project / "data" / "raw", CT_SPACINGS)
    return project


def test_mri_data_learns_with_auto_zscore_and_predict_round_trips(
    bake, tmp_path: Path
) -> None:
    project = bake(tmp_path / "mri")
    write_mri(project / "data" / "raw")
    add_raw_data(project)
    run_msd(project, f"epochs={MRI_EPOCHS}")

    assert read_json(project, "metrics/preprocess.json")["normalization"] == "zscore"
    metrics = read_json(project, "metrics/evaluate.json")
    report(f"MRI-like, {MRI_EPOCHS} epochs", metrics)

    assert metrics["dice_mean"] >= MRI_PROMISED_DICE, metrics

    # A held-back labelled case, segmented with the champion by its registry URI.
    with (project / "reports" / "per_case.csv").open() as table:
        evaluated = {row["case"]: row for row in csv.DictReader(table)}
    name = min(evaluated)
    raw = project / "data" / "raw"
    output = tmp_path / "masks"
    cli(
        project,
        "predict",
        str(raw / "imagesTr" / f"{name}.nii.gz"),
        "--model",
        f"models:/{DEFAULT_SLUG}@champion",
        "--output",
        str(output),
    )
    source, mask = (
        nib.load(raw / "imagesTr" / f"{name}.nii.gz"),
        nib.load(output / f"{name}.nii.gz"),
    )
    assert mask.shape == source.shape
    np.testing.assert_allclose(mask.affine, source.affine)
    truth = np.asarray(nib.load(raw / "labelsTr" / f"{name}.nii.gz").dataobj)
    for value, label in ((1, "oedema"), (2, "core")):
        assert dice(np.asarray(mask.dataobj), truth, value) == pytest.approx(
            float(evaluated[name][f"dice_{label}"]), abs=1e-3
        )
    sidecar = json.loads((output / f"{name}.json").read_text())
    train_run_id = read_json(project, "metrics/train.json")["mlflow_run_id"]
    assert sidecar["version"] == "1" and sidecar["run_id"] == train_run_id
    assert (
        sidecar["input_md5"]
        == hashlib.md5((raw / "imagesTr" / f"{name}.nii.gz").read_bytes()).hexdigest()
    )

    # The default model is the champion; a folder of inputs; a checkpoint path.
    cli(project, "predict", str(raw / "imagesTr"), "--output", str(tmp_path / "all"))
    assert len(list((tmp_path / "all").glob("*.nii.gz"))) == len(
        list((raw / "imagesTr").iterdir())
    )
    cli(
        project,
        "predict",
        str(raw / "imagesTr" / f"{name}.nii.gz"),
        "--model",
        "models/best.pt",
        "--output",
        str(tmp_path / "ckpt"),
    )
    assert np.array_equal(
        np.asarray(nib.load(tmp_path / "ckpt" / f"{name}.nii.gz").dataobj),
        np.asarray(mask.dataobj),
    )


def test_two_channel_data_trains_and_predicts_end_to_end(bake, tmp_path: Path) -> None:
    """Two channels, in volumes thinner than the patch (16 slices, patch 32), as scans with few
    slices are common: they train, evaluate and predict."""
    project = bake(tmp_path / "multi")
    write_mri(project / "data" / "raw", num_cases=6, shape=(32, 32, 16), channels=2)
    add_raw_data(project)
    run_msd(project, *tiny_overrides())

    dataset = read_json(project, "data/processed/dataset.json")
    assert dataset["modality"] == {"0": "T1", "1": "T2"}
    processed = nib.load(project / "data" / "processed" / "imagesTr" / case_name(0))
    assert processed.shape[3] == 2
    patch = read_json(project, "metrics/train.json")["patch_size"]  # e.g. "32x32x32"
    assert processed.shape[2] < int(patch.split("x")[2]), (processed.shape, patch)
    metrics = read_json(project, "metrics/evaluate.json")
    report("two-channel MRI-like, 2 epochs", metrics)
    assert metrics["dice_core"] is not None

    image = project / "data" / "raw" / "imagesTr" / case_name(0)
    cli(project, "predict", str(image), "--output", str(tmp_path / "masks"))
    assert (
        nib.load(tmp_path / "masks" / case_name(0)).shape == nib.load(image).shape[:3]
    )

    one_channel = tmp_path / "t1_only.nii.gz"
    source = nib.load(image)
    nib.save(
        nib.Nifti1Image(np.asarray(source.dataobj)[..., 0], source.affine), one_channel
    )
    refused = cli(
        project,
        "predict",
        str(one_channel),
        "--output",
        str(tmp_path / "refused"),
        check=False,
    )
    assert refused.returncode != 0
    assert (
        "t1_only.nii.gz has 1 channel(s), but the model takes 2 (T1, T2)"
        in refused.stderr
    ), refused.stderr
    not_nifti = tmp_path / "notes.nii.gz"
    not_nifti.write_text("not an image")
    refused = cli(
        project,
        "predict",
        str(not_nifti),
        "--output",
        str(tmp_path / "refused"),
        check=False,
    )
    assert (
        refused.returncode != 0 and "notes.nii.gz is not a NIfTI file" in refused.stderr
    ), refused.stderr
    assert "Traceback" not in refused.stderr


def test_corrupt_image_is_named_without_a_traceback(ct_project: Path) -> None:
    corrupt = ct_project / "data" / "raw" / "imagesTr" / case_name(3)
    corrupt.write_bytes(np.random.default_rng(1).bytes(2048))
    add_raw_data(ct_project)

    result = run_msd(ct_project, *tiny_overrides(), check=False)

    output = result.stdout + result.stderr
    assert result.returncode != 0, "a corrupt image was accepted"
    assert case_name(3) in output, output[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


def test_label_outside_dataset_json_is_named(ct_project: Path) -> None:
    label_file = ct_project / "data" / "raw" / "labelsTr" / case_name(2)
    label = nib.load(label_file)
    values = np.asarray(label.dataobj).copy()
    values[:4, :4, :4] = 5
    nib.save(nib.Nifti1Image(values, label.affine), label_file)
    add_raw_data(ct_project)

    result = run_msd(ct_project, *tiny_overrides(), check=False)

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


def test_a_set_larger_than_the_cache_budget_trains_from_disk_in_bounded_memory(
    bake, tmp_path: Path
) -> None:
    """The same big synthetic set trained with the cases in memory, then with `auto` over a
    small budget: the disk path is taken and the peak RSS drops by most of the set's size."""
    project = bake(tmp_path)
    big = [
        "synthetic.num_cases=16",
        "synthetic.size=96",
        "epochs=1",
        "patch_size=[32,32,32]",
    ]
    sets = [arg for override in big for arg in ("-S", override)]
    # Up to the train stage (`dvc exp run train`): the promise is the training's memory.
    run(["dvc", "exp", "run", "train", *sets, "-S", "data.cache=memory"], cwd=project)
    in_memory = read_json(project, "metrics/train.json")["mlflow_run_id"]
    size_mb = read_json(project, "metrics/preprocess.json")["size_mb"]
    budget = int(size_mb / 4)
    result = run(
        ["dvc", "exp", "run", "train", *sets, "-S", f"data.cache_budget_mb={budget}"],
        cwd=project,
    )
    output = result.stdout + result.stderr
    assert "on disk (data.cache=auto" in output, output[-3000:]
    on_disk = read_json(project, "metrics/train.json")["mlflow_run_id"]

    client = tracking_client(project)
    memory_run, disk_run = client.get_run(in_memory), client.get_run(on_disk)
    assert memory_run.data.params["resolved.cache"] == "memory"
    assert disk_run.data.params["resolved.cache"] == "disk"
    memory_rss, disk_rss = (
        memory_run.data.metrics["peak_rss_mb"],
        disk_run.data.metrics["peak_rss_mb"],
    )
    print(
        f"\n  peak RSS: {memory_rss:.0f} MB in memory, {disk_rss:.0f} MB from disk; preprocessed set {size_mb:.0f} MB"
    )
    assert disk_rss < memory_rss - 0.5 * size_mb, (memory_rss, disk_rss, size_mb)
