"""Command line: the DVC stages (dvc.yaml calls these), `predict`, `search`, and the provenance tools."""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
from pathlib import Path

from .errors import Interrupted, UserError

STAGES = ("synthesize", "fingerprint", "preprocess", "train", "evaluate")
# The module of each command that is not a stage: the lab's tools, and inference.
TOOLS = {
    "predict": ".inference.predict",
    **{tool: f".lab.{tool}" for tool in ("verify", "reproduce", "sync", "search", "doctor", "server")},
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=__package__, description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for stage in STAGES:
        commands.add_parser(stage, help=f"run the {stage} stage with ./params.yaml")
    predict = commands.add_parser("predict", help="segment NIfTI files with a trained model")
    predict.add_argument("inputs", nargs="+", metavar="INPUT", help="NIfTI files, or folders of them")
    predict.add_argument(
        "--model",
        help="MLflow run id, models:/<name>@<alias> or /<version>, or a checkpoint (.pt) "
        "(default: models:/<tracking.experiment_name>@champion)",
    )
    predict.add_argument("--output", type=Path, default=Path("predictions"), help="folder for the masks")
    predict.add_argument("--overlap", type=float, default=0.25, help="sliding-window overlap fraction")
    search = commands.add_parser(
        "search", help="Bayesian search (Optuna) over conf/search.yaml; trials are DVC experiments"
    )
    search.add_argument("--trials", type=int, required=True, help="finished trials the study should hold")
    search.add_argument("--jobs", type=int, default=1, help="trials run at once, through DVC's queue")
    search.add_argument("--study", default="search", help="study name; also prefixes the experiments' names")
    search.add_argument(
        "-S", dest="fixed", action="append", default=[], metavar="KEY=VALUE", help="a value every trial uses"
    )
    verify = commands.add_parser("verify", help="recompute a run's data, code and params hashes here")
    verify.add_argument("run_id", nargs="?", help="MLflow run id (default: the workspace's latest run)")
    reproduce = commands.add_parser("reproduce", help="re-run a run from its recorded inputs and compare")
    reproduce.add_argument("run_id", nargs="?", help="MLflow run id (default: the workspace's latest run)")
    reproduce.add_argument(
        "--tolerance", type=float, help="allowed |difference| per metric (default: 0 on CPU, 0.01 on GPU)"
    )
    commands.add_parser("sync", help="tag MLflow runs with the commit DVC made for their experiment")
    server = commands.add_parser(
        "server",
        help="start the lab's MLflow server: runs in PostgreSQL, artifacts in S3 (README, Team setup)",
    )
    server.add_argument(
        "--backend-store-uri",
        help="postgresql://<user>@<host>/<database> (default: $MLFLOW_BACKEND_STORE_URI)",
    )
    server.add_argument(
        "--artifacts-destination", help="s3://<bucket>/<prefix> (default: $MLFLOW_ARTIFACTS_DESTINATION)"
    )
    server.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; 0.0.0.0 opens it to the network, with MLflow's login (README)",
    )
    server.add_argument(
        "--no-auth",
        action="store_true",
        help="beyond 127.0.0.1, run without login: anyone who can reach the server can log runs",
    )
    server.add_argument("--port", type=int, default=5000, help="port to listen on")
    server.add_argument(
        "mlflow_args", nargs="*", metavar="-- MLFLOW_OPTION", help="more `mlflow server` options"
    )
    commands.add_parser(
        "doctor", help="check this machine before a first run (versions, GPU, git, DVC, MLflow, disk)"
    )
    commands.add_parser(
        "plots-offline", help="put vega into the page `dvc plots show` writes, so that it renders offline"
    )
    commands.add_parser("check-params", help="fail if params.yaml was composed from another conf/")
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
    """Run the command; False means it ran but found a difference (exit status 1).

    Each command imports only its own module (by name), so that a stage's process loads no
    tool's code and `--help` loads no torch.
    """
    from .config.params import check_buildable, load_params, repo_root

    workdir = Path.cwd()
    if args.command in TOOLS:
        command = importlib.import_module(TOOLS[args.command], __package__)
    if args.command == "verify":
        return command.verify(args.run_id, workdir)
    if args.command == "reproduce":
        run_id = args.run_id or importlib.import_module(".lab.verify", __package__).latest_run_id(workdir)
        return command.reproduce(run_id, repo_root(), args.tolerance)
    if args.command == "doctor":
        return command.doctor(repo_root())
    if args.command == "server":
        stores = (args.backend_store_uri, args.artifacts_destination)
        line, env = command.server_command(*stores, args.host, args.port, args.mlflow_args, not args.no_auth)
        return command.serve(line, env)
    if args.command == "sync":
        command.sync(repo_root())
        return True
    if args.command == "search":
        command.search(repo_root(), args.trials, args.jobs, args.study, args.fixed)
        return True
    if args.command == "predict":
        command.predict(args.inputs, args.model, args.output, args.overlap, workdir)
        return True
    if args.command == "plots-offline":
        offline_plots = importlib.import_module(".lab.offline_plots", __package__)
        try:
            page = offline_plots.write_offline_page(repo_root() / ".dvc")
        except offline_plots.FetchError as error:
            raise UserError(f"{error}. It needs the npm registry once; the download is cached.") from error
        print(f"Wrote {page}; commit it so that the lab's pages render offline too.")
        return True
    params = load_params(workdir)
    if args.command == "check-params":
        return True
    if args.command in ("train", "evaluate"):
        check_buildable(params, workdir)  # every `_target_` resolved and checked before anything is built
        # A tracking server that does not answer stops the stage before it loads anything.
        importlib.import_module(".lab.tracking", __package__).check_server(repo_root())
    # Imported only when chosen: each stage pulls in only what it needs (torch, MONAI, MLflow).
    stage = importlib.import_module(f".stages.{args.command}", __package__)
    stage.run(params, workdir)
    return True
