"""Stage preprocess: orient, crop, resample and normalise the selected dataset, case by case;
split it by data.seed. The `auto` choices are resolved from the fingerprint and written beside the
data (plan.json), where train, evaluate and the logged model read them."""

from __future__ import annotations

import json
import logging
import shutil
import time
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from omegaconf import DictConfig

from ..data import planning
from ..data.msd import MsdDataset, read_msd, write_msd
from ..data.parallel import map_cases
from ..data.splits import SPLITS_FILE, split_cases
from ..data.transforms import preprocess_transforms
from ..errors import UserError
from ..paths import FINGERPRINT, PLAN_FILE, PREPROCESS_METRICS, PROCESSED

log = logging.getLogger(__name__)


def run(params: DictConfig, workdir: Path) -> None:
    started = time.perf_counter()
    source = read_msd(workdir / params.data.dir)
    fingerprint = json.loads((workdir / FINGERPRINT).read_text())
    preprocessing = {
        "orientation": params.data.orientation,
        "pixdim": planning.target_spacing(params.data.pixdim, fingerprint, params.data.orientation),
        "normalization": planning.normalization(params.data, fingerprint),
    }
    out = workdir / PROCESSED
    shutil.rmtree(out, ignore_errors=True)
    (out / "imagesTr").mkdir(parents=True)
    (out / "labelsTr").mkdir(parents=True)
    work = partial(_preprocess_case, dataset=source, preprocessing=preprocessing, out=out)
    cases = map_cases(work, source.cases, params.data.num_workers, "preprocess")

    splits = split_cases(source.patients, params.data.folds, params.data.test_fraction, params.data.seed)
    (out / SPLITS_FILE).write_text(json.dumps(splits, indent=2) + "\n")
    write_msd(out, f"{source.name} (preprocessed)", source.labels, source.channel_names, source.case_names)
    median_shape = [int(edge) for edge in np.median([case["shape"] for case in cases], axis=0)]
    plan = {
        "preprocessing": preprocessing,
        "median_shape": median_shape,
        "size_mb": round(sum(case["bytes"] for case in cases) / 2**20, 3),
    }
    (out / PLAN_FILE).write_text(json.dumps(plan, indent=2) + "\n")
    # What `auto` became, as columns of `dvc exp show`.
    summary = {
        "pixdim": planning.describe(preprocessing["pixdim"]),
        "normalization": preprocessing["normalization"]["kind"],
        "median_shape": planning.describe(median_shape),
        "size_mb": plan["size_mb"],
    }
    (workdir / PREPROCESS_METRICS).parent.mkdir(parents=True, exist_ok=True)
    (workdir / PREPROCESS_METRICS).write_text(json.dumps(summary, indent=2) + "\n")
    log.info(
        "Preprocessed %d cases from %s in %.2f s with %d worker(s): pixdim %s mm (data.pixdim=%s), "
        "normalization %s (data.normalization=%s), median shape %s, %s MB; splits %s",
        len(cases),
        params.data.dir,
        time.perf_counter() - started,
        params.data.num_workers,
        summary["pixdim"],
        params.data.pixdim if isinstance(params.data.pixdim, str) else "explicit",
        summary["normalization"],
        params.data.normalization,
        summary["median_shape"],
        summary["size_mb"],
        f"test {len(splits['test'])}, folds {'/'.join(str(len(fold)) for fold in splits['folds'])} "
        f"(grouped by {splits['grouped_by']})",
    )


def _preprocess_case(case: dict, dataset: MsdDataset, preprocessing: dict, out: Path) -> dict:
    """Preprocess one case and write it; runs in a worker process when data.num_workers > 1.

    The case is not checked again here: the fingerprint stage, a dep of this one, has read every
    case of the same data and refused wrong channels, grids and label values, naming the file.
    """
    torch.set_num_threads(1)  # the workers share the cores; one case per core
    try:
        item = preprocess_transforms(preprocessing)({"image": case["image"], "label": case["label"]})
    except Exception as error:  # MONAI wraps reader errors in RuntimeError
        raise UserError(f"Could not read case {case['image']} / {case['label']}: {error}") from error
    written = 0
    for key, folder in (("image", "imagesTr"), ("label", "labelsTr")):
        array = item[key].numpy()
        # NIfTI keeps channels last; single-channel volumes are stored as plain 3D.
        array = array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, -1)
        nib.save(nib.Nifti1Image(array, item[key].affine.numpy()), out / folder / f"{case['name']}.nii.gz")
        written += array.nbytes
    return {"name": case["name"], "shape": list(item["label"].shape[1:]), "bytes": written}
