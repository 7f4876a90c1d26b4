"""A search trial seen from inside its train stage: validation Dice reported to the study after
each validation, and the study's pruner asked whether to stop.

`search` sets the two variables below for the `dvc exp run` of its trials; DVC sets
``DVC_EXP_NAME``, which names the trial (``search-<n>``). Outside a search the stage finds no
trial and trains every epoch. A pruned run ends early, tagged ``search.pruned``, KILLED in
MLflow, with ``pruned_at_epoch`` in metrics/train.json; the registry never registers it and
`reproduce` refuses it, since when it stopped depended on the other trials.
"""

from __future__ import annotations

import logging
import os

from ..errors import UserError
from . import tracking

log = logging.getLogger(__name__)

# Set by `search` for its trials' stages; the storage URL may hold a password, so it is read
# from the environment only, never written to params.yaml, a DVC file, a log or MLflow.
STORAGE_VARIABLE = "SEARCH_STORAGE"
STUDY_VARIABLE = "SEARCH_STUDY"
PRUNER_ATTR = "pruner"  # the study's user attribute holding conf/search.yaml's `pruner`
EXPERIMENT_ATTR = "dvc_exp_name"  # each trial's user attribute: the DVC experiment it runs as
EXPERIMENTS_ATTR = "dvc_exp_names"  # with folds, one experiment per fold; the first is EXPERIMENT_ATTR
PRUNERS = ("median", "hyperband", "none")


class SearchTrial:
    """The running trial this train stage is; :meth:`prunes` reports one validation."""

    def __init__(self, trial: object, study_name: str) -> None:
        self._trial, self._study_name = trial, study_name

    def prunes(self, epoch: int, val_dice: float) -> bool:
        """Report ``val_dice`` at ``epoch``; True (and the run marked pruned) when the study stops it."""
        self._trial.report(val_dice, step=epoch)
        if not self._trial.should_prune():
            return False
        log.info(
            "Pruned at epoch %d by study %s (trial %d): val_dice %.4f trails its other trials",
            epoch,
            self._study_name,
            self._trial.number,
            val_dice,
        )
        tracking.tag_run({tracking.PRUNED_TAG: "true", "search.pruned_at_epoch": str(epoch)})
        tracking.end_killed()
        return True


def search_trial() -> SearchTrial | None:
    """The running trial of the study named in the environment whose experiment this is, if any."""
    storage, study_name = os.environ.get(STORAGE_VARIABLE), os.environ.get(STUDY_VARIABLE)
    experiment = os.environ.get("DVC_EXP_NAME")
    if not (storage and study_name and experiment):
        return None
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name, storage=storage)
    study.pruner = pruner(study.user_attrs.get(PRUNER_ATTR) or {"type": "none"})
    for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        names = experiments(frozen)
        if experiment in names:
            # The train run says which trial of which study it is, on whichever server it is.
            tracking.tag_run({"search.study": study_name, "search.trial": str(frozen.number)})
            # With folds, the first fold's validations are the trial's to the pruner: the others
            # are the same params on other data, and would report the same epochs twice.
            if experiment == names[0]:
                return SearchTrial(optuna.trial.Trial(study, frozen._trial_id), study_name)
            return None
    return None


def experiments(frozen: object) -> list[str]:
    """The DVC experiments a trial runs as: one, or one per fold."""
    attrs = frozen.user_attrs
    return list(attrs.get(EXPERIMENTS_ATTR) or [attrs.get(EXPERIMENT_ATTR, "")])


def pruner(spec: dict) -> object:
    """The Optuna pruner that conf/search.yaml's ``pruner`` describes (its other keys: its settings)."""
    import optuna

    settings = {key: value for key, value in spec.items() if key != "type"}
    kind = spec.get("type")
    classes = {
        "median": optuna.pruners.MedianPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "none": optuna.pruners.NopPruner,
    }
    if kind not in classes:
        raise UserError(f"conf/search.yaml: `pruner.type` must be one of {', '.join(PRUNERS)}, got {kind!r}.")
    try:
        return classes[kind](**settings)
    except (TypeError, ValueError) as error:
        raise UserError(f"conf/search.yaml: `pruner` ({kind}) does not take {settings}: {error}") from error
