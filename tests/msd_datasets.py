"""Small datasets in Medical Segmentation Decathlon layout, made in the tests, each like a kind of
real data: CT in Hounsfield units, MRI in arbitrary units, multi-channel MRI (4D, channels last).

Every generator is seeded, so a dataset is the same on every run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

Spacing = tuple[float, float, float]
# Like most abdominal CT: 0.8 mm in-plane, 3-5 mm slices, so that the slice axis is strongly
# anisotropic and `auto` takes its 10th percentile rather than its median.
CT_SPACINGS = [(0.8, 0.8, z) for z in (3.0, 3.5, 4.0, 4.0, 4.5, 5.0)]


def case_name(index: int) -> str:
    return f"case_{index:03d}.nii.gz"


def ellipsoid(
    shape: Sequence[int], spacing: Spacing, centre: np.ndarray, radii: np.ndarray
) -> np.ndarray:
    """Voxels within an ellipsoid, in millimetres, on a grid of ``spacing``."""
    millimetres = (
        np.indices(shape).astype(np.float32)
        * np.array(spacing, np.float32)[:, None, None, None]
    )
    return (
        sum(
            ((millimetres[axis] - centre[axis]) / radii[axis]) ** 2 for axis in range(3)
        )
        <= 1
    )


def write_dataset(
    root: Path, name: str, modality: dict, labels: dict, cases: list[tuple]
) -> None:
    """Write ``cases`` ((image, label, spacing) each) with their dataset.json."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir(parents=True)
    training = []
    for index, (image, label, spacing) in enumerate(cases):
        affine = np.diag([*spacing, 1.0])
        nib.save(
            nib.Nifti1Image(image.astype(np.float32), affine),
            root / "imagesTr" / case_name(index),
        )
        nib.save(
            nib.Nifti1Image(label.astype(np.uint8), affine),
            root / "labelsTr" / case_name(index),
        )
        training.append(
            {
                "image": f"./imagesTr/{case_name(index)}",
                "label": f"./labelsTr/{case_name(index)}",
            }
        )
    spec = {
        "name": name,
        "tensorImageSize": "4D" if len(modality) > 1 else "3D",
        "modality": modality,
        "labels": labels,
        "numTraining": len(cases),
        "training": training,
    }
    (root / "dataset.json").write_text(json.dumps(spec, indent=2))


def write_ct(
    root: Path,
    spacings: Sequence[Spacing],
    shape: Sequence[int] = (40, 40, 24),
    seed: int = 0,
) -> None:
    """CT: air at -1000 HU around a body, a liver ellipsoid (60 HU) holding a tumour (140 HU)."""
    rng = np.random.default_rng(seed)
    cases = []
    for spacing in spacings:
        extent = np.array(shape) * np.array(spacing)
        body = ellipsoid(
            shape, spacing, extent / 2, extent * np.array([0.48, 0.45, 2.0])
        )
        liver_centre = extent / 2 + rng.uniform(-3, 3, 3)
        liver = ellipsoid(
            shape,
            spacing,
            liver_centre,
            np.minimum(rng.uniform(10, 14, 3), extent * 0.35),
        )
        tumour = (
            ellipsoid(
                shape, spacing, liver_centre + rng.uniform(-3, 3, 3), np.full(3, 5.0)
            )
            & liver
        )
        label = liver.astype(np.uint8) + tumour
        image = np.where(body, -100.0, -1000.0)
        image = np.where(liver, 60.0, image)
        image = np.where(tumour, 140.0, image) + rng.normal(0, 20, shape)
        cases.append((image, label, spacing))
    labels = {"0": "background", "1": "liver", "2": "tumour"}
    write_dataset(root, "TinyLiverCT", {"0": "CT"}, labels, cases)


def write_mri(
    root: Path,
    num_cases: int = 12,
    shape: Sequence[int] = (48, 48, 24),
    spacing: Spacing = (1.0, 1.0, 2.0),
    channels: int = 1,
    seed: int = 0,
) -> None:
    """MRI: exact zeros (air) around a head; oedema (1) around a tumour core (2).

    Intensities are in arbitrary units of a few hundred, scaled by a per-case gain (0.6-1.6),
    as scanners and sessions differ. With two channels, the core is bright only in the second.
    """
    rng = np.random.default_rng(seed)
    extent = np.array(shape) * np.array(spacing)
    cases = []
    for _ in range(num_cases):
        head = ellipsoid(shape, spacing, extent / 2, extent * 0.42)
        centre = extent / 2 + rng.uniform(-6, 6, 3)
        oedema = ellipsoid(shape, spacing, centre, rng.uniform(8, 12, 3)) & head
        core = (
            ellipsoid(
                shape, spacing, centre + rng.uniform(-2, 2, 3), rng.uniform(4.5, 6.5, 3)
            )
            & oedema
        )
        label = oedema.astype(np.uint8) + core
        gain = rng.uniform(0.6, 1.6)
        if channels == 1:
            means = [[200.0, 380.0, 560.0]]
        else:  # the core stands out from the oedema only in the second channel
            means = [[200.0, 380.0, 380.0], [150.0, 250.0, 520.0]]
        images = [
            np.where(head, gain * (np.choose(label, m) + rng.normal(0, 25, shape)), 0.0)
            for m in means
        ]
        image = images[0] if channels == 1 else np.stack(images, axis=-1)
        cases.append((image, label, spacing))
    modality = (
        {"0": "MRI"}
        if channels == 1
        else {str(c): name for c, name in enumerate(["T1", "T2"][:channels])}
    )
    write_dataset(
        root,
        "TinyBrainMRI",
        modality,
        {"0": "background", "1": "oedema", "2": "core"},
        cases,
    )
