"""The one place that starts an MLflow run, with the provenance contract as its tags."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import pandas as pd
from filelock import FileLock
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig

from ..config.params import repo_root, resolved_params
from ..errors import UserError
from ..paths import PACKAGE
from . import provenance, reachability
from .dataset_records import log_dvc_inputs
from .sinks import Sinks

if TYPE_CHECKING:  # torch is imported only by the stages that log a model
    import torch

# MLflow logs through its own handler at INFO. Its system-metrics monitor and its store
# migrations announce themselves in every stage; their warnings and errors still show.
for _chatty in ("mlflow.system_metrics", "mlflow.store.db.utils"):
    logging.getLogger(_chatty).setLevel(logging.WARNING)

ARTIFACTS_DIR = "mlartifacts"
# The extra sinks of the run that start_run has open, which log_metrics also writes to.
_extra_sinks: Sinks | None = None
# Set by `reproduce` for the stages it re-runs; becomes the run's `reproduces` tag.
REPRODUCES_VARIABLE = "REPRODUCES_RUN_ID"
# A train run that a search pruned (lab/trial.py): it ends KILLED, and is never registered.
PRUNED_TAG = "search.pruned"
_pruned_status: str | None = None


def tracking_uri(root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the repo's sqlite store by absolute path.

    Absolute, because ``dvc exp run --queue`` runs stages in temporary copies of the repo
    that are deleted afterwards; every copy must log to the same store.
    """
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"


def connect(experiment_name: str, root: Path) -> str:
    """Point MLflow at the store and return the experiment id, creating both when new.

    Parallel stages (`dvc queue start -j N`) must not race here: several processes opening a
    brand-new sqlite store crash in its schema migrations, and racing experiment creation can
    put runs in "Default". A lock file beside the database serialises the first contact.
    """
    uri = tracking_uri(root)
    reachability.check(uri)
    mlflow.set_tracking_uri(uri)
    try:
        with store_lock(uri):
            return _get_or_create_experiment(experiment_name, uri, root)
    except MlflowException as error:
        raise UserError(
            f"Cannot use the MLflow store {uri}: {error.message}. Start the server or fix "
            "MLFLOW_TRACKING_URI (unset it to log to the repo's mlflow.db)."
        ) from error


def check_server(root: Path) -> None:
    """Stop with the URI and the fix when the tracking server does not answer (reachability)."""
    reachability.check(tracking_uri(root))


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold the lock file beside a sqlite store (``<db>.lock``) for a read-then-write on it.

    Other stores are shared across machines, where a local lock file would protect nothing;
    there the body runs unlocked.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    with FileLock(f"{uri.removeprefix('sqlite:///')}.lock"):
        yield


def _get_or_create_experiment(name: str, uri: str, root: Path) -> str:
    """The experiment by name. With the repo's sqlite store, new experiments keep artifacts
    under the repo root (not the cwd, which may be a temporary copy); a tracking server
    chooses its own artifact store."""
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = (root / ARTIFACTS_DIR).as_uri() if uri.startswith("sqlite:///") else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id  # created meanwhile elsewhere


def provenance_tags(params: DictConfig, workdir: Path, data_paths: list[str], stage: str) -> dict[str, str]:
    code = provenance.stage_code(workdir, stage)
    tags = {
        "git.commit": provenance.git_commit(workdir),
        "git.dirty": str(provenance.git_dirty(workdir)).lower(),
        # The stage's own code, as dvc.lock records it; its deps name a changed file in `verify`.
        f"code.{stage}.md5": provenance.code_md5(code),
        f"code.{stage}.deps": json.dumps(code, sort_keys=True),
        "params.sha256": provenance.params_sha256(resolved_params(params)),
        # The folds of one configuration share cv.group; `cv --summary` gathers them by it.
        "cv.group": provenance.cv_group(params),
        "cv.fold": f"{params.data.fold}/{params.data.folds}",
        "seed": str(params.seed),
        # false trades bitwise repeatability for speed (cudnn.benchmark); see trainer.deterministic
        "deterministic": str(params.trainer.deterministic).lower(),
        **provenance.environment(),
    }
    tags |= provenance.data_tags(workdir, data_paths)
    for tag, variable in (
        ("dvc.exp_name", "DVC_EXP_NAME"),
        ("dvc.baseline_rev", "DVC_EXP_BASELINE_REV"),
        ("reproduces", REPRODUCES_VARIABLE),
    ):
        if os.environ.get(variable):
            tags[tag] = os.environ[variable]
    return tags


@contextmanager
def start_run(
    params: DictConfig,
    stage: str,
    workdir: Path,
    data_paths: list[str],
    parent_run_id: str | None = None,
    resolved: dict[str, str] | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Start a run for ``stage`` carrying params, provenance tags, config and package list.

    ``resolved`` holds what `auto` settings became (e.g. ``resolved.pixdim``), logged as params.
    The run ends FINISHED when the body returns, FAILED on an exception (its traceback kept as
    ``logs/traceback.txt``) and KILLED on SIGTERM/SIGINT; the console log is kept as
    ``logs/console.log`` in each case. Losing the server mid-run is a UserError (reachability).
    """
    global _extra_sinks, _pruned_status
    _pruned_status = None
    root = repo_root()
    experiment_id = connect(params.tracking.experiment_name, root)
    tags = {"stage": stage, **provenance_tags(params, workdir, data_paths, stage)}
    if parent_run_id:
        # A tag rather than start_run(parent_run_id=...): the parent has already finished.
        tags["mlflow.parentRunId"] = parent_run_id
    run_name = f"{os.environ.get('DVC_EXP_NAME', 'workspace')}-{stage}"
    run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags, log_system_metrics=True)
    console = _capture_console()
    status: str | None = "FAILED"
    try:
        plain = resolved_params(params)
        flat = pd.json_normalize(plain, sep=".").iloc[0].to_dict()
        logged = {key: str(value) for key, value in flat.items()} | (resolved or {})
        mlflow.log_params(logged)
        mlflow.log_dict(plain, "config/params.yaml")
        mlflow.log_text(provenance.package_list(), "environment/requirements.txt")
        log_dvc_inputs(tags, workdir, context=stage)
        mlflow.set_tag("mlflow.note.content", _description(tags, run.info.run_id))
        _extra_sinks = Sinks(list(params.tracking.sinks), run_name, run.info.run_id, logged, tags)
        yield run
        status = _pruned_status or "FINISHED"
    except Exception as error:
        lost = reachability.server_lost(tracking_uri(root), stage, run.info.run_id, error)
        if lost is not None:
            status = None  # nothing more reaches the server; see _end
            raise lost from error
        mlflow.log_text(traceback.format_exc(), "logs/traceback.txt")
        raise
    except BaseException:  # Interrupted (SIGTERM, SIGINT) or KeyboardInterrupt
        status = "KILLED"
        raise
    finally:
        if _extra_sinks is not None:
            _extra_sinks.close()
            _extra_sinks = None
        logging.getLogger().removeHandler(console)
        _end(run.info.run_id, status, console.stream.getvalue())


def tag_run(tags: dict[str, str]) -> None:
    """More tags on the active run, e.g. the search trial it is."""
    mlflow.set_tags(tags)


def end_killed() -> None:
    """End the active run KILLED rather than FINISHED: a search pruned it, and it returns early."""
    global _pruned_status
    _pruned_status = "KILLED"


def _end(run_id: str, status: str | None, console_log: str) -> None:
    """Keep the console log and end the run; ``status`` None: the server is gone, one quick try."""
    if status is None:
        with reachability.fail_fast(), contextlib.suppress(Exception):
            mlflow.end_run("FAILED")  # succeeds only if the server is already back
        return
    mlflow.MlflowClient().log_text(run_id, console_log, "logs/console.log")
    mlflow.end_run(status)


def _capture_console() -> logging.StreamHandler:
    """A copy of what the stage logs to the console from here on, for the run's artifacts."""
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def _description(tags: dict[str, str], run_id: str) -> str:
    """The run's description in the MLflow UI: its DVC experiment and how to re-run it."""
    experiment = tags.get("dvc.exp_name", "none (run outside `dvc exp run`)")
    return (
        f"DVC experiment: {experiment}, at commit {tags['git.commit'][:12]}.\n\n"
        f"Re-run and compare: `python -m {PACKAGE} reproduce {run_id}`"
    )


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Metrics of the active run, to MLflow and to the extra sinks (``tracking.sinks``)."""
    mlflow.log_metrics(metrics, step=step)
    if _extra_sinks is not None:
        _extra_sinks.log_metrics(metrics, step)


def write_run_metrics(path: Path, run_id: str, metrics: dict) -> None:
    """The stage's DVC metrics file; its ``mlflow_run_id`` column links `dvc exp show` to MLflow.

    DVC restores this file with the stage's other outputs from its run-cache, so a cached
    stage still points at the run that produced its outputs.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"mlflow_run_id": run_id, **metrics}, indent=2) + "\n")


def log_model(model: torch.nn.Module, checkpoint: Path, card: dict) -> None:
    """Log the checkpoint's weights as an MLflow PyTorch model, with its card as metadata.

    The card (network config, channels, labels, preprocessing; see ``models.model_card``) is
    what `predict` reads to prepare inputs as the training data was prepared. Requirements are
    given explicitly: inferring them would re-import the model in a subprocess, which costs
    more than the rest of the logging.
    """
    import mlflow.pytorch
    import monai
    import numpy as np
    import torch

    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["model"])
    model = model.cpu().eval()
    # Two items, so that torch.export keeps the batch dimension dynamic (1 would specialise it).
    example = np.zeros((2, len(card["channels"]), *card["patch_size"]), dtype=np.float32)
    metadata = {
        "input": f"float32 (batch, {len(card['channels'])}, *spatial), prepared as card.preprocessing says",
        "output": f"logits (batch, {len(card['labels'])}, *spatial); argmax over channels gives labels",
        "card": card,
    }
    mlflow.pytorch.log_model(
        model,
        name="model",
        input_example=example,
        metadata=metadata,
        # MLflow would load the model back to run the example, on the GPU when there is one,
        # where a pt2 model exported from CPU weights fails with a warning; `predict` loads
        # it through its card instead, on either device (tested).
        validate_serving_input=False,
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"monai=={monai.__version__}"],
    )


def get_run(run_id: str) -> mlflow.entities.Run:
    """A run from the project's store, or a UserError that says where it looked."""
    uri = tracking_uri(repo_root())
    try:
        return mlflow.MlflowClient(uri).get_run(run_id)
    except MlflowException as error:
        raise UserError(
            f"MLflow run {run_id} is not in {uri} ({error.message}); "
            "set MLFLOW_TRACKING_URI if the run was logged elsewhere."
        ) from error
