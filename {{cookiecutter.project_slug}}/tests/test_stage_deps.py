"""Stage deps are the truth about re-runs: every project file a stage imports lies under its deps.

Otherwise an edit to that file leaves a stale result that DVC calls up to date. The closure
is computed from the sources (every import, including those inside functions), starting at
the entry point dvc.yaml runs: ``cli.py`` plus the stage's module. The plumbing (``lab/``) is
reached only through its seam, the ``lab`` package itself, which is no stage's dep: the closure
stops there, and no stage may import a module inside ``lab/`` directly.
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


def is_plumbing(path: Path, package: Path) -> bool:
    return (package / "lab") in path.parents


def closure(start: list[Path], package: Path) -> set[Path]:
    """The project files ``start`` imports, transitively, up to the plumbing's seam."""
    seen: set[Path] = set()
    todo = list(start)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        if is_plumbing(path, package):
            continue
        for name in imported_modules(path):
            todo += [found for part in with_packages(name) if (found := module_file(part)) is not None]
    return {path for path in seen if has_code(path)}


def under(path: str, deps: set[str]) -> bool:
    return any(path == dep or path.startswith(f"{dep}/") for dep in deps)


def stages() -> dict[str, dict]:
    return yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(stages()))
def test_every_imported_project_file_is_a_dep(pkg, stage: str) -> None:
    package = Path(pkg.__file__).parent
    start = [package / "cli.py"]
    if (package / "stages" / f"{stage}.py").is_file():
        start.append(package / "stages" / f"{stage}.py")
    reached = closure(start, package)
    seam = package / "lab" / "__init__.py"
    internals = sorted(path.name for path in reached if is_plumbing(path, package) and path != seam)
    assert not internals, f"stage {stage} imports lab/ internals {internals}; use the names `lab` exports"
    needed = {path.relative_to(PROJECT).as_posix() for path in reached if not is_plumbing(path, package)}
    deps = {str(dep).split()[0] for dep in stages()[stage].get("deps", [])}
    missing = sorted(path for path in needed if not under(path, deps))
    assert not missing, f"stage {stage} imports {missing}, which lie under none of its deps in dvc.yaml"
    assert not any(under(dep, {package.relative_to(PROJECT).as_posix() + "/lab"}) for dep in deps)


def test_stages_do_not_import_each_other(pkg) -> None:
    stage_files = sorted((Path(pkg.__file__).parent / "stages").glob("*.py"))
    for path in stage_files:
        others = {name for name in imported_modules(path) if ".stages." in name}
        assert not others, f"{path.name} imports {sorted(others)}; move shared names to paths.py"
