"""Finish a baked project: drop what the options turned off, hash conf/ into params.yaml, git commit.

Runs in cookiecutter's own interpreter: standard library and git only, and safe to run again
on the same folder. Its one download, the plots page's chart libraries from the npm registry,
may fail without failing the bake.
"""

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

PROJECT = Path.cwd()
LICENSE = "{{ cookiecutter.license }}"
CI_WORKFLOW = "{{ cookiecutter.ci_workflow }}"
AUTHOR = ("{{ cookiecutter.author_name }}", "{{ cookiecutter.author_email }}")
PACKAGE = "{{ cookiecutter.package_name }}"
SLUG = "{{ cookiecutter.project_slug }}"


def remove_disabled_options() -> None:
    if LICENSE == "none":
        (PROJECT / "LICENSE").unlink(missing_ok=True)
    if CI_WORKFLOW == "none":
        shutil.rmtree(PROJECT / ".github", ignore_errors=True)


def load_project_module(name: str, path: Path):
    """A standard-library-only module of the project, loaded from its file (not installed yet)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.dont_write_bytecode = True  # leave no __pycache__ in the baked project
    spec.loader.exec_module(module)
    return module


def hash_conf() -> None:
    """Write conf/'s hash into params.yaml, as `dvc exp run` would when it composes."""
    hashing_file = PROJECT / "src" / "hydra_plugins" / "conf_sha256" / "hashing.py"
    hashing = load_project_module("conf_sha256_hashing", hashing_file)
    params = PROJECT / "params.yaml"
    conf_hash = hashing.conf_sha256(PROJECT / "conf")
    text = re.sub(r"(?m)^conf_sha256: .*$", f"conf_sha256: {conf_hash}", params.read_text())
    params.write_text(text)


def offline_plots_page() -> None:
    """Write the page `dvc plots show` fills, with vega inlined; a bake without network still succeeds."""
    module_file = PROJECT / "src" / PACKAGE / "lab" / "offline_plots.py"
    offline_plots = load_project_module("offline_plots", module_file)
    try:
        offline_plots.write_offline_page(PROJECT / ".dvc")
    except offline_plots.FetchError as error:
        command = f"{SLUG} plots-offline"
        offline_plots.write_cdn_page(PROJECT / ".dvc", command)
        print(
            f"WARNING: {error}.\n"
            f"`dvc plots show` pages load vega from a CDN until you run `{command}` with network "
            "(after the install), then commit .dvc/plots/offline.html."
        )


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=PROJECT, capture_output=True, text=True, check=False)


def initial_commit() -> None:
    """Make the project a git repository with a first commit, unless a repository tracks it.

    Inside an enclosing work tree that tracks this folder (a monorepo), the project stays a
    folder of it. Inside one that ignores it (a scratch or demo folder), it becomes a
    repository of its own: DVC refuses to run a git-ignored dvc.yaml (ignored with its folder
    or by a pattern of its own).
    """
    if git("rev-parse", "--is-inside-work-tree").returncode == 0:
        top = Path(git("rev-parse", "--show-toplevel").stdout.strip())
        if top == PROJECT.resolve():
            return  # already its own repository: the hook runs again on the same folder
        if git("check-ignore", "--quiet", "dvc.yaml").returncode != 0:
            folder = PROJECT.resolve().relative_to(top)
            print(
                f"{top} is a git repository that tracks this folder, so the project stays part of it.\n"
                f"Commit it there: git -C {top} add {folder} && git -C {top} commit -m 'Add {folder.name}'\n"
                f"Run dvc inside {PROJECT.resolve()}; DVC treats it as a subdirectory project."
            )
            return
    git("init", "--quiet", "--initial-branch=main")
    git("add", "--all")
    identity = []
    if not git("config", "user.email").stdout.strip():
        identity = ["-c", f"user.name={AUTHOR[0]}", "-c", f"user.email={AUTHOR[1]}"]
    result = git(*identity, "commit", "--quiet", "-m", "Initial project from the segmentation template")
    if result.returncode != 0:
        print(f"WARNING: git commit failed ({result.stderr.strip()}); commit the files yourself.")


if __name__ == "__main__":
    remove_disabled_options()
    hash_conf()
    offline_plots_page()  # before the first commit, which then holds the page
    initial_commit()
