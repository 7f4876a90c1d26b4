"""Where the stages read and write, relative to the repository root (dvc.yaml names the same paths).

One module for the paths, so that no stage imports another stage to find its outputs.
"""

from __future__ import annotations

from pathlib import Path

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
