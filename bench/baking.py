"""What both benchmarks start from: an environment for the baked project's tools, and the bake."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parents[1]
SLUG = "organ-segmentation"


def tool_env() -> dict[str, str]:
    """This interpreter's tools first on PATH; no analytics; the project's own mlflow.db."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def bake(scratch: str, env: dict[str, str], copy_from: Path | None = None) -> Path:
    """A project in ``scratch``: baked from this template, or copied from ``copy_from`` (a project
    baked elsewhere, e.g. on a GPU machine without cookiecutter). Its ``src`` goes on PYTHONPATH."""
    project = Path(scratch) / SLUG
    if copy_from:
        shutil.copytree(copy_from, project, symlinks=True)
    else:
        command = [
            sys.executable,
            "-m",
            "cookiecutter",
            "--no-input",
            "--output-dir",
            scratch,
            str(TEMPLATE),
        ]
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            sys.exit(f"cookiecutter failed:\n{result.stderr[-3000:]}")
    env["PYTHONPATH"] = str(project / "src")
    return project
