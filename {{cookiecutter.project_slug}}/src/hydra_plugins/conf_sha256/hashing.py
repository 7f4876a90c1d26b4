"""The project's one file-hashing function, and the hash of ``conf/``.

Standard library only: it runs in DVC's interpreter (through the resolver in ``__init__``),
in every stage, and in the template's post-generation hook, which has neither OmegaConf nor
the project installed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path


def sha256_of_files(root: Path, files: Iterable[Path]) -> str:
    """Hash file names (relative to ``root``) and contents, independent of listing order."""
    root = root.resolve()
    digest = hashlib.sha256()
    for relative in sorted(Path(f).resolve().relative_to(root).as_posix() for f in files):
        digest.update(relative.encode() + b"\0")
        digest.update(hashlib.sha256((root / relative).read_bytes()).digest())
    return digest.hexdigest()


def conf_sha256(conf_dir: Path) -> str:
    """The hash of every YAML file under ``conf_dir``."""
    return sha256_of_files(conf_dir, conf_dir.rglob("*.yaml"))
