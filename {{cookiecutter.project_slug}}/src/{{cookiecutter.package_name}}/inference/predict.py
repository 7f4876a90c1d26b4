"""``predict``: segment new NIfTI inputs with a trained model, on each input's own grid.

With several models (``--model`` repeated, or ``cv:<group>`` for the folds of a `cv` run) the
mask comes from the mean of their softmax outputs, and ``--tta flip`` adds mirrored passes
(ensemble.py). Each model comes with its card (network config, channels, labels, preprocessing; see
``models.model_card``), so an input is prepared exactly as the model's training data was:
the same orientation, crop, spacing and normalisation statistics. The mask is then mapped back
through those transforms (MONAI's Invertd) to the input's own shape and affine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import mlflow.pytorch
import nibabel as nib
import numpy as np
import torch
from mlflow.entities.model_registry import ModelVersion
from monai.transforms import Invertd
from omegaconf import OmegaConf

from ..config.params import PARAMS_FILE, repo_root
from ..data.transforms import preprocess_transforms
from ..errors import UserError
from ..lab.cv import latest_per_fold
from ..lab.registry import CHAMPION, ENSEMBLE_MEMBERS, ENSEMBLE_TTA, logged_model
from ..lab.tracking import tracking_uri
from ..model.networks import model_from_card
from ..progress import track
from ..training.acceleration import Acceleration
from .ensemble import Ensemble, check_members, mirrorings

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
RUN_ID = re.compile(r"[0-9a-f]{32}")
REGISTERED = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))")


@dataclass
class LoadedModel:
    card: dict
    state: dict[str, torch.Tensor]
    source: dict[str, str] = field(default_factory=dict)  # what the sidecar records about it
    tta: str | None = None  # how a registered ensemble it belongs to was scored (`ensemble --tta`)


def predict_files(
    inputs: list[str],
    model_refs: list[str] | None,
    output: Path,
    overlap: float,
    workdir: Path,
    tta: str | None = None,
) -> None:
    """Segment each input file with the models ``model_refs`` name (default: the champion);
    write masks and cards to ``output``."""
    files = input_files(inputs)
    loaded = load_models(model_refs, workdir)
    # A registered ensemble runs as it was scored, unless --tta says otherwise.
    flips = mirrorings(tta or next((member.tta for member in loaded if member.tta), "none"))
    check_members([member.card for member in loaded], [member.source["model"] for member in loaded])
    card = loaded[0].card
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ensemble = Ensemble(
        [model_from_card(member.card, member.state).to(device) for member in loaded],
        [member.card["patch_size"] for member in loaded],
        flips,
    )
    acceleration = Acceleration.for_inference(device)
    prepare = preprocess_transforms(card["preprocessing"], keys=("image",))
    restore = Invertd(keys="mask", transform=prepare, orig_keys="image", nearest_interp=True)
    output.mkdir(parents=True, exist_ok=True)
    for path in track(files, "predict", unit="file"):
        source = check_input(path, card["channels"])
        item = prepare({"image": str(path)})
        scores = ensemble.logits_or_probabilities(item["image"][None].to(device), overlap, acceleration)
        item["mask"] = scores[0].argmax(0, keepdim=True).cpu().float()
        mask = restore(item)["mask"][0].numpy().round().astype(np.uint8)
        if mask.shape != source.shape[:3]:
            raise RuntimeError(f"mask shape {mask.shape} != input shape {source.shape[:3]} for {path}")
        name = path.name
        nib.save(nib.Nifti1Image(mask, source.affine), output / name)
        sidecar = {
            **(loaded[0].source if len(loaded) == 1 else {"members": [member.source for member in loaded]}),
            "combined": ensemble.describe(),
            "input": str(path),
            "input_md5": hashlib.md5(path.read_bytes()).hexdigest(),
            "labels": card["labels"],
        }
        (output / f"{name.removesuffix('.gz').removesuffix('.nii')}.json").write_text(
            json.dumps(sidecar, indent=2) + "\n"
        )
        models = "; ".join(", ".join(f"{key}={value}" for key, value in m.source.items()) for m in loaded)
        log.info("%s -> %s on %s (%s; %s)", path, output / name, device, models, ensemble.describe())


def input_files(inputs: list[str]) -> list[Path]:
    """The NIfTI files named, and those inside the folders named, sorted; names must not repeat."""
    files: list[Path] = []
    for entry in map(Path, inputs):
        if entry.is_dir():
            files += sorted(p for p in entry.iterdir() if p.name.endswith(NIFTI_SUFFIXES))
        elif entry.is_file():
            files.append(entry)
        else:
            raise UserError(f"{entry} does not exist; give NIfTI files or folders of them.")
    if not files:
        raise UserError(f"No .nii or .nii.gz file in {', '.join(inputs)}.")
    names = [path.name for path in files]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UserError(
            f"Several inputs are named {', '.join(repeated)}; their masks would overwrite each other."
        )
    return files


def check_input(path: Path, channels: list[str]) -> nib.Nifti1Image:
    """The input's header, if it is a 3D or 4D (channels last) NIfTI with the model's channels."""
    try:
        image = nib.load(path)
    except Exception as error:  # nibabel raises several types for a file it cannot read
        raise UserError(f"{path} is not a NIfTI file nibabel can read ({error}).") from error
    shape = image.shape
    if len(shape) not in (3, 4):
        raise UserError(f"{path} has shape {shape}; inputs must be 3D, or 4D with the channels last.")
    found = 1 if len(shape) == 3 else shape[3]
    if found != len(channels):
        raise UserError(
            f"{path} has {found} channel(s), but the model takes {len(channels)} ({', '.join(channels)}); "
            "give a 4D NIfTI with the channels last, in that order."
        )
    return image


def load_models(references: list[str] | None, workdir: Path) -> list[LoadedModel]:
    """Each ``--model`` (default: the champion). ``cv:<group>`` stands for the newest train run of
    every fold of a `cv` group; a registered ensemble (`ensemble --register`) for its members."""
    loaded = []
    for reference in references or [f"models:/{_experiment_name(workdir)}@{CHAMPION}"]:
        if Path(reference).is_file():  # a checkpoint: no tracking store needed
            loaded.append(load_model(reference, workdir))
        elif reference.startswith("cv:"):
            loaded += [load_model(run_id, workdir) for run_id in _fold_runs(reference.removeprefix("cv:"))]
        elif (match := REGISTERED.fullmatch(reference)) and ENSEMBLE_MEMBERS in (
            tags := _version(match).tags
        ):
            for run_id in tags[ENSEMBLE_MEMBERS].split(","):
                member = load_model(run_id, workdir)
                member.source["ensemble"] = reference
                member.tta = tags.get(ENSEMBLE_TTA, "none")
                loaded.append(member)
        else:
            loaded.append(load_model(reference, workdir))
    return loaded


def _fold_runs(group: str) -> list[str]:
    """The newest finished train run of each fold of ``group`` (a cv.group tag), fold by fold."""
    client = mlflow.MlflowClient(tracking_uri(repo_root()))
    newest = latest_per_fold(client, group, "train")
    if not newest:
        raise UserError(
            f"--model cv:{group}: no finished train run has cv.group {group} in {client.tracking_uri} "
            "(`cv --summary` prints a group's id)."
        )
    return [run.info.run_id for run in newest.values()]


def load_model(reference: str | None, workdir: Path) -> LoadedModel:
    """A checkpoint path, an MLflow run id, or a models:/ URI (default: the champion)."""
    if reference and Path(reference).is_file():
        return _from_checkpoint(Path(reference))
    # MLflow unpickles a pickle-format model by default, which runs whatever code its author put
    # in it. The train stage logs pt2 models, which MLflow checks to hold no pickle before it
    # loads them; a pickled model loads only if the user sets this variable to true.
    os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    mlflow.set_tracking_uri(tracking_uri(repo_root()))
    if reference is None:
        reference = f"models:/{_experiment_name(workdir)}@{CHAMPION}"
    source = {"model": reference}
    if RUN_ID.fullmatch(reference):
        run = mlflow.MlflowClient().get_run(reference)
        source["run_id"] = reference
        uri = f"models:/{logged_model(run.info.experiment_id, reference).model_id}"
    elif reference.startswith(("models:/", "runs:/")):
        uri = reference
    else:
        raise UserError(f"--model {reference}: not a file, an MLflow run id, or a models:/ or runs:/ URI.")
    if match := REGISTERED.fullmatch(uri):
        source |= _registered_version(match)
    try:
        card = (mlflow.models.get_model_info(uri).metadata or {}).get("card")
        with warnings.catch_warnings():
            # torch.export's loader wraps the read-only archive in tensors; only the weights are used.
            warnings.filterwarnings("ignore", message="The given buffer is not writable")
            network = mlflow.pytorch.load_model(uri, map_location="cpu")
    except mlflow.exceptions.MlflowException as error:
        raise UserError(
            f"Cannot load model {reference} from {mlflow.get_tracking_uri()}: {error.message}"
        ) from error
    if card is None:
        raise UserError(f"Model {reference} has no card in its metadata; retrain it with this version.")
    return LoadedModel(card, network.state_dict(), source)


def _from_checkpoint(path: Path) -> LoadedModel:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if "card" not in checkpoint:
        raise UserError(f"{path} holds no model card; use a checkpoint written by the train stage.")
    return LoadedModel(checkpoint["card"], checkpoint["model"], {"model": str(path)})


def _version(match: re.Match) -> ModelVersion:
    """The registered version a models:/<name>@<alias> or /<version> URI names."""
    client = mlflow.MlflowClient(tracking_uri(repo_root()))
    name = match["name"]
    try:
        if match["alias"]:
            return client.get_model_version_by_alias(name, match["alias"])
        return client.get_model_version(name, match["version"])
    except mlflow.exceptions.MlflowException as error:
        raise UserError(f"models:/{name}: {error.message} (see `mlflow ui`, Models).") from error


def _registered_version(match: re.Match) -> dict[str, str]:
    name, version = match["name"], _version(match)
    return {
        "registered_model": name,
        "version": str(version.version),
        "run_id": version.tags.get("train_run_id", ""),
    }


def _experiment_name(workdir: Path) -> str:
    params = workdir / PARAMS_FILE
    if not params.is_file():
        raise UserError(f"No {params}: run inside the project, or give --model.")
    return OmegaConf.load(params).tracking.experiment_name
