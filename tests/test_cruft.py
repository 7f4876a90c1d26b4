"""Template updates with cruft: bake at one template commit, edit the project, change the
template, `cruft update`; the template's change arrives and the user's edit survives."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from conftest import DEFAULT_SLUG, TEMPLATE, run

pytestmark = pytest.mark.slow

TEMPLATE_CHANGE = "# A line the template added after the project was baked.\n"
USER_EDIT = "\n## Lab notes\n\nOur scanner exports NIfTI with a flipped z axis.\n"


def cruft(*args: str, cwd: Path) -> str:
    return run([sys.executable, "-m", "cruft", *args], cwd=cwd).stdout


def git(*args: str, cwd: Path) -> str:
    return run(["git", *args], cwd=cwd).stdout.strip()


@pytest.fixture
def template_repo(tmp_path: Path) -> Path:
    """This template's files (committed and not) as a git repository of its own."""
    repo = tmp_path / "template"
    listing = git(
        "ls-files", "--cached", "--others", "--exclude-standard", cwd=TEMPLATE
    )
    for name in listing.splitlines():
        source = TEMPLATE / name
        if source.is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, repo / name)
    git("init", "--quiet", "--initial-branch=main", cwd=repo)
    git("add", "--all", cwd=repo)
    git("commit", "--quiet", "-m", "template", cwd=repo)
    return repo


def test_cruft_update_brings_a_template_change_and_keeps_the_users_edit(
    template_repo: Path, tmp_path: Path
) -> None:
    cruft(
        "create",
        str(template_repo),
        "--no-input",
        "--output-dir",
        str(tmp_path / "out"),
        cwd=tmp_path,
    )
    project = tmp_path / "out" / DEFAULT_SLUG
    state = json.loads((project / ".cruft.json").read_text())
    assert state["commit"] == git("rev-parse", "HEAD", cwd=template_repo)
    # The hook made the project a repository once; commit .cruft.json and the user's edit.
    with (project / "README.md").open("a") as readme:
        readme.write(USER_EDIT)
    git("add", "--all", cwd=project)
    git("commit", "--quiet", "-m", "Track the template; lab notes", cwd=project)
    commits_before = git("rev-list", "--count", "HEAD", cwd=project)
    params_before = (project / "params.yaml").read_text()

    makefile = template_repo / "{{cookiecutter.project_slug}}" / "Makefile"
    makefile.write_text(TEMPLATE_CHANGE + makefile.read_text())
    git("commit", "--quiet", "--all", "-m", "template change", cwd=template_repo)

    output = cruft("update", "--skip-apply-ask", cwd=project)
    assert "Good work" in output
    assert (project / "Makefile").read_text().startswith(TEMPLATE_CHANGE)
    assert (project / "README.md").read_text().endswith(USER_EDIT)
    assert (project / "params.yaml").read_text() == params_before
    # No second `git init` or commit: the update is left for the user to review and commit.
    assert git("rev-list", "--count", "HEAD", cwd=project) == commits_before
    assert not list(project.rglob("*.rej"))
    state = json.loads((project / ".cruft.json").read_text())
    assert state["commit"] == git("rev-parse", "HEAD", cwd=template_repo)
    changed = git("diff", "HEAD", "--name-only", cwd=project).splitlines()
    assert sorted(changed) == [".cruft.json", "Makefile"]
