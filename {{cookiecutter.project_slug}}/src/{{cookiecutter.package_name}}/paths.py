"""Where the stages read and write, relative to the repository root (dvc.yaml names the same paths).

One module for the paths, so that no stage imports another stage to find its outputs.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

from .errors import UserError

# The package's import name: `python -m PACKAGE` runs the command line, and its logger is the project's.
PACKAGE = __package__
SYNTHETIC = Path("data/synthetic")
FINGERPRINT = Path("data/fingerprint.json")
PROCESSED = Path("data/processed")
PLAN_FILE = "plan.json"  # in PROCESSED: the preprocessing that preprocess resolved and applied
MODELS = Path("models")
# Not a DVC output (DVC deletes those before a stage runs): the state of a stopped train stage.
RESUME_CHECKPOINT = Path("checkpoints/train-resume.pt")
REPORTS = Path("reports")
PLOTS = Path("plots/train")
PREPROCESS_METRICS = Path("metrics/preprocess.json")
TRAIN_METRICS = Path("metrics/train.json")
EVALUATE_METRICS = Path("metrics/evaluate.json")


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """``write(partial)`` into a sibling ``.partial`` file, then rename it over ``path``: a reader,
    or a run stopped half-way, sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    try:
        write(partial)
    except OSError as error:
        partial.unlink(missing_ok=True)
        if error.errno == errno.ENOSPC:
            raise UserError(
                f"No space left on the device writing {path}; the previous {path.name} is intact. "
                "Free space there and run the experiment again."
            ) from error
        raise
    os.replace(partial, path)
