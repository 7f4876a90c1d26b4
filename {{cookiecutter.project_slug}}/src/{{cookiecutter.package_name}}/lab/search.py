"""``search``: Bayesian search (Optuna's TPE) in which every trial is a DVC experiment.

Each trial's params, proposed from the space in conf/search.yaml, are run with
`dvc exp run -S key=value ...` (``--jobs`` > 1: queued, then run in parallel by DVC's queue),
and its score is read back from the experiment's DVC metric. So every trial is an ordinary
row of `dvc exp show` and an ordinary MLflow run with the whole provenance contract. The study
lives in ``optuna.db`` beside ``mlflow.db``: a search that stops resumes where it was.

The score is a validation one, from metrics/train.json: a search tuned on the test cases would
report a score it was chosen by. Each trial's test score is still written by its evaluate stage,
and the best trial's is reported beside its validation score, once, at the end.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import optuna
import yaml

from ..errors import UserError
from ..paths import EVALUATE_METRICS, TRAIN_METRICS
from . import queue

log = logging.getLogger(__name__)

SPACE_FILE = Path("conf/search.yaml")
STUDY_DB = "optuna.db"
# The trial's validation scores (what the search may optimise) and its test scores (reported).
VALIDATION_METRICS = str(TRAIN_METRICS)
TEST_METRICS = str(EVALUATE_METRICS)
VALIDATION_PREFIX = "best_val_"
REPORTED_TEST_METRIC = "dice_mean"


def search(root: Path, trials: int, jobs: int, study_name: str, fixed: list[str]) -> None:
    """Run trials until the study holds ``trials`` finished ones; log the best."""
    spec = _read_space(root / SPACE_FILE)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=study_name,
        storage=f"sqlite:///{root / STUDY_DB}",
        direction=spec["direction"],
        load_if_exists=True,
    )
    # Seeded by the trials so far: a resumed search goes on where it was, instead of repeating
    # the proposals that a sampler with a fixed seed starts with.
    study.sampler = optuna.samplers.TPESampler(seed=len(study.trials))
    _settle_interrupted(study, root, spec["metric"])
    while (done := _finished(study)) < trials:
        batch = [study.ask(spec["distributions"]) for _ in range(min(jobs, trials - done))]
        names = {trial.number: f"{study_name}-{trial.number}" for trial in batch}
        for trial in batch:
            trial.set_user_attr("dvc_exp_name", names[trial.number])
            overrides = [*fixed, *(f"{key}={value}" for key, value in trial.params.items())]
            queued = ["--queue"] if jobs > 1 else []
            log.info("Trial %d: %s", trial.number, " ".join(overrides))
            queue.dvc(
                root,
                "exp",
                "run",
                *queued,
                "--name",
                names[trial.number],
                *queue.set_args(overrides),
                check=jobs > 1,
            )
        if jobs > 1:
            queue.dvc(root, "exp", "run", "--run-all", "--jobs", str(jobs), check=False)
        scores = _experiment_scores(root, spec["metric"])
        for trial in batch:
            score = scores.get(names[trial.number])
            state = optuna.trial.TrialState.COMPLETE if score is not None else optuna.trial.TrialState.FAIL
            study.tell(trial, score if score is not None else None, state=state)
            log.info("Trial %d (%s): %s = %s", trial.number, names[trial.number], spec["metric"], score)
    best = study.best_trial
    name = best.user_attrs.get("dvc_exp_name")
    test_score = _experiment_scores(root, REPORTED_TEST_METRIC, TEST_METRICS).get(name)
    log.info(
        "Best of %d trials: %s = %.4f (validation) with %s; its test %s = %s, reported, not "
        "optimised (DVC experiment %s; `dvc exp apply %s` takes it)",
        _finished(study),
        spec["metric"],
        best.value,
        best.params,
        REPORTED_TEST_METRIC,
        "n/a" if test_score is None else f"{test_score:.4f}",
        name,
        name,
    )


def _read_space(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path} is missing: it declares the search space (see README, Sweeps).")
    spec = yaml.safe_load(path.read_text())
    distributions = {}
    for key, entry in (spec.get("space") or {}).items():
        kind = entry.get("type")
        if kind == "float":
            distributions[key] = optuna.distributions.FloatDistribution(
                entry["low"], entry["high"], log=entry.get("log", False)
            )
        elif kind == "int":
            distributions[key] = optuna.distributions.IntDistribution(
                entry["low"], entry["high"], log=entry.get("log", False)
            )
        elif kind == "categorical":
            distributions[key] = optuna.distributions.CategoricalDistribution(entry["choices"])
        else:
            raise UserError(f"{path}: `space.{key}.type` must be float, int or categorical, got {kind!r}.")
    if not distributions or spec.get("direction") not in ("maximize", "minimize"):
        raise UserError(f"{path} needs a non-empty `space` and `direction: maximize` or `minimize`.")
    return {
        "metric": _validation_metric(path, spec.get("metric", f"{VALIDATION_PREFIX}dice")),
        "direction": spec["direction"],
        "distributions": distributions,
    }


def _validation_metric(path: Path, metric: str) -> str:
    """The metric to optimise, refused unless it is a validation score of metrics/train.json."""
    if isinstance(metric, str) and metric.startswith(VALIDATION_PREFIX):
        return metric
    raise UserError(
        f"{path}: `metric: {metric}` is not a validation score; a search optimises one of "
        f"{VALIDATION_METRICS}, e.g. `metric: {VALIDATION_PREFIX}dice`. The scores of "
        f"{TEST_METRICS} are the test set's: hyperparameters chosen on them make the test score "
        "that is reported the score they were tuned on. Each trial's test score is still written, "
        "and the best trial's is reported beside its validation score."
    )


def _finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def _settle_interrupted(study: optuna.Study, root: Path, metric: str) -> None:
    """Trials left running by a stopped search: scored if their experiment finished, else failed."""
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    if not running:
        return
    scores = _experiment_scores(root, metric)
    for trial in running:
        score = scores.get(trial.user_attrs.get("dvc_exp_name"))
        state = optuna.trial.TrialState.COMPLETE if score is not None else optuna.trial.TrialState.FAIL
        study.tell(trial.number, score, state=state)


def _experiment_scores(root: Path, metric: str, file: str = VALIDATION_METRICS) -> dict[str, float]:
    """``metric`` of ``file`` for every DVC experiment, by name, from `dvc exp show --json`."""
    shown = json.loads(queue.dvc(root, "exp", "show", "--json").stdout)
    scores = {}
    for entry in shown:
        for experiment in entry.get("experiments") or []:
            for rev in experiment["revs"]:
                metrics = ((rev.get("data") or {}).get("metrics") or {}).get(file, {})
                value = (metrics.get("data") or {}).get(metric)
                if rev.get("name") and isinstance(value, int | float):
                    scores[rev["name"]] = float(value)
    return scores
