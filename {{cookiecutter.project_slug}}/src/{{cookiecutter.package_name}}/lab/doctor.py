"""``doctor``: check a machine before its first run; one PASS/WARN/FAIL line per check, with the fix.

FAIL means a run would fail here (exit status 1); WARN means it would run, but not as well
as it could (e.g. on the CPU, or with no DVC remote to push to).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import provenance

# Below this much free space where the DVC cache lives, a run may die half-way through writing.
MIN_FREE_GIB = 2.0


@dataclass(frozen=True)
class Finding:
    level: str  # PASS, WARN or FAIL
    check: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        return f"{self.level:4}  {self.check}: {self.detail}" + (
            f"\n      fix: {self.fix}" if self.fix else ""
        )


def doctor(root: Path) -> bool:
    """Print every check's finding; True when none failed."""
    checks: list[Callable[[Path], Finding]] = [
        _python,
        _libraries,
        _cuda,
        _git_identity,
        _dvc_repo,
        _dvc_remote,
        _mlflow_store,
        _mlflow_login,
        _free_disk,
    ]
    findings = []
    for check in checks:
        try:
            finding = check(root)
        except Exception as error:  # a check that crashes is a failed check, not a crashed doctor
            finding = Finding("FAIL", check.__name__.strip("_").replace("_", " "), str(error))
        print(finding.line(), flush=True)
        findings.append(finding)
    failed = sum(finding.level == "FAIL" for finding in findings)
    print(f"{failed} failed, {sum(f.level == 'WARN' for f in findings)} warnings, {len(findings)} checks")
    return failed == 0


def _python(_root: Path) -> Finding:
    return Finding("PASS", "python", f"{platform.python_version()} ({sys.executable})")


def _libraries(_root: Path) -> Finding:
    versions = provenance.library_versions()
    return Finding(
        "PASS", "libraries", ", ".join(f"{k.removeprefix('env.')} {v}" for k, v in versions.items())
    )


def _cuda(_root: Path) -> Finding:
    import torch

    if not torch.cuda.is_available():
        detail = "no CUDA GPU visible; training runs on the CPU"
        if torch.version.cuda is None:
            fix = "this torch is a CPU build; install the CUDA wheel that matches your driver (README)"
        else:
            fix = f"torch is built for CUDA {torch.version.cuda}: check `nvidia-smi` and CUDA_VISIBLE_DEVICES"
        return Finding("WARN", "cuda", detail, fix)
    env = provenance.environment()
    return Finding(
        "PASS", "cuda", f"{env['env.gpu']}; CUDA {env['env.cuda']}, driver {env['env.gpu_driver']}"
    )


def _git_identity(root: Path) -> Finding:
    # As git itself resolves it: config, or GIT_AUTHOR_NAME/GIT_AUTHOR_EMAIL in the environment.
    # useConfigOnly: a guessed identity (root@hostname) is not one to commit experiments with.
    command = ["git", "-c", "user.useConfigOnly=true", "var", "GIT_AUTHOR_IDENT"]
    ident = subprocess.run(command, cwd=root, capture_output=True, text=True)
    if ident.returncode != 0:
        fix = 'git config --global user.name "Your Name"; git config --global user.email you@example.org'
        return Finding("FAIL", "git identity", "not set: experiments cannot be committed", fix)
    return Finding("PASS", "git identity", ident.stdout.rsplit(" ", 2)[0])


def _dvc_repo(root: Path) -> Finding:
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            return Finding("PASS", "dvc repo", repo.root_dir)
    except NotDvcRepoError:
        return Finding("FAIL", "dvc repo", f"{root} is not inside a DVC repository", "run it in the project")


def _dvc_remote(root: Path) -> Finding:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        name = repo.config["core"].get("remote")
        if not name:
            fix = "dvc remote add -d storage <url> (see README, Team setup)"
            return Finding("WARN", "dvc remote", "no default remote: `dvc push` has nowhere to go", fix)
        remote = repo.cloud.get_remote(name)
        try:
            remote.fs.ls(remote.path)
        except FileNotFoundError:
            pass  # an empty remote is fine: the first `dvc push` creates the folder
        except Exception as error:
            fix = "check its URL (dvc remote list) and credentials (.dvc/config.local or the environment)"
            return Finding("FAIL", "dvc remote", f"{name} ({remote.path}) is unreachable: {error}", fix)
        return Finding("PASS", "dvc remote", f"{name} ({remote.path}) reachable")


def _mlflow_store(root: Path) -> Finding:
    import mlflow
    from hydra import compose, initialize_config_dir

    from .tracking import connect, tracking_uri

    uri = tracking_uri(root)
    # A server that is down answers at once; MLflow's default retries would take minutes.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    # Writing an experiment tag proves the store takes writes, and leaves no run behind.
    # The experiment the next `dvc exp run` logs to: conf/ as it is now, which params.yaml may
    # not follow yet (an edited conf/ is normal before a run; the run recomposes it).
    with initialize_config_dir(str(root / "conf"), version_base=None):
        experiment_name = compose(config_name="config").tracking.experiment_name
    experiment_id = connect(experiment_name, root)
    mlflow.MlflowClient(uri).set_experiment_tag(experiment_id, "doctor.checked_at", str(int(time.time())))
    return Finding("PASS", "mlflow store", f"{uri} reachable and writable")


def _mlflow_login(root: Path) -> Finding:
    """A tracking server that answers without credentials lets anyone write what others reproduce."""
    from .reachability import is_server, probe, unreachable_reason
    from .tracking import tracking_uri

    uri = tracking_uri(root)
    if not is_server(uri):
        return Finding("PASS", "mlflow login", "a local store on this machine; no server to log in to")
    if reason := unreachable_reason(uri):
        return Finding("WARN", "mlflow login", f"not checked: {uri} does not answer ({reason})")
    # A read without credentials: MLflow's basic-auth app answers 401 to every request without
    # them, so a 200 means the server takes writes from anyone who can reach it.
    status = probe(uri, "api/2.0/mlflow/experiments/search?max_results=1").status_code
    if status != 401:
        return Finding(
            "WARN",
            "mlflow login",
            f"{uri} answers without credentials (HTTP {status}): anyone who can reach it can log runs",
            "start it with `server --host ...`, which asks for a login (README, Team setup)",
        )
    credentials_file = Path.home() / ".mlflow" / "credentials"  # MLflow's own, read by its clients
    if not (os.environ.get("MLFLOW_TRACKING_PASSWORD") or credentials_file.is_file()):
        return Finding(
            "FAIL",
            "mlflow login",
            f"{uri} asks for a login, and none is set",
            "export MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or use ~/.mlflow/credentials)",
        )
    return Finding("PASS", "mlflow login", f"{uri} asks for a login, and one is set")


def _free_disk(root: Path) -> Finding:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        cache = Path(repo.cache.local.path)
    existing = next(path for path in (cache, *cache.parents) if path.exists())
    free_gib = shutil.disk_usage(existing).free / 2**30
    detail = f"{free_gib:.1f} GiB free for the DVC cache ({cache})"
    if free_gib < MIN_FREE_GIB:
        fix = "free space, or move the cache: dvc cache dir <folder on a larger disk>"
        return Finding("FAIL", "disk", detail, fix)
    return Finding("PASS", "disk", detail)
