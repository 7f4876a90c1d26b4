"""Command line: ``python -m <package> <stage>`` runs one DVC stage (dvc.yaml calls these)."""

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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        _run_stage(args.command)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def _run_stage(stage: str) -> None:
    from .config import load_params

    workdir = Path.cwd()
    params = load_params(workdir)
    # Imported only when chosen: each stage pulls in only what it needs (torch, MONAI, MLflow).
    module = importlib.import_module(f".stages.{stage}", __package__)
    module.run(params, workdir)
