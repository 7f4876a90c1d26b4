"""Command line: the DVC stages (dvc.yaml calls these) and provenance tools."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from .errors import UserError

STAGES = ("synthesize", "preprocess", "train", "evaluate")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=__package__, description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for stage in STAGES:
        commands.add_parser(stage, help=f"run the {stage} stage with ./params.yaml")
    verify = commands.add_parser("verify", help="recompute a run's data, code and params hashes here")
    verify.add_argument("run_id", nargs="?", help="MLflow run id (default: the workspace's latest run)")
    reproduce = commands.add_parser("reproduce", help="re-run a run from its recorded inputs and compare")
    reproduce.add_argument("run_id", nargs="?", help="MLflow run id (default: the workspace's latest run)")
    reproduce.add_argument(
        "--tolerance", type=float, help="allowed |difference| per metric (default: 0 on CPU, 0.01 on GPU)"
    )
    commands.add_parser("sync", help="tag MLflow runs with the commit DVC made for their experiment")
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


def _dispatch(args: argparse.Namespace) -> bool:
    """Run the command; False means it ran but found a difference (exit status 1)."""
    from .config import load_params, repo_root

    workdir = Path.cwd()
    if args.command == "verify":
        from .verify import verify

        return verify(args.run_id, workdir)
    if args.command == "reproduce":
        from .reproduce import reproduce
        from .verify import latest_run_id

        return reproduce(args.run_id or latest_run_id(workdir), repo_root(), args.tolerance)
    if args.command == "sync":
        from .sync import sync

        sync(repo_root())
        return True
    params = load_params(workdir)
    if args.command == "check-params":
        return True
    # Imported only when chosen: each stage pulls in only what it needs (torch, MONAI, MLflow).
    module = importlib.import_module(f".stages.{args.command}", __package__)
    module.run(params, workdir)
    return True
