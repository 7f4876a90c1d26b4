"""Keeps DVC's "No file hash info found for '...'. It won't be created." out of a first run.

`dvc exp run` starts by restoring the outputs that dvc.lock records; before the first run
there is no dvc.lock, so DVC warns once per output that it has nothing to restore. DVC imports
this module (every module under ``hydra_plugins``) in its own process before it does that.
Once dvc.lock exists the warning is left alone: then it means a recorded output is missing.
"""

import logging
from pathlib import Path

NOTHING_TO_RESTORE = "No file hash info found"


def _repo_root() -> Path:
    here = Path.cwd().resolve()
    return next((folder for folder in (here, *here.parents) if (folder / ".dvc").is_dir()), here)


def _first_run_noise(record: logging.LogRecord) -> bool:
    """False (drop it) for the warning, while no dvc.lock exists."""
    return not (str(record.msg).startswith(NOTHING_TO_RESTORE) and not (_repo_root() / "dvc.lock").exists())


for _name in ("dvc_data.index.checkout", "dvc_data.hashfile.checkout"):
    logging.getLogger(_name).addFilter(_first_run_noise)
