"""Load params.yaml (composed by DVC from conf/), validate it, and refuse a stale one."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from hydra_plugins.conf_fingerprint.hashing import conf_sha256

from .errors import UserError

PARAMS_FILE = "params.yaml"
# Bookkeeping written at compose time; not a parameter of any result.
FINGERPRINT_KEY = "conf_sha256"
# Modules whose objects `_target_` may always name (see _check_targets).
TRUSTED_MODULES = ("torch", "monai")
REQUIRED_KEYS = {
    "seed": int,
    "lr": float,
    "epochs": int,
    "batch_size": int,
    "patch_voxels": int,
    "data": dict,
    "model": dict,
    "trainer": dict,
    "optimizer": dict,
    "loss": dict,
    "tracking": dict,
}


def repo_root() -> Path:
    """The repository root: ``DVC_ROOT`` when DVC runs the stage, else the nearest ``.dvc``."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / ".dvc").is_dir():
            return candidate
    raise UserError(f"No DVC repository found at or above {here}; run inside the project.")


def load_params(workdir: Path | None = None) -> DictConfig:
    """Read and check ``params.yaml`` in ``workdir`` (the stage's working copy).

    Under ``dvc exp run --queue`` the working copy is a temporary clone, so params and conf
    are read from the working directory, not from :func:`repo_root`.
    """
    workdir = Path.cwd() if workdir is None else workdir
    path = workdir / PARAMS_FILE
    if not path.is_file():
        raise UserError(f"{path} is missing: run `dvc exp run`, which composes it from conf/.")
    try:
        params = OmegaConf.load(path)
    except Exception as error:  # YAML parse errors come in several types
        raise UserError(f"{path} is not valid YAML ({error}); recompose it with `dvc exp run`.") from error
    if not isinstance(params, DictConfig):
        raise UserError(f"{path} must be a mapping of keys to values; recompose it with `dvc exp run`.")
    _check_fresh(params, workdir)
    _check_types(params, path)
    _check_targets(params, path)
    return params


def _check_fresh(params: DictConfig, workdir: Path) -> None:
    recorded = params.get(FINGERPRINT_KEY)
    current = conf_sha256(workdir / "conf")
    if recorded != current:
        raise UserError(
            f"{PARAMS_FILE} is stale: it was composed from a different conf/ "
            f"({FINGERPRINT_KEY} {str(recorded)[:12]} != conf/ {current[:12]}). "
            "`dvc repro` does not recompose Hydra config; run `dvc exp run` instead."
        )


def _check_types(params: DictConfig, path: Path) -> None:
    for key, expected in REQUIRED_KEYS.items():
        if key not in params:
            raise UserError(f"{path}: key `{key}` is missing; add it to conf/config.yaml.")
        value = OmegaConf.to_object(params[key]) if OmegaConf.is_config(params[key]) else params[key]
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or isinstance(value, bool):
            raise UserError(
                f"{path}: `{key}` must be {expected.__name__}, got {value!r}; "
                f"fix it with `dvc exp run -S {key}=...` or in conf/."
            )
    for key in ("epochs", "batch_size", "patch_voxels"):
        if params[key] < 1:
            raise UserError(f"{path}: `{key}` must be at least 1, got {params[key]}.")
    if not params.lr > 0:
        raise UserError(f"{path}: `lr` must be positive, got {params.lr}.")
    if "patch_size" not in params:
        raise UserError(f"{path}: key `patch_size` is missing; add it to conf/config.yaml.")
    patch = params.patch_size
    patch = list(patch) if OmegaConf.is_config(patch) else patch
    if patch != "auto" and (
        not isinstance(patch, list)
        or len(patch) != 3
        or not all(isinstance(edge, int) and not isinstance(edge, bool) and edge > 0 for edge in patch)
    ):
        raise UserError(
            f"{path}: `patch_size` must be auto or three positive integers (voxels), got {patch}; "
            "e.g. -S 'patch_size=[64,64,64]'."
        )


def _check_targets(params: DictConfig, path: Path) -> None:
    """Refuse a ``_target_`` outside the allowed modules before anything is built.

    Instantiating config runs whatever callable ``_target_`` names (MONAI's docs warn of the
    same): ``-S model.net._target_=os.system`` would run a shell. Only torch, MONAI, this
    package and the modules listed in ``allowed_targets`` (conf/config.yaml) may be named.
    """
    allowed = {*TRUSTED_MODULES, __package__, *params.get("allowed_targets", [])}
    for key, target in _targets(OmegaConf.to_container(params, resolve=False)):
        if not any(str(target) == module or str(target).startswith(f"{module}.") for module in allowed):
            raise UserError(
                f"{path}: `{key}={target}` is refused: `_target_` may name only {', '.join(sorted(allowed))} "
                "objects. If you trust that module, add it to `allowed_targets` in conf/config.yaml."
            )


def _targets(node: object, prefix: str = "") -> list[tuple[str, object]]:
    """Every (dotted key, value) of a ``_target_`` in a nested params tree."""
    if isinstance(node, dict):
        found = [(f"{prefix}_target_", node["_target_"])] if "_target_" in node else []
        for key, value in node.items():
            found += _targets(value, f"{prefix}{key}.")
        return found
    if isinstance(node, list):
        return [found for index, item in enumerate(node) for found in _targets(item, f"{prefix}{index}.")]
    return []


def instantiate_node(node: DictConfig, key: str, *args: object, **kwargs: object) -> object:
    """Build the object that config ``key`` describes (``_target_``; ``_partial_`` is called).

    A wrong class or argument, from conf/ or from `-S`, becomes an error naming the key.
    """
    from hydra.utils import instantiate

    try:
        if node.get("_partial_", False):
            return instantiate(node)(*args, **kwargs)
        return instantiate(node, *args, **kwargs)
    except Exception as error:  # Hydra and the constructors raise many types
        raise UserError(
            f"Could not build `{key}` ({node.get('_target_')}): {error}. "
            f"Fix `{key}` in conf/ or with `dvc exp run -S {key}...=...`."
        ) from error


def resolved_params(params: DictConfig) -> dict:
    """Plain-Python params without compose-time bookkeeping: what a result depends on."""
    plain = OmegaConf.to_container(params, resolve=True)
    plain.pop(FINGERPRINT_KEY, None)
    return plain
