"""Stage synthesize: seeded 3D volumes with sphere labels, in MSD layout under data/synthetic."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from omegaconf import DictConfig

from ..data.synthetic import spheres
from ..paths import SYNTHETIC

log = logging.getLogger(__name__)


def run(params: DictConfig, workdir: Path) -> None:
    spec = params.synthetic
    out = workdir / SYNTHETIC
    shutil.rmtree(out, ignore_errors=True)
    (out / "imagesTr").mkdir(parents=True)
    (out / "labelsTr").mkdir(parents=True)
    random_state = np.random.RandomState(params.seed)
    training = []
    for index in range(spec.num_cases):
        image, label = spheres(
            spec.size, spec.num_objects, tuple(spec.radius), spec.noise, spec.num_classes, random_state
        )
        name = f"case_{index:03d}.nii.gz"
        nib.save(nib.Nifti1Image(image.astype(np.float32), np.eye(4)), out / "imagesTr" / name)
        nib.save(nib.Nifti1Image(label.astype(np.uint8), np.eye(4)), out / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    labels = {"0": "background", **{str(i): f"sphere_{i}" for i in range(1, spec.num_classes + 1)}}
    dataset = {
        "name": "synthetic",
        "description": f"Seeded MONAI synthetic spheres (seed={params.seed})",
        "tensorImageSize": "3D",
        "modality": {"0": "synthetic"},
        "labels": labels,
        "numTraining": len(training),
        "training": training,
    }
    (out / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
    log.info("Wrote %d cases of %d^3 voxels to %s (synthetic.*, seed)", spec.num_cases, spec.size, out)
