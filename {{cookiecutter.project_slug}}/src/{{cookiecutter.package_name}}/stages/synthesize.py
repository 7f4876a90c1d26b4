"""Stage synthesize: seeded 3D volumes with sphere labels, in MSD layout under data/synthetic."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from omegaconf import DictConfig

from ..data.msd import write_msd
from ..data.synthetic import spheres
from ..paths import SYNTHETIC

log = logging.getLogger(__name__)


def run(params: DictConfig, workdir: Path) -> None:
    spec = params.synthetic
    out = workdir / SYNTHETIC
    shutil.rmtree(out, ignore_errors=True)
    (out / "imagesTr").mkdir(parents=True)
    (out / "labelsTr").mkdir(parents=True)
    random_state = np.random.RandomState(spec.seed)
    names = [f"case_{index:03d}" for index in range(spec.num_cases)]
    for name in names:
        image, label = spheres(
            spec.size, spec.num_objects, tuple(spec.radius), spec.noise, spec.num_classes, random_state
        )
        nib.save(nib.Nifti1Image(image.astype(np.float32), np.eye(4)), out / "imagesTr" / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(label.astype(np.uint8), np.eye(4)), out / "labelsTr" / f"{name}.nii.gz")
    labels = {0: "background", **{index: f"sphere_{index}" for index in range(1, spec.num_classes + 1)}}
    description = f"Seeded MONAI synthetic spheres (synthetic.seed={spec.seed})"
    write_msd(out, "synthetic", labels, ["synthetic"], names, description=description, tensorImageSize="3D")
    log.info("Wrote %d cases of %d^3 voxels to %s (synthetic.*)", spec.num_cases, spec.size, out)
