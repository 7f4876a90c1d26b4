"""Registers ``${conf_sha256:}``, which writes a hash of ``conf/`` into params.yaml.

DVC imports every module under ``hydra_plugins`` (found through ``plugins_path`` in
``.dvc/config``) before it composes ``conf/`` into params.yaml. Stages recompute the same
hash and refuse a params.yaml composed from another ``conf/``, because ``dvc repro``
does not recompose it.
"""

from pathlib import Path

from omegaconf import OmegaConf

from .hashing import conf_sha256


def _composed_conf_dir() -> Path:
    """conf/ of the repository DVC composes in: the nearest ``.dvc`` above the cwd.

    Not this file's location: the plugin may be imported from another checkout (an installed
    copy, or the main workspace while DVC works in a temporary copy).
    """
    here = Path.cwd().resolve()
    root = next((folder for folder in (here, *here.parents) if (folder / ".dvc").is_dir()), here)
    return root / "conf"


OmegaConf.register_new_resolver("conf_sha256", lambda: conf_sha256(_composed_conf_dir()), replace=True)
