"""Command line: the DVC stages (dvc.yaml calls these) and `predict` here; the lab's tools (verify,
reproduce, sync, search, server, doctor, plots-offline) from ``lab/commands.py``."""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from .errors import Interrupted, UserError

STAGES = ("synthesize", "fingerprint", "preprocess", "train", "evaluate")
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
                    "action": "append",
                    "help": "MLflow run id, models:/<name>@<alias> or /<version>, a checkpoint (.pt), or "
                    "cv:<group> (a cv run's folds); repeat it for an ensemble "
                    "(default: models:/<tracking.experiment_name>@champion)",
                },
            ),
            (
                ("--tta",),
                {
                    "choices": ["none", "flip"],
                    "help": "flip: add mirrored passes (default: none, or as a registered ensemble was)",
                },
            ),
            (("--output",), {"type": Path, "default": Path("predictions"), "help": "folder for the masks"}),
            (("--overlap",), {"type": float, "default": 0.25, "help": "sliding-window overlap fraction"}),
        ],
    ),
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    known, runners = COMMANDS, RUNNERS
    # A stage's process reads no tool's code, so that the tools are no stage's dep in dvc.yaml.
    if not (argv[:1] and argv[0] in COMMANDS):
        tools = package_module(".lab.commands")
        known, runners = COMMANDS | tools.COMMANDS, RUNNERS | tools.RUNNERS
    parser = argparse.ArgumentParser(prog=__package__, description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (text, arguments) in known.items():
        command = commands.add_parser(name, help=text)
        for flags, options in arguments:
            command.add_argument(*flags, **options)
    args = parser.parse_args(argv)
    if args.command not in COMMANDS:  # a tool: it loads what it needs as it goes
        resume_collector()
    # The project's own lines at INFO; libraries only when they warn.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger(__package__).setLevel(logging.INFO)
    try:
        # False: the command ran but found a difference (exit status 1).
        sys.exit(0 if runners.get(args.command, _stage)(args, Path.cwd()) else 1)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as stop:
        name = signal.Signals(stop.signum).name
        print(f"error: stopped by {name}; see the log above for what was saved", file=sys.stderr)
        sys.exit(128 + stop.signum)  # the shell's status for a process ended by that signal


# Each command imports only its own module, when it runs, so that a stage loads only what it
# needs and `--help` loads no torch.
def package_module(name: str) -> ModuleType:
    """A module of this package by its relative name, e.g. ``.lab.verify``, imported now."""
    return importlib.import_module(name, __package__)


def resume_collector() -> None:
    """Turn the cycle collector back on once a command has loaded, if ``__main__`` paused it.

    What has loaded lives as long as the process, so it is frozen first: the collector then
    walks only what the command makes from here on.
    """
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def repo_root() -> Path:
    return package_module(".config.params").repo_root()


def _stage(args: argparse.Namespace, workdir: Path) -> bool:
    config = package_module(".config.params")
    params = config.load_params(workdir)
    if args.command == "check-params":
        return True
    if args.command in ("train", "evaluate"):
        # Every `_target_` resolved and checked before anything is built.
        config.check_buildable(params, workdir)
        # A tracking server that does not answer stops the stage before it loads anything.
        package_module(".lab.tracking").check_server(repo_root())
    # Imported only when chosen: each stage pulls in only what it needs (torch, MONAI, MLflow).
    stage = package_module(f".stages.{args.command}")
    resume_collector()
    stage.run(params, workdir)
    return True


def _predict(args: argparse.Namespace, workdir: Path) -> bool:
    predict = package_module(".inference.predict")
    resume_collector()
    predict.predict_files(args.inputs, args.model, args.output, args.overlap, workdir, args.tta)
    return True


# The commands that are not stages; each returns False when it ran but found a difference.
RUNNERS: dict[str, Callable[[argparse.Namespace, Path], bool]] = {"predict": _predict}
