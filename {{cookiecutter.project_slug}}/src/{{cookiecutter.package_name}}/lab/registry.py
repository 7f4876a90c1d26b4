"""The MLflow model registry: one version per evaluation, and a `champion` alias on the best one.

Serving code loads ``models:/<experiment_name>@champion`` and never names a version, so
promotion is only moving the alias; every evaluated model stays registered and comparable.

``tracking.champion_policy`` decides what "best" means. ``significant`` (the default) moves the
alias only when the challenger beats the champion on the same test cases with the 95 % bootstrap
interval of the paired per-case difference clear of 0 (see compare.py): a gain the size of
what a change of seed does is not a reason to redeploy. ``best`` moves it on any higher mean.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import mlflow
from mlflow.entities import LoggedModel
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig

from ..errors import UserError
from . import compare, tracking

log = logging.getLogger(__name__)

CHAMPION = "champion"
# Tags of a version that is an ensemble (`ensemble --register`): its members' train runs, and
# whether their passes were mirrored; `predict` runs every member from them.
ENSEMBLE_MEMBERS = "ensemble.members"
ENSEMBLE_TTA = "ensemble.tta"
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
    client = mlflow.MlflowClient()
    if client.get_run(train_run_id).data.tags.get(tracking.PRUNED_TAG) == "true":
        # Stopped early by a search: its score says how far it got, not what it can do.
        log.info("Not registering: train run %s was pruned by a search", train_run_id)
        return
    metric, mode = settings.champion_metric, settings.champion_mode
    rule = Rule(metric, mode, settings.champion_policy)
    if metric not in metrics:
        raise UserError(
            f"tracking.champion_metric={metric!r} is not a test metric; use one of "
            f"{', '.join(sorted(metrics))} (the keys of metrics/evaluate.json)."
        )
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
        source = f"models:/{model.model_id}"
        version = _new_version(
            client, settings.experiment_name, source, model.source_run_id, tags, model.model_id
        )
        _promote_if_better(client, version, rule, metrics[metric], evaluate_run)


def register_ensemble(
    params: DictConfig, client: mlflow.MlflowClient, run: mlflow.entities.Run, metrics: dict, tta: str
) -> ModelVersion:
    """Register an ensemble's run (see ensemble.py) as a version; maybe move `champion` to it.

    The version points at the run's ``ensemble.json`` (its members' models) and carries its
    provenance, its members and its score; it competes for `champion` like any version.
    """
    settings = params.tracking
    metric = settings.champion_metric
    rule = Rule(metric, settings.champion_mode, settings.champion_policy)
    tags = {
        **_provenance_tags(run.data.tags),
        ENSEMBLE_MEMBERS: run.data.tags[ENSEMBLE_MEMBERS],
        ENSEMBLE_TTA: tta,
        "evaluate_run_id": run.info.run_id,
    }
    if metrics.get(metric) is not None:
        tags[f"test_{metric}"] = str(metrics[metric])
    with tracking.store_lock(client.tracking_uri):
        source = f"runs:/{run.info.run_id}/ensemble"
        version = _new_version(client, settings.experiment_name, source, run.info.run_id, tags)
        _promote_if_better(client, version, rule, metrics.get(metric), run)
    return version


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
    client: mlflow.MlflowClient,
    name: str,
    source: str,
    run_id: str,
    tags: dict[str, str],
    model_id: str | None = None,
) -> ModelVersion:
    """A new version of registered model ``name`` (created if new) for the model at ``source``.

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
    return client.create_model_version(name, source, run_id=run_id, tags=tags, model_id=model_id)


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


@dataclass
class Rule:
    """What makes a version the champion: ``tracking.champion_metric``, ``_mode`` and ``_policy``."""

    metric: str
    mode: str  # max or min
    policy: str  # best or significant

    def __str__(self) -> str:
        return (
            f"tracking.champion_policy={self.policy}, tracking.champion_metric={self.metric}, "
            f"tracking.champion_mode={self.mode}"
        )

    def beats(self, value: float, best: float) -> bool:
        return value > best if self.mode == "max" else value < best


def _promote_if_better(
    client: mlflow.MlflowClient,
    version: ModelVersion,
    rule: Rule,
    value: float | None,
    run: mlflow.entities.Run,
) -> None:
    """Point `champion` at ``version`` if it beats the champion by ``rule``; say which rule decided.

    With no champion yet, or one without a score for the metric, the new version takes the alias.
    The outcome is also kept on the version, as its ``champion.decision`` tag.
    """
    name = version.name
    current = client.get_registered_model(name).aliases.get(CHAMPION)
    champion_run = None if current is None else _evaluate_run(client, name, str(current))
    best = None if champion_run is None else champion_run.data.metrics.get(f"test_{rule.metric}")
    if value is None:
        promoted, outcome = False, f"not champion: it has no {rule.metric}"
    elif best is None:
        promoted = True
        outcome = f"now champion (previous: {f'v{current} without a score' if current else 'none'})"
        outcome += f": {rule.metric} {value:.4f}"
    elif rule.policy == "best":
        promoted = rule.beats(value, best)
        verb = "beats" if promoted else "does not beat"
        outcome = f"{rule.metric} {value:.4f} {verb} v{current}'s {best:.4f}"
    else:
        promoted, outcome = _significantly_better(client, champion_run, run, rule, current)
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version.version)
        if best is not None:
            outcome = f"now champion (previous: v{current}): {outcome}"
    elif current is not None and value is not None:
        outcome = f"champion stays v{current}: {outcome}"
    client.set_model_version_tag(name, version.version, "champion.decision", f"{outcome} ({rule})")
    log.info("Registered %s v%s; %s (%s)", name, version.version, outcome, rule)


def _significantly_better(
    client: mlflow.MlflowClient,
    champion: mlflow.entities.Run,
    challenger: mlflow.entities.Run,
    rule: Rule,
    current: str,
) -> tuple[bool, str]:
    """Whether the challenger beats the champion beyond noise on the same test cases, and the numbers."""
    try:
        difference = compare.paired_difference(client, champion, challenger, rule.metric)
    except UserError as error:
        return False, f"no comparison with v{current}: {error}"
    if math.isnan(difference.low):  # too few cases for an interval
        return False, f"too few test cases ({difference.cases}) to tell it from v{current}"
    # As a gain: B - A under max, A - B under min (a lower hd95 is better).
    sign = 1 if rule.mode == "max" else -1
    gain = sign * difference.mean
    low, high = sorted(sign * bound for bound in (difference.low, difference.high))
    numbers = (
        f"{rule.metric} gain over v{current} {gain:+.4f} ({low:+.4f} to {high:+.4f}, "
        f"{difference.cases} paired test cases)"
    )
    if low > 0:
        return True, f"{numbers}: beyond noise"
    return False, f"{numbers}: within noise"


def _evaluate_run(client: mlflow.MlflowClient, name: str, version: str) -> mlflow.entities.Run | None:
    """The evaluate run that scored a version (None for a version registered without one)."""
    run_id = client.get_model_version(name, version).tags.get("evaluate_run_id")
    return client.get_run(run_id) if run_id else None
