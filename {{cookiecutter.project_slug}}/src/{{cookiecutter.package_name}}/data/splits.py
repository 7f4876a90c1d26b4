"""The split: a fixed test set, and the rest in ``data.folds`` cross-validation folds, by patient.

Preprocess writes every fold into ``splits.json``; train and evaluate take fold ``data.fold`` as
the validation set and the other folds as the training set. So a change of fold re-runs
neither preprocess nor anything before it, and every fold is scored on the same test cases.

Scans of one patient never sit on two sides: when ``dataset.json``'s ``training`` entries name a
``patient`` (or ``subject``), whole patients are drawn; otherwise each case is its own patient,
and ``splits.json`` says so (``grouped_by: case``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from ..errors import UserError

SPLITS_FILE = "splits.json"  # written by preprocess beside the preprocessed cases


def split_cases(patients: dict[str, str], folds: int, test_fraction: float, seed: int) -> dict:
    """The split of ``patients`` (case name -> patient), seeded; the same inputs give the same split.

    The test set takes whole patients, in seeded order, until it holds ``test_fraction`` of the
    cases (at least one patient). The remaining patients are dealt in that order to ``folds``
    folds, largest first, each to the fold with the fewest cases so far.
    """
    cases_of: dict[str, list[str]] = {}
    for case, patient in sorted(patients.items()):
        cases_of.setdefault(patient, []).append(case)
    order = sorted(cases_of)
    random.Random(seed).shuffle(order)
    wanted = max(1, round(len(patients) * test_fraction))
    test: list[str] = []
    while order and len(test) < wanted:
        test += cases_of[order.pop(0)]
    if len(order) < folds:
        raise UserError(
            f"data.folds={folds} needs at least {folds} patients outside the test set, and "
            f"{len(order)} are left of {len(cases_of)} (data.test_fraction={test_fraction}). Use fewer "
            f"folds (-S data.folds={max(2, len(order))}), a smaller test share, or more data."
        )
    dealt: list[list[str]] = [[] for _ in range(folds)]
    for patient in sorted(order, key=lambda name: -len(cases_of[name])):  # stable: seeded order
        min(dealt, key=len).extend(cases_of[patient])
    grouped = any(patient != case for case, patient in patients.items())
    return {
        "grouped_by": "patient" if grouped else "case",
        "seed": seed,
        "test": sorted(test),
        "folds": [sorted(fold) for fold in dealt],
    }


def read_fold(processed: Path, fold: int) -> dict[str, list[str]]:
    """Fold ``fold`` of the split preprocess wrote: its train, val and test case names."""
    splits = json.loads((processed / SPLITS_FILE).read_text())
    folds = splits["folds"]
    if not 0 <= fold < len(folds):
        raise UserError(
            f"data.fold={fold}, but {processed / SPLITS_FILE} holds {len(folds)} folds (0 to "
            f"{len(folds) - 1}); set -S data.fold=0, or -S data.folds to re-split."
        )
    return {
        "train": sorted(case for index, names in enumerate(folds) if index != fold for case in names),
        "val": folds[fold],
        "test": splits["test"],
    }
