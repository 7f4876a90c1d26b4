"""Load params.yaml (composed by DVC from conf/), validate it, and refuse a stale one."""

from __future__ import annotations

import os
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from hydra_plugins.conf_sha256.hashing import conf_sha256

from ..errors import UserError
from . import instantiate, schema

PARAMS_FILE = "params.yaml"
# Bookkeeping written at compose time; not a parameter of any result.
CONF_HASH_KEY = "conf_sha256"
# The train stage's command starts with trainer.launcher (dvc.yaml), so it names code: only
# python, or torchrun with its own --options, never a shell.
LAUNCHER = re.compile(r"(python|torchrun( --[a-z][a-z0-9-]*(=[A-Za-z0-9_.:,/-]+)?)*)")


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
    check_code_and_paths(params, str(path))
    schema.check(params, str(path))
    instantiate.check_names(
        OmegaConf.to_container(params), instantiate.committed_allowed_targets(workdir), str(path)
    )
    return params


def check_buildable(params: DictConfig, workdir: Path, source: str | None = None) -> None:
    """Resolve every ``_target_`` and check it against its slot: before a stage builds anything.

    The allow-list's extension is what ``workdir``'s commit holds; ``source`` names the params
    in messages (default: ``workdir``'s params.yaml).
    """
    allowed = instantiate.committed_allowed_targets(workdir)
    instantiate.check_objects(OmegaConf.to_container(params), allowed, source or str(workdir / PARAMS_FILE))


def _check_fresh(params: DictConfig, workdir: Path) -> None:
    recorded = params.get(CONF_HASH_KEY)
    current = conf_sha256(workdir / "conf")
    if recorded != current:
        raise UserError(
            f"{PARAMS_FILE} is stale: it was composed from a different conf/ "
            f"({CONF_HASH_KEY} {str(recorded)[:12]} != conf/ {current[:12]}). "
            "`dvc repro` does not recompose Hydra config; run `dvc exp run` instead."
        )


def check_code_and_paths(params: DictConfig, path: str) -> None:
    """The keys besides ``_target_`` that choose code or paths, which data must not choose freely.

    DVC writes params.yaml resolved, so an interpolation in it (``${oc.env:...}``) came from
    elsewhere and could copy a secret into a logged param.
    """
    for key, value in instantiate.leaves(OmegaConf.to_container(params, resolve=False)):
        if isinstance(value, str) and "${" in value:
            raise UserError(
                f"{path}: `{key}` holds an interpolation ({value}); params.yaml holds resolved values "
                "only. Recompose it with `dvc exp run`, and keep interpolations in conf/."
            )
    launcher = str(OmegaConf.select(params, "trainer.launcher", default="python"))
    if not LAUNCHER.fullmatch(launcher):
        raise UserError(
            f"{path}: `trainer.launcher={launcher}` is refused: the train stage's command starts "
            "with it, so it may be only `python` or `torchrun --option=value ...`. "
            "Choose a trainer with `-S trainer=ddp` or `-S trainer=cpu`."
        )
    data_dir = Path(str(OmegaConf.select(params, "data.dir", default="")))
    if data_dir.is_absolute() or ".." in data_dir.parts:
        raise UserError(
            f"{path}: `data.dir={data_dir}` must be a folder inside the project, relative to it "
            "(e.g. data/raw); DVC tracks it as a dependency."
        )


def resolved_params(params: DictConfig) -> dict:
    """Plain-Python params without compose-time bookkeeping: what a result depends on."""
    plain = OmegaConf.to_container(params, resolve=True)
    plain.pop(CONF_HASH_KEY, None)
    return plain
