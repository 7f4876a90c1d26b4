"""What a result depends on: data md5s (as DVC records them), code, params, git and environment.

These values become the tags of every MLflow run (see the README's provenance table).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import yaml

from hydra_plugins.conf_fingerprint.hashing import sha256_of_files

from .errors import UserError

# Sources whose change changes what the stages compute. conf/ is left out of the code hash
# because its effect reaches results only through the params, which are hashed on their own.
CODE_GLOBS = ("src/**/*.py", "dvc.yaml")
DIRTY_PATHS = ("src", "dvc.yaml", "conf")


def code_sha256(workdir: Path) -> str:
    files = [path for pattern in CODE_GLOBS for path in workdir.glob(pattern)]
    return sha256_of_files(workdir, (f for f in files if "__pycache__" not in f.parts))


def params_sha256(resolved: dict) -> str:
    """sha256 of the canonical JSON (sorted keys, no whitespace) of the resolved params."""
    canonical = json.dumps(resolved, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _git(workdir: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=workdir, capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f"`git {' '.join(args)}` failed in {workdir}: {result.stderr.strip()}")
    return result.stdout.strip()


def git_commit(workdir: Path) -> str:
    """The commit the run starts from: DVC's experiment baseline when set, else HEAD."""
    return os.environ.get("DVC_EXP_BASELINE_REV") or _git(workdir, "rev-parse", "HEAD")


def git_dirty(workdir: Path) -> bool:
    """Whether sources, dvc.yaml or conf/ differ from HEAD (files DVC rewrites don't count)."""
    status = _git(workdir, "status", "--porcelain", "--untracked-files=all", "--", *DIRTY_PATHS)
    return bool(status)


def experiment_commit(root: Path, exp_name: str | None) -> str | None:
    """The commit DVC made for experiment ``exp_name`` (refs/exps/...), if it still exists."""
    if not exp_name:
        return None
    refs = _git(root, "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps").splitlines()
    return next((sha for ref, sha in (line.split() for line in refs) if ref.endswith(f"/{exp_name}")), None)


def data_md5s(workdir: Path, data_paths: list[str]) -> dict[str, str]:
    """md5 of each data folder exactly as ``dvc.lock`` or its ``.dvc`` file records it."""
    recorded = _recorded_md5s(workdir)
    missing = [path for path in data_paths if path not in recorded]
    if missing:
        raise UserError(
            f"No md5 recorded for {', '.join(missing)} in dvc.lock or a .dvc file. "
            "Run stages through `dvc exp run` (or `dvc add` a raw data folder) so that "
            "DVC records their data."
        )
    return {Path(path).name: recorded[path] for path in data_paths}


def dvc_md5(workdir: Path, data_path: str) -> str | None:
    """md5 of a file or folder computed the way DVC computes it (``.dir`` for folders).

    None when the path does not exist. DVC's state database makes this cheap for files
    whose size and mtime are unchanged since DVC last hashed them.
    """
    from dvc.repo import Repo
    from dvc_data.hashfile.build import build

    with Repo(str(workdir)) as repo:
        path = repo.fs.join(repo.root_dir, data_path)
        if not repo.fs.exists(path):
            return None
        _, _, obj = build(repo.cache.local, path, repo.fs, "md5", ignore=repo.dvcignore, dry_run=True)
        return obj.hash_info.value


def _recorded_md5s(workdir: Path) -> dict[str, str]:
    recorded: dict[str, str] = {}
    for dvc_file in workdir.glob("data/*.dvc"):
        for out in yaml.safe_load(dvc_file.read_text()).get("outs", []):
            recorded[(dvc_file.parent / out["path"]).relative_to(workdir).as_posix()] = out["md5"]
    lock = workdir / "dvc.lock"
    if lock.is_file():
        for stage in (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).values():
            for entry in [*stage.get("deps", []), *stage.get("outs", [])]:
                if "md5" in entry:
                    recorded[entry["path"]] = entry["md5"]
    return recorded


def environment() -> dict[str, str]:
    """Versions that can change numerical results, as ``env.*`` tags."""
    import monai
    import torch

    cuda = torch.cuda.is_available()
    return {
        "env.python": platform.python_version(),
        "env.platform": platform.platform(),
        "env.torch": torch.__version__,
        "env.monai": monai.__version__,
        "env.cuda": torch.version.cuda or "none",
        "env.cudnn": str(torch.backends.cudnn.version()) if cuda else "none",
        "env.gpu": torch.cuda.get_device_name(0) if cuda else "none",
        "env.gpu_driver": _gpu_driver() if cuda else "none",
    }


def _gpu_driver() -> str:
    try:
        import pynvml

        pynvml.nvmlInit()
        return str(pynvml.nvmlSystemGetDriverVersion())
    except Exception:  # no NVML library: the version is unknown, not an error
        return "unknown"


def package_list() -> str:
    """Every installed distribution as ``name==version``, one per line, sorted."""
    names = {f"{dist.metadata['Name']}=={dist.version}" for dist in metadata.distributions()}
    return "\n".join(sorted(names, key=str.lower)) + "\n"
