"""Finish a baked project: drop what the options turned off, fingerprint conf/, git commit.

Runs in cookiecutter's own interpreter: standard library and git only, no network, and safe
to run again on the same folder.
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


def remove_disabled_options() -> None:
    if LICENSE == "none":
        (PROJECT / "LICENSE").unlink(missing_ok=True)
    if CI_WORKFLOW == "none":
        shutil.rmtree(PROJECT / ".github", ignore_errors=True)


def fingerprint_conf() -> None:
    """Write conf/'s fingerprint into params.yaml, as `dvc exp run` would when it composes."""
    hashing_file = PROJECT / "src" / "hydra_plugins" / "conf_fingerprint" / "hashing.py"
    spec = importlib.util.spec_from_file_location("conf_fingerprint_hashing", hashing_file)
    hashing = importlib.util.module_from_spec(spec)
    sys.dont_write_bytecode = True  # leave no __pycache__ in the baked project
    spec.loader.exec_module(hashing)
    params = PROJECT / "params.yaml"
    fingerprint = hashing.conf_sha256(PROJECT / "conf")
    text = re.sub(r"(?m)^conf_sha256: .*$", f"conf_sha256: {fingerprint}", params.read_text())
    params.write_text(text)


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
    fingerprint_conf()
    initial_commit()
