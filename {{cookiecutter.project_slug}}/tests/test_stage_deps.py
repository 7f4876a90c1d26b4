"""Stage deps are the truth about re-runs: every project file a stage imports is in its deps.

Otherwise an edit to that file leaves a stale result that DVC calls up to date. The closure
is computed from the sources (every import, including those inside functions), starting at
the entry point dvc.yaml runs: ``cli.py`` plus the stage's module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[1]
SRC = PROJECT / "src"


def module_file(name: str) -> Path | None:
    """The project file of a dotted module name, or None for a module from elsewhere."""
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Dotted names of the modules ``path`` imports (``from . import a`` gives ``pkg.a``)."""
    package = ".".join(path.relative_to(SRC).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


def with_packages(name: str) -> list[str]:
    """``a.b.c`` and the packages Python imports first: ``a``, ``a.b``."""
    parts = name.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts) + 1)]


def has_code(path: Path) -> bool:
    """False for a file that holds only a docstring (most ``__init__.py``): it cannot change a result."""
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) for node in body)


def closure(start: list[Path]) -> set[Path]:
    seen: set[Path] = set()
    todo = list(start)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_modules(path):
            todo += [found for part in with_packages(name) if (found := module_file(part)) is not None]
    return {path for path in seen if has_code(path)}


def stages() -> dict[str, dict]:
    return yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(stages()))
def test_every_imported_project_file_is_a_dep(pkg, stage: str) -> None:
    package = Path(pkg.__file__).parent
    start = [package / "cli.py"]
    if (package / "stages" / f"{stage}.py").is_file():
        start.append(package / "stages" / f"{stage}.py")
    needed = {path.relative_to(PROJECT).as_posix() for path in closure(start)}
    deps = {str(dep).split()[0] for dep in stages()[stage].get("deps", [])}
    missing = sorted(needed - deps)
    assert not missing, f"stage {stage} imports {missing}, which dvc.yaml does not list as deps"


def test_stages_do_not_import_each_other(pkg) -> None:
    stage_files = sorted((Path(pkg.__file__).parent / "stages").glob("*.py"))
    for path in stage_files:
        others = {name for name in imported_modules(path) if ".stages." in name}
        assert not others, f"{path.name} imports {sorted(others)}; move shared names to layout.py"
