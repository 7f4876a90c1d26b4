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
from omegaconf import DictConfig

from ..config.params import resolved_params
from ..errors import UserError

# A stage's code: its deps in dvc.yaml under src/ (the science it imports, its stage module, the
# entry point), not the plumbing in lab/ and not conf/ (whose effect is the params, hashed apart).
CODE_ROOT = "src"
DIRTY_PATHS = ("src", "dvc.yaml", "conf")


def stage_code(workdir: Path, stage: str) -> dict[str, str]:
    """``stage``'s code deps and their md5s, as DVC computes them for dvc.lock (``.dir`` for folders).

    DVC's own hashing, through its API, so that the record and dvc.lock always agree.
    """
    from dvc.repo import Repo

    with Repo(str(workdir)) as repo:
        # A full target: a bare stage name is looked up in the dvc.yaml of the current directory.
        (dvc_stage,) = repo.stage.collect(f"{workdir.resolve() / 'dvc.yaml'}:{stage}")
        return {
            dep.def_path: dep.get_hash().value
            for dep in dvc_stage.deps
            if Path(dep.def_path).parts[0] == CODE_ROOT
        }


def code_md5(code: dict[str, str]) -> str:
    """One md5 for a stage's code: of its deps' md5s, in the canonical JSON of :func:`stage_code`."""
    return hashlib.md5(json.dumps(code, sort_keys=True).encode()).hexdigest()


def inputs_sha256(params: DictConfig, workdir: Path, stage: str, data_paths: list[str]) -> str:
    """What a stage's result depends on, in one value: its code, the params and its input data."""
    parts = [
        code_md5(stage_code(workdir, stage)),
        params_sha256(resolved_params(params)),
        *(str(md5) for md5 in dvc_md5s(workdir, data_paths).values()),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def params_sha256(resolved: dict) -> str:
    """sha256 of the canonical JSON (sorted keys, no whitespace) of the resolved params."""
    canonical = json.dumps(resolved, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def cv_group(params: DictConfig) -> str:
    """What the folds of one configuration share: the hash of its params without ``data.fold``."""
    resolved = resolved_params(params)
    resolved["data"].pop("fold")
    return params_sha256(resolved)[:12]


def git(workdir: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=workdir, capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f"`git {' '.join(args)}` failed in {workdir}: {result.stderr.strip()}")
    return result.stdout.strip()


def git_commit(workdir: Path) -> str:
    """The commit the run starts from: DVC's experiment baseline when set, else HEAD."""
    return os.environ.get("DVC_EXP_BASELINE_REV") or git(workdir, "rev-parse", "HEAD")


def is_ancestor(workdir: Path, ancestor: str, commit: str) -> bool:
    """Whether ``commit`` descends from (or is) ``ancestor``; False when either is unknown here."""
    result = subprocess.run(
        ["git", "merge-base", "--is-ancestor", ancestor, commit], cwd=workdir, capture_output=True
    )
    return result.returncode == 0


def changed_since(workdir: Path, commit: str, folder: str) -> list[str]:
    """Files under ``folder`` that differ from ``commit`` or are new; [] when git cannot tell."""
    if not commit:
        return []
    diff = subprocess.run(
        ["git", "diff", "--name-only", "--relative", commit, "--", folder],
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    if diff.returncode != 0:
        return []
    new = git(workdir, "ls-files", "--others", "--exclude-standard", "--", folder)
    return sorted({*diff.stdout.split(), *new.split()})


def git_dirty(workdir: Path) -> bool:
    """Whether sources, dvc.yaml or conf/ differ from HEAD (files DVC rewrites don't count)."""
    status = git(workdir, "status", "--porcelain", "--untracked-files=all", "--", *DIRTY_PATHS)
    return bool(status)


def experiment_commit(root: Path, exp_name: str | None, baseline: str | None) -> str | None:
    """The commit DVC made for experiment ``exp_name`` on ``baseline``, if it still exists.

    DVC keeps it at refs/exps/<baseline[:2]>/<baseline[2:]>/<name>; names repeat across
    baselines, so the baseline is part of the lookup.
    """
    if not (exp_name and baseline):
        return None
    ref = f"refs/exps/{baseline[:2]}/{baseline[2:]}/{exp_name}"
    return git(root, "for-each-ref", "--format=%(objectname)", ref) or None


def data_tags(workdir: Path, data_paths: list[str]) -> dict[str, str]:
    """``data.<name>.md5`` (exactly as ``dvc.lock`` or a ``.dvc`` file records it) and
    ``data.<name>.path`` for each input, ``<name>`` being the folder's or file's name
    without its suffix (``data/raw`` -> raw, ``data/fingerprint.json`` -> fingerprint)."""
    recorded = _recorded_md5s(workdir)
    missing = [path for path in data_paths if path not in recorded]
    if missing:
        raise UserError(
            f"No md5 recorded for {', '.join(missing)} in dvc.lock or a .dvc file. "
            "Run stages through `dvc exp run` (or `dvc add` a raw data folder) so that "
            "DVC records their data."
        )
    tags = {}
    for path in data_paths:
        name = Path(path).stem
        tags[f"data.{name}.md5"], tags[f"data.{name}.path"] = recorded[path], path
    return tags


def recorded_inputs(tags: dict[str, str]) -> list[tuple[str, str, str]]:
    """``(tag, path, md5)`` for each input a run recorded with :func:`data_tags`."""
    inputs = []
    for tag in sorted(t for t in tags if t.startswith("data.") and t.endswith(".md5")):
        name = tag.removeprefix("data.").removesuffix(".md5")
        inputs.append((tag, tags.get(f"data.{name}.path", f"data/{name}"), tags[tag]))
    return inputs


def dvc_md5s(workdir: Path, data_paths: list[str]) -> dict[str, str | None]:
    """md5 of each file or folder computed the way DVC computes it (``.dir`` for folders).

    None for a path that does not exist. DVC's state database makes this cheap for files
    whose size and mtime are unchanged since DVC last hashed them.
    """
    from dvc.repo import Repo
    from dvc_data.hashfile.build import build

    md5s: dict[str, str | None] = {}
    with Repo(str(workdir)) as repo:
        for data_path in data_paths:
            path = repo.fs.join(repo.root_dir, data_path)
            if not repo.fs.exists(path):
                md5s[data_path] = None
                continue
            _, _, obj = build(repo.cache.local, path, repo.fs, "md5", ignore=repo.dvcignore, dry_run=True)
            md5s[data_path] = obj.hash_info.value
    return md5s


def _recorded_md5s(workdir: Path) -> dict[str, str]:
    """Path -> md5 from dvc.lock and .dvc files. While a stage runs, its own dvc.lock entry
    still lists the previous run's deps, so the producing stage's outs, and .dvc files,
    take precedence over any stage's deps."""
    deps: dict[str, str] = {}
    outs: dict[str, str] = {}
    lock = workdir / "dvc.lock"
    if lock.is_file():
        for stage in (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).values():
            deps.update({entry["path"]: entry["md5"] for entry in stage.get("deps", []) if "md5" in entry})
            outs.update({entry["path"]: entry["md5"] for entry in stage.get("outs", []) if "md5" in entry})
    for dvc_file in workdir.glob("data/*.dvc"):
        for out in yaml.safe_load(dvc_file.read_text()).get("outs", []):
            outs[(dvc_file.parent / out["path"]).relative_to(workdir).as_posix()] = out["md5"]
    return deps | outs


def library_versions() -> dict[str, str]:
    """Python, torch and MONAI versions as ``env.*`` tags, read without importing torch."""
    return {
        "env.python": platform.python_version(),
        "env.torch": metadata.version("torch"),
        "env.monai": metadata.version("monai"),
    }


def environment() -> dict[str, str]:
    """Versions that can change numerical results, as ``env.*`` tags."""
    import torch

    cuda = torch.cuda.is_available()
    return {
        **library_versions(),
        "env.platform": platform.platform(),
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
