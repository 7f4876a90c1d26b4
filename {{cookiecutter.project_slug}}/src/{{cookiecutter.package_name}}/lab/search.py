"""``search``: Bayesian search (Optuna's TPE) in which every trial is a DVC experiment.

Each trial's params, proposed from the space in conf/search.yaml, are run with
`dvc exp run -S key=value ...` (``--jobs`` > 1: queued, then run in parallel by DVC's queue),
and its score is read back from the experiment's DVC metric. So every trial is an ordinary
row of `dvc exp show` and an ordinary MLflow run with the whole provenance contract. The study
lives in ``optuna.db`` beside ``mlflow.db``: a search that stops resumes where it was.

The score is a validation one, from metrics/train.json: a search tuned on the test cases would
report a score it was chosen by. With ``folds: k`` in conf/search.yaml each trial is k
experiments, one per fold, and its score is their mean (cross-validation). Each trial's test score
is still written by its evaluate stages, and the best trial's is reported beside its validation
score, once, at the end.

While its experiments run, a worker records each trial's heartbeat in the study's storage. A
worker that dies for good stops them; once they are older than ``grace_period``, the next worker
to look fails the trial and runs its params again.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import optuna
import yaml

from ..errors import UserError
from ..paths import EVALUATE_METRICS, TRAIN_METRICS
from . import queue
from . import trial as trial_seam

log = logging.getLogger(__name__)

SPACE_FILE = Path("conf/search.yaml")
DEFAULT_STORAGE = "sqlite:///optuna.db"  # beside mlflow.db; `storage` or --storage for a team's
WORKER_ATTR = "worker"  # each trial's user attribute: host and clone of the worker running it
TEST_ATTR = "test_dice_mean"  # each trial's user attribute: its test score, reported only
# The trial's validation scores (what the search may optimise) and its test scores (reported).
VALIDATION_METRICS = str(TRAIN_METRICS)
TEST_METRICS = str(EVALUATE_METRICS)
VALIDATION_PREFIX = "best_val_"
REPORTED_TEST_METRIC = "dice_mean"
# conf/search.yaml's whole-number settings and their defaults.
SETTINGS = {"folds": 1, "heartbeat_interval": 60, "grace_period": 600}


def search(
    root: Path,
    trials: int,
    jobs: int,
    study_name: str,
    fixed: list[str],
    storage: str | None = None,
    push: str | None = None,
) -> None:
    """Run trials until the study holds ``trials`` finished or pruned ones; log the best.

    Any number of workers, in clones of the repository on any machines, may run this against
    one study in a shared ``storage`` (PostgreSQL): each takes new trials until the study holds
    ``trials``, and trial numbers come from the storage, so none runs twice. With ``push`` (a
    git remote), each worker's trials go there as they finish (`dvc exp push`), for everyone
    to `dvc exp pull`.
    """
    spec = _read_space(root / SPACE_FILE)
    url = study_storage(root, storage or spec["storage"])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Optuna calls its heartbeats experimental, and meant for study.optimize; this loop records its own.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    rdb = _open_storage(url, spec["heartbeat_interval"], spec["grace_period"])
    study = optuna.create_study(
        study_name=study_name, storage=rdb, direction=spec["direction"], load_if_exists=True
    )
    study.set_user_attr(trial_seam.PRUNER_ATTR, spec["pruner"])  # read by the trials' train stages
    worker = f"{socket.gethostname()}:{root}"
    # Seeded by this worker and the trials so far. Workers that start together must not share a
    # seed, or each would propose the same trials as the others; a resumed search goes on where
    # it was, instead of repeating the proposals that its seed starts with.
    seed = (zlib.crc32(worker.encode()) + len(study.trials)) % 2**32
    study.sampler = optuna.samplers.TPESampler(seed=seed)
    log.info("Study %s in %s; this worker: %s", study_name, hidden_password(url), worker)
    _settle_interrupted(study, root, spec["metric"], worker)
    # The trials' train stages report to the study through these (lab/trial.py).
    os.environ[trial_seam.STORAGE_VARIABLE], os.environ[trial_seam.STUDY_VARIABLE] = url, study_name
    while (wanted := trials - _settled(study) - _running(study)) > 0:
        batch = [study.ask(spec["distributions"]) for _ in range(min(jobs, wanted))]
        with _heartbeats(rdb, batch, spec["heartbeat_interval"]):
            names = _run_batch(root, batch, spec["folds"], study_name, worker, fixed, jobs)
        outcomes = _Outcomes.read(root, spec["metric"])
        for trial in batch:
            outcomes.tell(study, trial, names[trial.number], spec["metric"])
        if push:
            finished = [
                name for fold_names in names.values() for name in fold_names if name in outcomes.scores
            ]
            _push(root, push, finished)
    _report_best(study, spec["metric"])


def _run_batch(
    root: Path,
    batch: list[optuna.trial.Trial],
    folds: int,
    study_name: str,
    worker: str,
    fixed: list[str],
    jobs: int,
) -> dict[int, list[str]]:
    """Run ``batch`` as DVC experiments (one per fold of each trial); their names, by trial number."""
    # More than one experiment at once: DVC's queue runs them, ``jobs`` at a time.
    queued = ["--queue"] if jobs > 1 or folds > 1 else []
    names = {}
    for trial in batch:
        names[trial.number] = fold_names = _experiment_names(study_name, trial.number, folds)
        trial.set_user_attr(trial_seam.EXPERIMENT_ATTR, fold_names[0])  # the one that reports to the pruner
        trial.set_user_attr(trial_seam.EXPERIMENTS_ATTR, fold_names)
        trial.set_user_attr(WORKER_ATTR, worker)
        values = [f"{key}={value}" for key, value in trial.params.items()]
        log.info("Trial %d: %s", trial.number, " ".join(values))
        for fold, name in enumerate(fold_names):
            split = [f"data.folds={folds}", f"data.fold={fold}"] if folds > 1 else []
            overrides = [*fixed, *split, *values]
            queue.dvc(
                root, "exp", "run", *queued, "--name", name, *queue.set_args(overrides), check=bool(queued)
            )
    if queued:
        queue.dvc(root, "exp", "run", "--run-all", "--jobs", str(jobs), check=False)
    return names


def _experiment_names(study_name: str, number: int, folds: int) -> list[str]:
    if folds == 1:
        return [f"{study_name}-{number}"]
    return [f"{study_name}-{number}-fold{fold}" for fold in range(folds)]


@contextmanager
def _heartbeats(
    storage: optuna.storages.RDBStorage, batch: list[optuna.trial.Trial], interval: int
) -> Iterator[None]:
    """Record the heartbeat of each trial of ``batch`` every ``interval`` seconds while it runs.

    Optuna's own heartbeat thread runs only inside ``study.optimize``; this search asks and tells.
    """
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                for trial in batch:
                    storage.record_heartbeat(trial._trial_id)
            except Exception as error:  # a storage that is down for a while: the trial goes on
                log.warning("Could not record the trials' heartbeat (%s); trying again", type(error).__name__)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name="search-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _push(root: Path, git_remote: str, names: list[str]) -> None:
    """The trials' experiments to ``git_remote``, with their outputs when a DVC remote is set."""
    if not names:
        return
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        has_dvc_remote = bool(repo.config["core"].get("remote"))
    cache = [] if has_dvc_remote else ["--no-cache"]  # git refs alone: outputs stay local
    queue.dvc(root, "exp", "push", *cache, git_remote, *names)
    log.info("Pushed %s to %s", ", ".join(names), git_remote)


def study_storage(root: Path, url: str) -> str:
    """The SQLAlchemy URL Optuna opens. A relative sqlite path is the project's (the queue runs
    trials in other folders); postgresql:// gets the psycopg driver the team extra installs.
    Keep a PostgreSQL password in PGPASSWORD rather than in the URL."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        return f"sqlite:///{path if path.is_absolute() else root / path}"
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("postgresql+"):
        return url
    raise UserError(
        f"Study storage {hidden_password(url)!r} (search --storage, or `storage` in {SPACE_FILE}): "
        "use sqlite:///<file> or postgresql://<user>@<host>/<database>."
    )


def _open_storage(url: str, heartbeat_interval: int, grace_period: int) -> optuna.storages.RDBStorage:
    """The study's database, its tables made on first use, failing (and running again) the
    trials whose heartbeat is older than ``grace_period`` when a worker looks.

    Workers started together on a new database race to make them, and the loser's CREATE fails
    (PostgreSQL: duplicate key in pg_type); its next try finds them made.
    """
    from sqlalchemy import exc

    attempts = 5
    for attempt in range(1, attempts + 1):
        try:
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=_run_again,
            )
        except (exc.IntegrityError, exc.ProgrammingError):
            if attempt == attempts:
                raise
            time.sleep(attempt)
        except exc.OperationalError as error:
            raise UserError(
                f"The study's storage {hidden_password(url)} does not answer ({error.orig}). Start it, "
                "or fix search --storage / `storage` in conf/search.yaml (the password goes in PGPASSWORD)."
            ) from error


def hidden_password(url: str) -> str:
    """``url`` as it may be printed: any password replaced by ***."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: nothing in it can be told apart from a password
        return "<unreadable URL>"


@dataclass
class _Outcomes:
    """What the trials' DVC experiments ended with, read once after a batch has run."""

    scores: dict[str, float]
    pruned_at: dict[str, float]
    test_scores: dict[str, float]

    @classmethod
    def read(cls, root: Path, metric: str) -> _Outcomes:
        shown = _experiment_metrics(root)  # one `dvc exp show` for all three
        return cls(
            _values(shown, VALIDATION_METRICS, metric),
            _values(shown, VALIDATION_METRICS, "pruned_at_epoch"),
            _values(shown, TEST_METRICS, REPORTED_TEST_METRIC),
        )

    def tell(self, study: optuna.Study, trial: optuna.trial.Trial, names: list[str], metric: str) -> bool:
        """Settle ``trial`` (its experiments ``names``, one per fold): pruned, complete, or failed (False).

        Its score is the mean over its folds; the first fold is the one the pruner watches.
        """
        test_scores = [self.test_scores[name] for name in names if name in self.test_scores]
        if len(test_scores) == len(names):  # reported beside the validation score, never optimised
            trial.set_user_attr(TEST_ATTR, sum(test_scores) / len(test_scores))
        scores = [self.scores[name] for name in names if name in self.scores]
        label = names[0] if len(names) == 1 else f"{names[0]}..{len(names) - 1}"
        if names[0] in self.pruned_at:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            log.info("Trial %d (%s): pruned at epoch %d", trial.number, label, self.pruned_at[names[0]])
        elif len(scores) == len(names):
            value = sum(scores) / len(scores)
            study.tell(trial, value)
            folds = "" if len(names) == 1 else f", the mean over folds of {', '.join(map(str, scores))}"
            log.info("Trial %d (%s): %s = %s%s", trial.number, label, metric, value, folds)
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            log.info("Trial %d (%s): failed (see `dvc exp show`, `dvc queue logs`)", trial.number, label)
            return False
        return True


def _report_best(study: optuna.Study, metric: str) -> None:
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise UserError(f"No trial of study {study.study_name} finished; see `dvc exp show`.")
    best = study.best_trial
    name = best.user_attrs.get(trial_seam.EXPERIMENT_ATTR)
    test_score = best.user_attrs.get(TEST_ATTR)
    pruned = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,)))
    log.info(
        "Best of %d trials (%d more pruned): %s = %.4f (validation) with %s; its test %s = %s, "
        "reported, not optimised (DVC experiment %s; `dvc exp apply %s` takes it)",
        len(complete),
        pruned,
        metric,
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
    pruner = spec.get("pruner") or {"type": "none"}
    trial_seam.pruner(pruner)  # refused here, before any trial, if conf/search.yaml's is wrong
    settings = {key: spec.get(key, default) for key, default in SETTINGS.items()}
    for key, value in settings.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{path}: `{key}` must be a whole number ≥ 1, got {value!r}.")
    if settings["grace_period"] <= settings["heartbeat_interval"]:
        raise UserError(
            f"{path}: `grace_period` ({settings['grace_period']} s) must be longer than "
            f"`heartbeat_interval` ({settings['heartbeat_interval']} s): a trial that is running would "
            "look like a dead worker's to the next worker."
        )
    return settings | {
        "storage": spec.get("storage", DEFAULT_STORAGE),
        "pruner": pruner,
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


def _settled(study: optuna.Study) -> int:
    """Trials that count towards ``--trials``: finished or pruned (a failed one is retried)."""
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def _running(study: optuna.Study) -> int:
    """Trials running now, on any worker. A dead worker's (no heartbeat for ``grace_period``)
    are failed first, and their params run again (:func:`_run_again`)."""
    optuna.storages.fail_stale_trials(study)
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))


def _settle_interrupted(study: optuna.Study, root: Path, metric: str, worker: str) -> None:
    """This worker's trials left running when it stopped: settled from their experiments.

    Other workers' running trials are theirs: they may be running now, on another machine.
    """
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    # A trial without a worker yet is another worker's, between its ask() and its first tag.
    mine = [trial for trial in running if trial.user_attrs.get(WORKER_ATTR) == worker]
    if not mine:
        return
    outcomes = _Outcomes.read(root, metric)
    for frozen in mine:
        names = trial_seam.experiments(frozen)
        if not outcomes.tell(study, optuna.trial.Trial(study, frozen._trial_id), names, metric):
            # Stopped mid-run (a pre-empted job): its params go first again, and the train
            # stage resumes from the checkpoint it saved (training/resume.py).
            _run_again(study, frozen)


def _run_again(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
    """A trial that did not finish, settled as failed: its params are the next to run."""
    study.enqueue_trial(frozen.params, skip_if_exists=False)
    log.info(
        "Trial %d (%s, worker %s) stopped before it finished; its params run next",
        frozen.number,
        frozen.user_attrs.get(trial_seam.EXPERIMENT_ATTR),
        frozen.user_attrs.get(WORKER_ATTR),
    )


def _experiment_metrics(root: Path) -> dict[str, dict[str, dict]]:
    """Every named DVC experiment's metrics files, by name, from `dvc exp show --json`."""
    shown = json.loads(queue.dvc(root, "exp", "show", "--json").stdout)
    found = {}
    for entry in shown:
        for experiment in entry.get("experiments") or []:
            for rev in experiment["revs"]:
                if rev.get("name"):
                    found[rev["name"]] = (rev.get("data") or {}).get("metrics") or {}
    return found


def _values(shown: dict[str, dict[str, dict]], file: str, metric: str) -> dict[str, float]:
    """``metric`` of ``file`` for each experiment of ``shown`` that has it as a number."""
    values = {}
    for name, metrics in shown.items():
        value = ((metrics.get(file) or {}).get("data") or {}).get(metric)
        if isinstance(value, int | float):
            values[name] = float(value)
    return values
