"""Medical Segmentation Decathlon (MSD) folders: discovery and validation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

KEYS = ("image", "label")
# Keys of a `training` entry that name its patient, so that a patient's scans stay on one side of
# every split (splits.py); the first one present counts.
PATIENT_KEYS = ("patient", "subject")


@dataclass(frozen=True)
class MsdDataset:
    """An MSD folder: ``dataset.json`` plus the image/label pairs it lists."""

    root: Path
    name: str
    labels: dict[int, str]  # class index -> name; 0 is the background
    channel_names: list[str]  # dataset.json's `modality`, one per image channel (e.g. "CT")
    cases: list[dict[str, str]]  # {"name", "image", "label"} with absolute paths, "patient"

    @property
    def in_channels(self) -> int:
        return len(self.channel_names)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def case_names(self) -> list[str]:
        return [case["name"] for case in self.cases]

    @property
    def patients(self) -> dict[str, str]:
        """Each case's patient: the entry's `patient` or `subject`, else the case itself."""
        return {case["name"]: case["patient"] for case in self.cases}

    @property
    def foreground(self) -> dict[int, str]:
        return {index: name for index, name in self.labels.items() if index != 0}


def read_msd(root: Path) -> MsdDataset:
    """Read ``root/dataset.json`` and check that every case it lists exists."""
    path = root / "dataset.json"
    if not root.is_dir():
        raise UserError(
            f"The data folder {root} does not exist. Put an MSD dataset there (dataset.json, "
            "imagesTr/, labelsTr/) and run `dvc add data/raw`, or `dvc pull` it from the remote."
        )
    if not path.is_file():
        raise UserError(
            f"{path} is missing. An MSD dataset needs dataset.json with `labels` and "
            "`training`; put your data in data/raw/ and run `dvc add data/raw`."
        )
    try:
        spec = json.loads(path.read_text())
        labels = {int(index): str(name) for index, name in spec["labels"].items()}
        pairs = spec["training"]
    except (json.JSONDecodeError, KeyError, AttributeError, TypeError, ValueError) as error:
        raise UserError(
            f"{path} is not a valid MSD dataset.json ({error!r}); it needs `labels` "
            '({"0": "background", "1": "<name>", ...}) and `training` ([{"image", "label"}]).'
        ) from error
    if sorted(labels) != list(range(len(labels))) or len(labels) < 2:
        raise UserError(f"{path}: `labels` must be numbered 0..K with K >= 1, got {sorted(labels)}.")
    cases = []
    for index, pair in enumerate(pairs if isinstance(pairs, list) else [pairs]):
        if not (isinstance(pair, dict) and all(isinstance(pair.get(key), str) for key in KEYS)):
            raise UserError(f"{path}: training[{index}] needs `image` and `label` paths, got {pair!r}.")
        case = {key: str((root / pair[key]).resolve()) for key in KEYS}
        for key in KEYS:
            if not Path(case[key]).is_file():
                raise UserError(f"{path} lists {pair[key]!r}, but {case[key]} does not exist.")
        case["name"] = Path(case["image"]).name.split(".")[0]
        patient = next((pair[key] for key in PATIENT_KEYS if key in pair), case["name"])
        if not isinstance(patient, str | int) or isinstance(patient, bool):
            raise UserError(f"{path}: training[{index}] names its patient as {patient!r}; give a string.")
        case["patient"] = str(patient)
        cases.append(case)
    if not cases:
        raise UserError(f"{path}: `training` lists no cases.")
    modality = spec.get("modality", {"0": "image"})
    if not isinstance(modality, dict) or set(modality) != {str(i) for i in range(len(modality))}:
        raise UserError(f'{path}: `modality` must number the channels "0".."N-1", got {modality!r}.')
    channels = [str(modality[str(index)]) for index in range(len(modality))]
    return MsdDataset(root, str(spec.get("name", root.name)), labels, channels, cases)


def write_msd(
    root: Path,
    name: str,
    labels: dict[int, str],
    channel_names: list[str],
    case_names: list[str],
    **fields: str,
) -> None:
    """Write ``root/dataset.json`` for ``imagesTr/<case>.nii.gz`` and ``labelsTr/<case>.nii.gz``.

    ``fields`` are MSD's descriptive keys (``description``, ``tensorImageSize``), kept in order.
    """
    training = [
        {"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"} for case in case_names
    ]
    spec = {
        "name": name,
        **fields,
        "modality": {str(index): channel for index, channel in enumerate(channel_names)},
        "labels": {str(index): label for index, label in labels.items()},
        "numTraining": len(training),
        "training": training,
    }
    (root / "dataset.json").write_text(json.dumps(spec, indent=2) + "\n")
