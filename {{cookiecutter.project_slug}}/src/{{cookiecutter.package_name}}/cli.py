"""Command line: the DVC stages (dvc.yaml calls these), `predict`, `search`, and the provenance tools."""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from .errors import Interrupted, UserError

STAGES = ("synthesize", "fingerprint", "preprocess", "train", "evaluate")
RUN_ID = (("run_id",), {"nargs": "?", "help": "MLflow run id (default: the workspace's latest run)"})
# Each command: its help line and its arguments, as (flags, add_argument options).
COMMANDS: dict[str, tuple[str, list[tuple[tuple[str, ...], dict]]]] = {
    **{stage: (f"run the {stage} stage with ./params.yaml", []) for stage in STAGES},
    "check-params": ("check every key of params.yaml, and that it was composed from this conf/", []),
    "predict": (
        "segment NIfTI files with a trained model",
        [
            (("inputs",), {"nargs": "+", "metavar": "INPUT", "help": "NIfTI files, or folders of them"}),
            (
                ("--model",),
                {
                    "help": "MLflow run id, models:/<name>@<alias> or /<version>, or a checkpoint "
                    "(.pt) (default: models:/<tracking.experiment_name>@champion)"
                },
            ),
            (("--output",), {"type": Path, "default": Path("predictions"), "help": "folder for the masks"}),
            (("--overlap",), {"type": float, "default": 0.25, "help": "sliding-window overlap fraction"}),
        ],
    ),
    "search": (
        "Bayesian search (Optuna) over conf/search.yaml; trials are DVC experiments",
        [
            (("--trials",), {"type": int, "required": True, "help": "finished trials the study should hold"}),
            (("--jobs",), {"type": int, "default": 1, "help": "trials run at once, through DVC's queue"}),
            (("--study",), {"default": "search", "help": "study name; also prefixes the experiments' names"}),
            (
                ("-S",),
                {
                    "dest": "fixed",
                    "action": "append",
                    "default": [],
                    "metavar": "KEY=VALUE",
                    "help": "a value every trial uses",
                },
            ),
        ],
    ),
    "verify": ("recompute a run's data, code and params hashes here", [RUN_ID]),
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=__package__, description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (text, arguments) in COMMANDS.items():
        command = commands.add_parser(name, help=text)
        for flags, options in arguments:
            command.add_argument(*flags, **options)
    args = parser.parse_args(argv)
    # The project's own lines at INFO; libraries only when they warn.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger(__package__).setLevel(logging.INFO)
    try:
        sys.exit(0 if _dispatch(args) else 1)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as stop:
        name = signal.Signals(stop.signum).name
        print(f"error: stopped by {name}; see the log above for what was saved", file=sys.stderr)
        sys.exit(128 + stop.signum)  # the shell's status for a process ended by that signal


def _dispatch(args: argparse.Namespace) -> bool:
    """Run the command; False means it ran but found a difference (exit status 1)."""
    return RUNNERS.get(args.command, _stage)(args, Path.cwd())


# Each command imports only its own module, when it runs, so that a stage's process loads no
# tool's code and `--help` loads no torch.
def _module(name: str) -> ModuleType:
    return importlib.import_module(name, __package__)


def _root() -> Path:
    return _module(".config.params").repo_root()


def _stage(args: argparse.Namespace, workdir: Path) -> bool:
    config = _module(".config.params")
    params = config.load_params(workdir)
    if args.command == "check-params":
        return True
    if args.command in ("train", "evaluate"):
        config.check_buildable(
            params, workdir
        )  # every `_target_` resolved and checked before anything is built
        # A tracking server that does not answer stops the stage before it loads anything.
        _module(".lab.tracking").check_server(_root())
    # Imported only when chosen: each stage pulls in only what it needs (torch, MONAI, MLflow).
    _module(f".stages.{args.command}").run(params, workdir)
    return True


def _verify(args: argparse.Namespace, workdir: Path) -> bool:
    return _module(".lab.verify").verify(args.run_id, workdir)


def _reproduce(args: argparse.Namespace, workdir: Path) -> bool:
    run_id = args.run_id or _module(".lab.verify").latest_run_id(workdir)
    return _module(".lab.reproduce").reproduce(run_id, _root(), args.tolerance)


def _doctor(_args: argparse.Namespace, _workdir: Path) -> bool:
    return _module(".lab.doctor").doctor(_root())


def _server(args: argparse.Namespace, _workdir: Path) -> bool:
    server = _module(".lab.server")
    stores = (args.backend_store_uri, args.artifacts_destination)
    command, env = server.server_command(*stores, args.host, args.port, args.mlflow_args, not args.no_auth)
    return server.serve(command, env)


def _sync(_args: argparse.Namespace, _workdir: Path) -> bool:
    _module(".lab.sync").sync(_root())
    return True


def _search(args: argparse.Namespace, _workdir: Path) -> bool:
    _module(".lab.search").search(_root(), args.trials, args.jobs, args.study, args.fixed)
    return True


def _predict(args: argparse.Namespace, workdir: Path) -> bool:
    _module(".inference.predict").predict_files(args.inputs, args.model, args.output, args.overlap, workdir)
    return True


def _plots_offline(_args: argparse.Namespace, _workdir: Path) -> bool:
    offline_plots = _module(".lab.offline_plots")
    try:
        page = offline_plots.write_offline_page(_root() / ".dvc")
    except offline_plots.FetchError as error:
        raise UserError(f"{error}. It needs the npm registry once; the download is cached.") from error
    print(f"Wrote {page}; commit it so that the lab's pages render offline too.")
    return True


# The commands that are not stages; each returns False when it ran but found a difference.
RUNNERS: dict[str, Callable[[argparse.Namespace, Path], bool]] = {
    "verify": _verify,
    "reproduce": _reproduce,
    "doctor": _doctor,
    "server": _server,
    "sync": _sync,
    "search": _search,
    "predict": _predict,
    "plots-offline": _plots_offline,
}
