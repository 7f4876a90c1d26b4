"""The lab's tools on the command line: their options and what each runs.

``cli.py`` adds these to the stages' commands. They live here, apart from the stages' entry
point, so that an edit to a tool's options re-runs no stage.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

# Each runner imports its tool's module only when it runs, so that `--help` loads no MLflow.
from ..cli import package_module, repo_root
from ..errors import UserError

# `-S key=value`, repeatable: a value every experiment the tool queues uses, as for `dvc exp run`.
FIXED = (
    ("-S",),
    {"dest": "fixed", "action": "append", "default": [], "metavar": "KEY=VALUE", "help": "as dvc exp run -S"},
)
RUN_ID = (("run_id",), {"nargs": "?", "help": "MLflow run id (default: the workspace's latest run)"})
# Each command: its help line and its arguments, as (flags, add_argument options).
COMMANDS: dict[str, tuple[str, list[tuple[tuple[str, ...], dict]]]] = {
    "search": (
        "Bayesian search (Optuna) over conf/search.yaml; trials are DVC experiments",
        [
            (("--trials",), {"type": int, "required": True, "help": "finished trials the study should hold"}),
            (("--jobs",), {"type": int, "default": 1, "help": "trials run at once, through DVC's queue"}),
            (("--study",), {"default": "search", "help": "study name; also prefixes the experiments' names"}),
            (
                ("--storage",),
                {
                    "help": "the study's storage: sqlite:///<file> or postgresql://<user>@<host>/<db> "
                    "(default: `storage` in conf/search.yaml, sqlite:///optuna.db)"
                },
            ),
            (
                ("--push",),
                {
                    "nargs": "?",
                    "const": "origin",
                    "metavar": "GIT_REMOTE",
                    "help": "`dvc exp push` each trial to this git remote (default: origin)",
                },
            ),
            FIXED,
        ],
    ),
    "cv": (
        "cross-validation: one queued DVC experiment per fold (data.fold), then their summary",
        [
            (("--jobs",), {"type": int, "default": 1, "help": "folds run at once, through DVC's queue"}),
            (("--summary",), {"action": "store_true", "help": "only summarise the folds already run"}),
            (("--group",), {"help": "the cv.group to summarise (default: that of conf/ with the -S given)"}),
            FIXED,
        ],
    ),
    "ensemble": (
        "score several models combined (mean softmax) on the test set; --register makes it a version",
        [
            (
                ("models",),
                {"nargs": "+", "metavar": "MODEL", "help": "MLflow run ids, models:/ URIs, or cv:<group>"},
            ),
            (
                ("--tta",),
                {"choices": ["none", "flip"], "default": "none", "help": "flip: add mirrored passes"},
            ),
            (("--register",), {"action": "store_true", "help": "register it; it may become the champion"}),
        ],
    ),
    "verify": ("recompute a run's data, code and params hashes here", [RUN_ID]),
    "compare": (
        "is B really better than A? paired per-case differences, bootstrap interval, Wilcoxon",
        [
            (("a",), {"help": "an evaluate run id, DVC experiment or models:/ URI; several joined by ,"}),
            (("b",), {"help": "the same kinds, compared against A"}),
            (("--resamples",), {"type": int, "default": 9999, "help": "bootstrap resamples"}),
            (("--seed",), {"type": int, "default": 0, "help": "seed of the bootstrap"}),
        ],
    ),
    "reproduce": (
        "re-run a run from its recorded inputs and compare",
        [
            RUN_ID,
            (
                ("--tolerance",),
                {"type": float, "help": "allowed |difference| per metric (default: 0 on CPU, 0.01 on GPU)"},
            ),
        ],
    ),
    "sync": ("tag MLflow runs with the commit DVC made for their experiment", []),
    "server": (
        "start the lab's MLflow server: runs in PostgreSQL, artifacts in S3 (README, Team setup)",
        [
            (
                ("--backend-store-uri",),
                {"help": "postgresql://<user>@<host>/<database> (default: $MLFLOW_BACKEND_STORE_URI)"},
            ),
            (
                ("--artifacts-destination",),
                {"help": "s3://<bucket>/<prefix> (default: $MLFLOW_ARTIFACTS_DESTINATION)"},
            ),
            (
                ("--host",),
                {
                    "default": "127.0.0.1",
                    "help": "address to listen on; 0.0.0.0 opens it to the "
                    "network, with MLflow's login (README)",
                },
            ),
            (
                ("--no-auth",),
                {
                    "action": "store_true",
                    "help": "beyond 127.0.0.1, run without login: anyone "
                    "who can reach the server can log runs",
                },
            ),
            (("--port",), {"type": int, "default": 5000, "help": "port to listen on"}),
            (
                ("mlflow_args",),
                {"nargs": "*", "metavar": "-- MLFLOW_OPTION", "help": "more `mlflow server` options"},
            ),
        ],
    ),
    "doctor": ("check this machine before a first run (versions, GPU, git, DVC, MLflow, disk)", []),
    "plots-offline": ("put vega into the page `dvc plots show` writes, so that it renders offline", []),
}


def _verify(args: argparse.Namespace, workdir: Path) -> bool:
    return package_module(".lab.verify").verify(args.run_id, workdir)


def _compare(args: argparse.Namespace, _workdir: Path) -> bool:
    package_module(".lab.compare").compare(repo_root(), args.a, args.b, args.resamples, args.seed)
    return True


def _reproduce(args: argparse.Namespace, workdir: Path) -> bool:
    run_id = args.run_id or package_module(".lab.verify").latest_run_id(workdir)
    return package_module(".lab.reproduce").reproduce(run_id, repo_root(), args.tolerance)


def _doctor(_args: argparse.Namespace, _workdir: Path) -> bool:
    return package_module(".lab.doctor").doctor(repo_root())


def _server(args: argparse.Namespace, _workdir: Path) -> bool:
    server = package_module(".lab.server")
    stores = (args.backend_store_uri, args.artifacts_destination)
    command, env = server.server_command(*stores, args.host, args.port, args.mlflow_args, not args.no_auth)
    return server.serve(command, env)


def _sync(_args: argparse.Namespace, _workdir: Path) -> bool:
    package_module(".lab.sync").sync(repo_root())
    return True


def _search(args: argparse.Namespace, _workdir: Path) -> bool:
    package_module(".lab.search").search(
        repo_root(), args.trials, args.jobs, args.study, args.fixed, args.storage, args.push
    )
    return True


def _ensemble(args: argparse.Namespace, workdir: Path) -> bool:
    package_module(".lab.ensemble").ensemble(repo_root(), workdir, args.models, args.tta, args.register)
    return True


def _cv(args: argparse.Namespace, _workdir: Path) -> bool:
    package_module(".lab.cv").cv(repo_root(), args.jobs, args.fixed, args.summary, args.group)
    return True


def _plots_offline(_args: argparse.Namespace, _workdir: Path) -> bool:
    offline_plots = package_module(".lab.offline_plots")
    try:
        page = offline_plots.write_offline_page(repo_root() / ".dvc")
    except offline_plots.FetchError as error:
        raise UserError(f"{error}. It needs the npm registry once; the download is cached.") from error
    print(f"Wrote {page}; commit it so that the lab's pages render offline too.")
    return True


# Each returns False when it ran but found a difference (exit status 1).
RUNNERS: dict[str, Callable[[argparse.Namespace, Path], bool]] = {
    "verify": _verify,
    "compare": _compare,
    "reproduce": _reproduce,
    "doctor": _doctor,
    "server": _server,
    "sync": _sync,
    "search": _search,
    "cv": _cv,
    "ensemble": _ensemble,
    "plots-offline": _plots_offline,
}
