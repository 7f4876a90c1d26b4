"""``sync``: tag MLflow runs with the commit DVC made for their experiment.

A stage runs before DVC commits its experiment, so a run can only record the experiment's
name and baseline. Once DVC has made the commit, ``sync`` adds it as ``dvc.exp_commit``, so
that a run leads to the exact commit (`git checkout <commit>` or `dvc exp apply <name>`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
from omegaconf import OmegaConf

from ..config.params import PARAMS_FILE
from .provenance import experiment_commit
from .tracking import connect

log = logging.getLogger(__name__)


def sync(root: Path) -> int:
    """Tag every run of the project's experiment whose DVC experiment commit is now known."""
    # Only the experiment's name is needed: a stale params.yaml does not matter here.
    experiment_name = OmegaConf.load(root / PARAMS_FILE).tracking.experiment_name
    experiment_id = connect(experiment_name, root)
    client = mlflow.MlflowClient()
    tagged = 0
    for run in client.search_runs([experiment_id], max_results=50000):
        tags = run.data.tags
        if "dvc.exp_commit" in tags:
            continue
        commit = experiment_commit(root, tags.get("dvc.exp_name"), tags.get("dvc.baseline_rev"))
        if commit:
            client.set_tag(run.info.run_id, "dvc.exp_commit", commit)
            tagged += 1
    log.info("Tagged %d run(s) with dvc.exp_commit", tagged)
    return tagged
