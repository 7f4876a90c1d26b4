"""Fixtures shared by the unit tests: the project root and its package, found by name at run time.

The package name is discovered from ``src/`` rather than written here, so that these tests
carry no template variables and run unchanged in every baked project.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _package_name() -> str:
    """The one importable package under ``src/`` besides the Hydra plugin namespace."""
    src = PROJECT_ROOT / "src"
    names = sorted(
        path.name
        for path in src.iterdir()
        if (path / "__init__.py").is_file() and path.name != "hydra_plugins"
    )
    if len(names) != 1:
        raise RuntimeError(f"Expected exactly one package under {src}, found {names}.")
    return names[0]


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT_ROOT


@pytest.fixture(scope="session")
def pkg() -> ModuleType:
    return importlib.import_module(_package_name())


@pytest.fixture
def package_module(pkg: ModuleType) -> Callable[[str], ModuleType]:
    """Import a submodule of the package by its short name, e.g. ``package_module("msd")``."""

    def load(name: str) -> ModuleType:
        return importlib.import_module(f"{pkg.__name__}.{name}")

    return load
