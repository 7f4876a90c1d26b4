"""``ensemble``: several trained models (the folds of a `cv` run, or any runs trained on the same
data) scored together on the test set like any model, and optionally registered.

The members' softmax outputs are averaged (inference/ensemble.py), with mirrored passes under
``--tta flip``. The score is an MLflow run of its own (stage ``ensemble``) with the per-case
table that `compare` reads, the provenance tags its members share, and ``ensemble.members``;
``--register`` makes it a version of the registered model, which competes for `champion` under
``tracking.champion_policy`` and which `predict` runs member by member.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import mlflow
import pandas as pd
import torch

from ..config.params import load_params
from ..data.loaders import Caching, eval_loader, read_plan
from ..data.msd import read_msd
from ..errors import UserError
from ..evaluation.scoring import score_cases, summarise
from ..inference.ensemble import Ensemble, check_members, mirrorings
from ..inference.predict import load_models
from ..model.networks import model_from_card
from ..paths import PROCESSED
from ..training.acceleration import Acceleration
from . import provenance, registry
from .tracking import tracking_uri

log = logging.getLogger(__name__)

PROCESSED_TAG = "data.processed.md5"
# Tags every member must share for the ensemble's run to carry them (its data and their config).
SHARED_TAGS = ("data.processed.md5", "data.processed.path", "cv.group", "git.commit")


def ensemble(root: Path, workdir: Path, references: list[str], tta: str, register: bool) -> dict:
    """Score the members of ``references`` combined on the workspace's test set; log, maybe register."""
    params = load_params(workdir)
    client = mlflow.MlflowClient(tracking_uri(root))
    loaded = load_models(references, workdir)
    names = [member.source["model"] for member in loaded]
    if len(loaded) < 2:
        raise UserError(f"An ensemble needs two models or more; {', '.join(names)} gave {len(loaded)}.")
    check_members([member.card for member in loaded], names)
    runs = [_train_run(client, member.source) for member in loaded]
    _check_test_data(runs, workdir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    combined = Ensemble(
        [model_from_card(member.card, member.state).to(device) for member in loaded],
        [member.card["patch_size"] for member in loaded],
        mirrorings(tta),
    )
    acceleration = Acceleration.for_inference(device)
    processed = workdir / PROCESSED
    plan = read_plan(processed)
    classes = list(read_msd(processed).foreground.values())
    test_data = eval_loader(processed, "test", params.data.fold, Caching.of(params), plan["size_mb"], device)
    rows, _ = score_cases(
        lambda images: combined.logits_or_probabilities(images, params.evaluate.overlap, acceleration),
        test_data,
        classes,
        plan["preprocessing"]["pixdim"],
        params.evaluate.hd_percentile,
        device,
    )
    metrics = summarise(rows, classes, params.evaluate.hd_percentile)
    run = _log(client, runs, rows, metrics, combined, tta)
    _print_against_members(client, runs, metrics, run.info.run_id)
    if register:
        registry.register_ensemble(params, client, run, metrics, tta)
    return metrics


def _train_run(client: mlflow.MlflowClient, source: dict[str, str]) -> mlflow.entities.Run:
    """The train run behind a member; a bare checkpoint has none, and an ensemble must be traceable."""
    if not source.get("run_id"):
        raise UserError(
            f"Model {source['model']} names no MLflow train run; give run ids, models:/ URIs or "
            "cv:<group>, so that the ensemble's record says which runs it combines."
        )
    return client.get_run(source["run_id"])


def _check_test_data(runs: list[mlflow.entities.Run], workdir: Path) -> None:
    """The members were trained on the workspace's preprocessed data: the ensemble is scored on
    the test cases they were scored on."""
    recorded = {run.data.tags.get(PROCESSED_TAG) for run in runs}
    if len(recorded) > 1:
        raise UserError(
            f"The members were trained on different preprocessed data ({PROCESSED_TAG}: {sorted(recorded)})."
        )
    current = provenance.dvc_md5s(workdir, [str(PROCESSED)])[str(PROCESSED)]
    if current != next(iter(recorded)):
        experiment = runs[0].data.tags.get("dvc.exp_name", "<a member's experiment>")
        raise UserError(
            f"The workspace's {PROCESSED} ({current}) is not the data the members were trained on "
            f"({next(iter(recorded))}). Bring theirs back first, e.g. `dvc exp apply {experiment}`."
        )


def _log(
    client: mlflow.MlflowClient,
    runs: list[mlflow.entities.Run],
    rows: list[dict],
    metrics: dict,
    combined: Ensemble,
    tta: str,
) -> mlflow.entities.Run:
    """The ensemble's score as a run beside its members': metrics, per-case table, members."""
    shared = {
        tag: runs[0].data.tags[tag]
        for tag in SHARED_TAGS
        if tag in runs[0].data.tags and all(run.data.tags.get(tag) == runs[0].data.tags[tag] for run in runs)
    }
    tags = shared | {
        "stage": "ensemble",
        registry.ENSEMBLE_MEMBERS: ",".join(run.info.run_id for run in runs),
        registry.ENSEMBLE_TTA: tta,
        "ensemble.combined": combined.describe(),
    }
    run = client.create_run(runs[0].info.experiment_id, tags=tags, run_name=f"ensemble of {len(runs)}")
    run_id = run.info.run_id
    for key, value in metrics.items():
        if value is not None:
            client.log_metric(run_id, f"test_{key}", value)
    client.log_metric(run_id, "test_cases", len(rows))
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "reports").mkdir()
        pd.DataFrame(rows).to_csv(Path(folder) / "reports" / "per_case.csv", index=False)
        client.log_artifacts(run_id, str(Path(folder) / "reports"), "reports")
    card = {"members": [run.info.run_id for run in runs], "tta": tta, "combined": combined.describe()}
    client.log_text(run_id, json.dumps(card, indent=2), "ensemble/ensemble.json")
    client.set_terminated(run_id)
    return client.get_run(run_id)


def _print_against_members(
    client: mlflow.MlflowClient, runs: list[mlflow.entities.Run], metrics: dict, run_id: str
) -> None:
    """The ensemble's test dice_mean beside each member's, from the members' evaluate runs."""
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    lines = ["| model | test dice_mean |", "|---|---|"]
    for run in runs:
        evaluations = client.search_runs(
            experiments,
            f"tags.`mlflow.parentRunId` = '{run.info.run_id}' and tags.stage = 'evaluate'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        score = evaluations[0].data.metrics.get("test_dice_mean") if evaluations else None
        fold = run.data.tags.get("cv.fold", run.info.run_id[:8])
        lines.append(f"| {fold} | {'-' if score is None else f'{score:.4f}'} |")
    lines.append(
        f"| ensemble | {metrics['dice_mean']:.4f} |"
        if metrics["dice_mean"] is not None
        else "| ensemble | - |"
    )
    print("\n".join(lines))
    log.info("Ensemble of %d scored on the test set; MLflow run %s", len(runs), run_id)
