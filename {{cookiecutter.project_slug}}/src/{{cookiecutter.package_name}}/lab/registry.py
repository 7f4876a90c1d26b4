"""The MLflow model registry: one version per evaluation, and a `champion` alias on the best one.

Serving code loads ``models:/<experiment_name>@champion`` and never names a version, so
promotion is only moving the alias; every evaluated model stays registered and comparable.
"""

from __future__ import annotations

import logging
import os

import mlflow
from mlflow.entities import LoggedModel
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig

from ..errors import UserError
from . import tracking

log = logging.getLogger(__name__)

CHAMPION = "champion"
# Run tags that describe the run itself rather than what produced the model.
RUN_ONLY_TAGS = ("stage",)


def register(params: DictConfig, train_run_id: str, evaluate_run_id: str, metrics: dict) -> None:
    """Register the train run's model with the evaluate run's provenance; maybe move `champion`."""
    settings = params.tracking
    if not (settings.log_model and settings.register_model):
        log.info(
            "Not registering the model (tracking.log_model=%s, tracking.register_model=%s)",
            settings.log_model,
            settings.register_model,
        )
        return
    if os.environ.get(tracking.REPRODUCES_VARIABLE):
        # A reproduction checks an old result; it is not a new candidate for the registry.
        log.info("Not registering: this run reproduces %s", os.environ[tracking.REPRODUCES_VARIABLE])
        return
    metric, mode = settings.champion_metric, settings.champion_mode
    if metric not in metrics:
        raise UserError(
            f"tracking.champion_metric={metric!r} is not a test metric; use one of "
            f"{', '.join(sorted(metrics))} (the keys of metrics/evaluate.json)."
        )
    client = mlflow.MlflowClient()
    evaluate_run = client.get_run(evaluate_run_id)
    model = logged_model(evaluate_run.info.experiment_id, train_run_id)
    tags = {
        **_provenance_tags(evaluate_run.data.tags),
        "train_run_id": train_run_id,
        "evaluate_run_id": evaluate_run_id,
    }
    if metrics[metric] is not None:
        tags[f"test_{metric}"] = str(metrics[metric])
    # Held from registration to the alias move, so that two evaluations finishing at once
    # (`dvc queue start -j 2`) cannot both read the old champion and both replace it.
    with tracking.store_lock(mlflow.get_tracking_uri()):
        version = _new_version(client, settings.experiment_name, model, tags)
        _promote_if_better(client, version, metric, mode, metrics[metric])


def logged_model(experiment_id: str, train_run_id: str) -> LoggedModel:
    """The model the train run logged (MLflow 3 keeps it as a LoggedModel of that run)."""
    # No `status = 'READY'` clause: MLflow 3.17's sqlite store matches no model with it.
    models = mlflow.search_logged_models(
        experiment_ids=[experiment_id],
        filter_string=f"source_run_id = '{train_run_id}'",
        order_by=[{"field_name": "creation_time", "ascending": False}],
        output_format="list",
    )
    if not models:
        raise UserError(
            f"The train run {train_run_id} logged no model in {mlflow.get_tracking_uri()}. "
            "Re-run training with tracking.log_model=true against this store "
            "(`dvc exp run -f -S tracking.log_model=true`)."
        )
    return models[0]


def _new_version(
    client: mlflow.MlflowClient, name: str, model: LoggedModel, tags: dict[str, str]
) -> ModelVersion:
    """A new version of registered model ``name`` (created if new) for the logged ``model``.

    Through the client rather than ``mlflow.register_model``, which prints its own progress
    lines on stderr; the promotion log line below says what happened.
    """
    try:
        client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        try:
            client.create_registered_model(name)
        except MlflowException as race:  # a parallel evaluation created it meanwhile
            if race.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    return client.create_model_version(
        name, f"models:/{model.model_id}", run_id=model.source_run_id, tags=tags, model_id=model.model_id
    )


def _provenance_tags(run_tags: dict[str, str]) -> dict[str, str]:
    """The run's provenance contract (git.*, code/params hashes, data.*, dvc.*, seed, env.*).

    Copied from the run rather than recomputed, so that the version says exactly what the run
    says, and a tag added to the contract later reaches the registry without a change here.
    """
    return {
        key: value
        for key, value in run_tags.items()
        if not key.startswith("mlflow.") and key not in RUN_ONLY_TAGS
    }


def _promote_if_better(
    client: mlflow.MlflowClient, version: ModelVersion, metric: str, mode: str, value: float | None
) -> None:
    """Point `champion` at ``version`` if it strictly beats the champion on ``metric``.

    With no champion yet, or one without a score for ``metric``, the new version takes the alias.
    """
    name = version.name
    current = client.get_registered_model(name).aliases.get(CHAMPION)
    best = None if current is None else _champion_value(client, name, str(current), metric)
    if value is None:
        outcome = f"not champion: it has no {metric}"
    elif best is None or (value > best if mode == "max" else value < best):
        client.set_registered_model_alias(name, CHAMPION, version.version)
        previous = "none" if current is None else f"v{current}"
        outcome = f"now champion (previous: {previous}): {metric} {value:.4f}"
    else:
        outcome = f"champion stays v{current}: {metric} {value:.4f} does not beat {best:.4f}"
    log.info(
        "Registered %s v%s; %s (tracking.champion_metric=%s, tracking.champion_mode=%s)",
        name,
        version.version,
        outcome,
        metric,
        mode,
    )


def _champion_value(client: mlflow.MlflowClient, name: str, version: str, metric: str) -> float | None:
    """The champion's score from its evaluate run, which holds every test metric, so that
    a change of tracking.champion_metric compares like with like."""
    run_id = client.get_model_version(name, version).tags.get("evaluate_run_id")
    return client.get_run(run_id).data.metrics.get(f"test_{metric}") if run_id else None
