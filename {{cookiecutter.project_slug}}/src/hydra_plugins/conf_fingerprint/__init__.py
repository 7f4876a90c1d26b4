"""Registers ``${conf_sha256:}``, which writes a fingerprint of ``conf/`` into params.yaml.

DVC imports every module under ``hydra_plugins`` (found through ``plugins_path`` in
``.dvc/config``) before it composes ``conf/`` into params.yaml. Stages recompute the same
fingerprint and refuse a params.yaml composed from another ``conf/``, because ``dvc repro``
does not recompose it.
"""

from pathlib import Path

from omegaconf import OmegaConf

from .hashing import conf_sha256

CONF_DIR = Path(__file__).resolve().parents[3] / "conf"

OmegaConf.register_new_resolver("conf_sha256", lambda: conf_sha256(CONF_DIR), replace=True)
