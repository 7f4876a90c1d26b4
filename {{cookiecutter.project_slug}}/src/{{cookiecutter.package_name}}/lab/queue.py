"""DVC experiments started from the lab's tools (`search`, `cv`): the dvc command line, run in the repo."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from ..errors import UserError

log = logging.getLogger(__name__)


def set_args(overrides: list[str]) -> list[str]:
    """``-S key=value`` for each override, as `dvc exp run` takes them."""
    return [arg for override in overrides for arg in ("-S", override)]


def dvc(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """A dvc command in ``root``; with ``check=False`` a failure (e.g. one failed experiment of a
    queue) is logged and returned instead of raised."""
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        if check:
            raise UserError(f"`dvc {' '.join(args)}` failed:\n{result.stderr[-3000:]}")
        log.warning("`dvc %s` failed:\n%s", " ".join(args), result.stderr[-3000:])
    return result
