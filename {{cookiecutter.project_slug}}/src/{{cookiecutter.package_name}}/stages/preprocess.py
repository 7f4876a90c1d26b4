"""Stage preprocess: orient, resample and normalise the selected dataset; split it by seed."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from omegaconf import DictConfig

from ..errors import UserError
from ..msd import SPLITS_FILE, read_msd, split_cases
from ..transforms import preprocess_transforms

log = logging.getLogger(__name__)

OUTPUT = Path("data/processed")


def run(params: DictConfig, workdir: Path) -> None:
    source = read_msd(workdir / params.data.dir)
    out = workdir / OUTPUT
    shutil.rmtree(out, ignore_errors=True)
    (out / "imagesTr").mkdir(parents=True)
    (out / "labelsTr").mkdir(parents=True)
    transforms = preprocess_transforms(params.data)
    for case in source.cases:
        try:
            item = transforms({"image": case["image"], "label": case["label"]})
        except Exception as error:  # MONAI wraps reader errors in RuntimeError
            raise UserError(f"Could not read case {case['image']} / {case['label']}: {error}") from error
        _check_case(case, item, source.num_classes)
        for key, folder in (("image", "imagesTr"), ("label", "labelsTr")):
            array = item[key].numpy()
            # NIfTI keeps channels last; single-channel volumes are stored as plain 3D.
            array = array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, -1)
            affine = item[key].affine.numpy()
            nib.save(nib.Nifti1Image(array, affine), out / folder / f"{case['name']}.nii.gz")
    splits = split_cases(
        [case["name"] for case in source.cases],
        params.data.val_fraction,
        params.data.test_fraction,
        params.seed,
    )
    (out / SPLITS_FILE).write_text(json.dumps(splits, indent=2) + "\n")
    dataset = {
        "name": f"{params.data.name} (preprocessed)",
        "modality": {str(i): f"channel_{i}" for i in range(source.in_channels)},
        "labels": {str(index): name for index, name in source.labels.items()},
        "training": [
            {"image": f"./imagesTr/{case['name']}.nii.gz", "label": f"./labelsTr/{case['name']}.nii.gz"}
            for case in source.cases
        ],
    }
    (out / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
    log.info(
        "Preprocessed %d cases from %s to %s: %s (data.*, seed)",
        len(source.cases),
        params.data.dir,
        out,
        {k: len(v) for k, v in splits.items()},
    )


def _check_case(case: dict, item: dict, num_classes: int) -> None:
    image_shape, label_shape = item["image"].shape[1:], item["label"].shape[1:]
    if image_shape != label_shape:
        raise UserError(
            f"{case['label']} has shape {tuple(label_shape)} after resampling, but its image "
            f"{case['image']} has {tuple(image_shape)}; image and label must cover the same grid."
        )
    if item["label"].shape[0] != 1:
        raise UserError(f"{case['label']} must be a single-channel label map.")
    highest = int(item["label"].max())
    if highest >= num_classes:
        raise UserError(
            f"{case['label']} contains label {highest}, but dataset.json names only "
            f"{num_classes} classes (0..{num_classes - 1}); add it to `labels` or fix the file."
        )
