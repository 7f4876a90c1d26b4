"""A temporary git worktree of one commit that shares the workspace's DVC cache and remotes.

`reproduce` re-runs a stage in one, and `verify` checks an ensemble's members in their own
experiments' commits there, so the workspace itself is never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import UserError
from . import provenance


@contextmanager
def worktree(root: Path, commit: str) -> Iterator[Path]:
    """The project folder of ``commit`` checked out beside the workspace, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="worktree-") as scratch:
        checkout = Path(scratch) / "worktree"
        provenance.git(root, "worktree", "add", "--detach", str(checkout), commit)
        try:
            # In a monorepo the project is a folder of the repository: the same folder there.
            project = checkout / provenance.git(root, "rev-parse", "--show-prefix")
            _share_dvc_setup(root, project)
            yield project
        finally:
            provenance.git(root, "worktree", "remove", "--force", str(checkout))


def _share_dvc_setup(root: Path, project: Path) -> None:
    """Give the worktree the workspace's DVC cache and its local config (remotes, credentials)."""
    from dvc.repo import Repo

    local_config = root / ".dvc" / "config.local"
    if local_config.is_file():
        shutil.copy2(local_config, project / ".dvc" / "config.local")
    with Repo(str(root)) as repo:
        cache_dir = repo.cache.local_cache_dir
    dvc(project, "cache", "dir", "--local", cache_dir)


def checkout(project: Path, paths: list[str]) -> None:
    """`dvc checkout` from the shared cache, else `dvc pull` from the remote, else explain."""
    for path in paths:
        if (project / path).exists() and not (project / path).is_dir():
            continue  # a git-tracked file such as metrics/train.json
        if dvc(project, "checkout", path, check=False).returncode == 0:
            continue
        if dvc(project, "pull", path, check=False).returncode != 0:
            raise UserError(
                f"Input {path} of this run is in neither the DVC cache nor the remote. "
                f"Fetch it where it was produced (`dvc push` there, then `dvc pull {path}` here), "
                "or re-run the experiment to rebuild it."
            )


def dvc(
    cwd: Path, *args: str, check: bool = True, extra_env: dict | None = None, echo: bool = False
) -> subprocess.CompletedProcess:
    """A `dvc` command in ``cwd``, running the code checked out there."""
    # The worktree's own code must run, not the workspace's installed package.
    env = {**os.environ, "PYTHONPATH": str(cwd / "src"), **(extra_env or {})}
    env.pop("DVC_ROOT", None)
    command = [sys.executable, "-m", "dvc", *args]
    result = subprocess.run(command, cwd=cwd, env=env, text=True, capture_output=not echo)
    if check and result.returncode != 0:
        raise UserError(f"`dvc {' '.join(args)}` failed in {cwd}:\n{result.stderr or ''}")
    return result
