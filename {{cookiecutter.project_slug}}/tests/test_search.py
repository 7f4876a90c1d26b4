"""`search`: every Optuna trial is a DVC experiment and an MLflow run; parallel trials share a new
tracking store safely; a stopped study resumes, in the same clone or, when its worker died, in
another; it optimises a validation score, never a test one, and with folds their mean."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml
from conftest import TINY


def shown_experiments(workspace: Path, run) -> dict[str, dict]:
    """`dvc exp show --json`: each experiment's data (params and metrics files), by name."""
    shown = json.loads(run([sys.executable, "-m", "dvc", "exp", "show", "--json"], workspace).stdout)
    return {
        rev["name"]: rev["data"]
        for entry in shown
        for experiment in entry.get("experiments") or []
        for rev in experiment["revs"]
    }


def experiments(workspace: Path, run, file: str) -> dict[str, dict]:
    """`dvc exp show --json` metrics of ``file``, by experiment name."""
    return {name: data["metrics"][file]["data"] for name, data in shown_experiments(workspace, run).items()}


def commit_search_spec(workspace: Path, run, message: str, **changes: object) -> None:
    """conf/search.yaml with ``changes`` to its top-level keys, committed with ``message``."""
    space = workspace / "conf" / "search.yaml"
    space.write_text(yaml.safe_dump(yaml.safe_load(space.read_text()) | changes))
    run(["git", "commit", "--quiet", "-am", message], workspace)


def test_a_search_that_optimises_a_test_metric_is_refused_before_any_trial(
    tmp_path: Path, copy_project, run
) -> None:
    workspace = copy_project(tmp_path)
    package = next(p.parent.name for p in (workspace / "src").glob("*/cli.py"))
    space = workspace / "conf" / "search.yaml"
    spec = yaml.safe_load(space.read_text())
    assert spec["metric"] == "best_val_dice"  # as baked: the validation Dice at the best epoch
    space.write_text(yaml.safe_dump({**spec, "metric": "dice_mean"}))
    refused = run([sys.executable, "-m", package, "search", "--trials", "1"], workspace, check=False)
    assert refused.returncode == 2, refused.stderr
    assert "`metric: dice_mean` is not a validation score" in refused.stderr, refused.stderr
    assert "metrics/evaluate.json are the test set's" in refused.stderr, refused.stderr
    assert not (workspace / "optuna.db").exists()  # no study, no trial


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"grace_period": 30, "heartbeat_interval": 60}, "`grace_period` (30 s) must be longer than"),
        ({"folds": 0}, "`folds` must be a whole number ≥ 1, got 0"),
        ({"heartbeat_interval": "1m"}, "`heartbeat_interval` must be a whole number ≥ 1, got '1m'"),
    ],
)
def test_a_bad_search_setting_is_refused_naming_it(
    tmp_path: Path, project_root: Path, package_module, user_error, setting: dict, message: str
) -> None:
    (tmp_path / "conf").mkdir()
    spec = yaml.safe_load((project_root / "conf" / "search.yaml").read_text())
    (tmp_path / "conf" / "search.yaml").write_text(yaml.safe_dump({**spec, **setting}))
    with pytest.raises(user_error, match=re.escape(message)):
        package_module("lab.search").search(tmp_path, trials=1, jobs=1, study_name="s", fixed=[])
    assert not (tmp_path / "optuna.db").exists()


@pytest.mark.slow
def test_a_stopped_search_resumes_and_every_trial_is_an_experiment(
    tmp_path: Path, copy_experiment, run
) -> None:
    workspace = copy_experiment(tmp_path)  # its data stages come from DVC's cache
    shutil.rmtree(workspace / "mlartifacts")  # and no tracking store: the trials make a new one
    for store in ("mlflow.db", "mlflow.db.lock"):
        (workspace / store).unlink(missing_ok=True)
    package = next(p.parent.name for p in (workspace / "src").glob("*/cli.py"))
    search = [sys.executable, "-m", package, "search", *(arg for o in TINY for arg in ("-S", o))]

    # Two trials side by side through DVC's queue, on a tracking store that does not exist yet:
    # both workers create it at once, and every run lands, finished, in the project's experiment.
    assert not (workspace / "mlflow.db").exists()
    run([*search, "--trials", "2", "--jobs", "2"], workspace)
    client = mlflow.MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    name = yaml.safe_load((workspace / "params.yaml").read_text())["tracking"]["experiment_name"]
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert {client.get_experiment(r.info.experiment_id).name for r in runs} == {name}
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)

    # Stopped after 2; asked for 3, it adds 1.
    resumed = run([*search, "--trials", "3"], workspace)
    assert "Best of 3 trials (0 more pruned): best_val_dice = " in resumed.stderr, resumed.stderr[-2000:]
    assert "(validation)" in resumed.stderr and "its test dice_mean = " in resumed.stderr

    study = optuna.load_study(study_name="search", storage=f"sqlite:///{workspace / 'optuna.db'}")
    complete = [trial for trial in study.trials if trial.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3
    shown = experiments(workspace, run, "metrics/train.json")
    names = {trial.user_attrs["dvc_exp_name"] for trial in complete}
    assert names <= set(shown), (sorted(names), sorted(shown))
    for trial in complete:  # each trial's value is its validation score
        assert shown[trial.user_attrs["dvc_exp_name"]]["best_val_dice"] == pytest.approx(trial.value)
    assert study.best_value == max(trial.value for trial in complete)

    experiment_id = client.get_experiment_by_name(name).experiment_id
    runs = client.search_runs([experiment_id], "tags.stage = 'train'", max_results=100)
    assert sorted(r.data.tags["dvc.exp_name"] for r in runs) == sorted(names)
    for found in runs:
        trial = next(t for t in complete if t.user_attrs["dvc_exp_name"] == found.data.tags["dvc.exp_name"])
        assert float(found.data.params["lr"]) == pytest.approx(trial.params["lr"])


@pytest.mark.slow
def test_a_trial_that_cannot_learn_is_pruned_before_its_last_epoch_and_the_others_finish(
    tmp_path: Path, copy_experiment, run
) -> None:
    workspace = copy_experiment(tmp_path)  # its data stages come from DVC's cache
    package = next(p.parent.name for p in (workspace / "src").glob("*/cli.py"))
    epochs = 6
    commit_search_spec(
        workspace,
        run,
        "A space with a rate that cannot learn",
        space={"lr": {"type": "categorical", "choices": [3e-3, 2e-3, 1e-7]}},
        pruner={"type": "median", "n_startup_trials": 2, "n_warmup_steps": 4},
    )
    # The two rates that learn first, side by side in DVC's queue, then the one that cannot: the
    # pruner has a median to use, and a trial in a queue worker reports to the study as one run here.
    storage = f"sqlite:///{workspace / 'optuna.db'}"
    study = optuna.create_study(study_name="prune", storage=storage, direction="maximize")
    for lr in (3e-3, 2e-3, 1e-7):
        study.enqueue_trial({"lr": lr})
    fixed = [arg for o in (*TINY[1:], f"epochs={epochs}") for arg in ("-S", o)]
    search = [sys.executable, "-m", package, "search", "--study", "prune", "--trials", "3", *fixed]
    result = run([*search, "--jobs", "2"], workspace)

    study = optuna.load_study(study_name="prune", storage=storage)
    states = {trial.params["lr"]: trial.state for trial in study.trials}
    assert states == {
        3e-3: optuna.trial.TrialState.COMPLETE,
        2e-3: optuna.trial.TrialState.COMPLETE,
        1e-7: optuna.trial.TrialState.PRUNED,
    }, result.stderr[-3000:]
    (pruned,) = [trial for trial in study.trials if trial.state == optuna.trial.TrialState.PRUNED]
    name = pruned.user_attrs["dvc_exp_name"]
    shown = experiments(workspace, run, "metrics/train.json")
    stopped = shown[name]["pruned_at_epoch"]
    assert stopped < epochs and stopped == max(pruned.intermediate_values), shown[name]
    finished = [trial for trial in study.trials if trial.state == optuna.trial.TrialState.COMPLETE]
    assert all("pruned_at_epoch" not in shown[trial.user_attrs["dvc_exp_name"]] for trial in finished)
    print(f"\n  pruning saved {epochs - stopped} of {3 * epochs} epochs (trial {pruned.number}, lr 1e-7)")
    assert f"pruned at epoch {stopped}" in result.stderr and "(1 more pruned)" in result.stderr

    client = mlflow.MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    (train,) = client.search_runs(experiment_ids, f"tags.`dvc.exp_name` = '{name}' and tags.stage = 'train'")
    assert train.info.status == "KILLED" and train.data.tags["search.pruned"] == "true"
    assert train.data.tags["search.pruned_at_epoch"] == str(stopped)
    registered = {version.tags.get("train_run_id") for version in client.search_model_versions()}
    assert train.info.run_id not in registered and len(registered) >= 1  # champion never moved on it
    refused = run([sys.executable, "-m", package, "reproduce", train.info.run_id], workspace, check=False)
    assert refused.returncode == 2 and "was pruned by search study prune" in refused.stderr, refused.stderr


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # Optuna's heartbeats
def test_a_dead_workers_trial_is_failed_and_run_again_by_another_worker(
    tmp_path: Path, copy_experiment, run
) -> None:
    first = copy_experiment(tmp_path / "first")
    package = next(p.parent.name for p in (first / "src").glob("*/cli.py"))
    grace = 5
    commit_search_spec(
        first,
        run,
        "Heartbeats every second",
        heartbeat_interval=1,
        grace_period=grace,
        pruner={"type": "none"},
        space={"lr": {"type": "categorical", "choices": [3e-3, 2e-3]}},
    )
    # The second worker's clone shares the first's DVC cache: its data stages are restored from it.
    second = tmp_path / "second"
    run(["git", "clone", "--quiet", str(first), str(second)], tmp_path)
    run([sys.executable, "-m", "dvc", "cache", "dir", "--local", str(first / ".dvc" / "cache")], second)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name="shared", storage=storage, direction="maximize").enqueue_trial(
        {"lr": 3e-3}
    )
    fixed = [arg for o in (*TINY[1:], "epochs=6") for arg in ("-S", o)]
    search = [
        sys.executable,
        "-m",
        package,
        "search",
        "--study",
        "shared",
        "--trials",
        "1",
        "--storage",
        storage,
    ]
    env = {**os.environ, "PYTHONPATH": str(first / "src"), "DVC_NO_ANALYTICS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    # The first worker in a session of its own, so that all of it can be killed, as a machine dies.
    output = tmp_path / "first-worker.log"
    with output.open("w") as log:
        worker = subprocess.Popen(
            [*search, *fixed], cwd=first, env=env, start_new_session=True, stdout=log, stderr=log
        )
    heartbeats = optuna.storages.RDBStorage(storage, heartbeat_interval=1, grace_period=grace)
    deadline = time.monotonic() + 300
    while True:  # its trial is running, has reported a validation, and has run past the grace period
        (trial,) = optuna.load_study(study_name="shared", storage=storage).trials
        started = trial.datetime_start
        if trial.intermediate_values and started and time.time() - started.timestamp() > grace + 2:
            break
        assert worker.poll() is None and time.monotonic() < deadline, output.read_text()[-3000:]
        time.sleep(0.5)
    study = optuna.load_study(study_name="shared", storage=heartbeats)
    optuna.storages.fail_stale_trials(study)  # a live worker's trial is not stale: its heartbeat goes on
    assert study.trials[0].state == optuna.trial.TrialState.RUNNING
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    time.sleep(grace + 1)  # its last heartbeat is now older than the grace period

    result = run([*search, *fixed], second)
    assert "Trial 0 (shared-0, worker " in result.stderr, result.stderr[-3000:]
    assert "stopped before it finished; its params run next" in result.stderr
    study = optuna.load_study(study_name="shared", storage=storage)
    dead, again = study.trials
    assert dead.state == optuna.trial.TrialState.FAIL and dead.user_attrs["worker"].endswith(str(first))
    assert again.state == optuna.trial.TrialState.COMPLETE and again.params == dead.params == {"lr": 3e-3}
    assert again.user_attrs["worker"].endswith(str(second))
    shown = experiments(second, run, "metrics/train.json")
    assert shown["shared-1"]["best_val_dice"] == pytest.approx(again.value)
    assert "Best of 1 trials (0 more pruned)" in result.stderr, result.stderr[-2000:]


@pytest.mark.slow
def test_with_folds_a_trial_is_one_experiment_per_fold_scored_by_their_mean(
    tmp_path: Path, copy_experiment, run
) -> None:
    workspace = copy_experiment(tmp_path)
    package = next(p.parent.name for p in (workspace / "src").glob("*/cli.py"))
    commit_search_spec(workspace, run, "Trials cross-validated over 2 folds", folds=2)
    fixed = [arg for o in TINY for arg in ("-S", o)]
    result = run([sys.executable, "-m", package, "search", "--trials", "1", "--jobs", "2", *fixed], workspace)

    (trial,) = optuna.load_study(study_name="search", storage=f"sqlite:///{workspace / 'optuna.db'}").trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.user_attrs["dvc_exp_names"] == ["search-0-fold0", "search-0-fold1"]
    shown = shown_experiments(workspace, run)
    folds = [shown[name] for name in trial.user_attrs["dvc_exp_names"]]
    # Each fold validates on its own fold of the same 2-fold split, with the trial's params.
    assert [fold["params"]["params.yaml"]["data"]["data"]["fold"] for fold in folds] == [0, 1]
    assert all(fold["params"]["params.yaml"]["data"]["data"]["folds"] == 2 for fold in folds)
    assert all(fold["params"]["params.yaml"]["data"]["lr"] == trial.params["lr"] for fold in folds)
    scores = [fold["metrics"]["metrics/train.json"]["data"]["best_val_dice"] for fold in folds]
    assert trial.value == pytest.approx(sum(scores) / 2)
    assert "the mean over folds of" in result.stderr, result.stderr[-2000:]
    tests = [fold["metrics"]["metrics/evaluate.json"]["data"]["dice_mean"] for fold in folds]
    assert trial.user_attrs["test_dice_mean"] == pytest.approx(sum(tests) / 2)  # reported, not optimised

    client = mlflow.MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.stage = 'train'")
    trial_runs = [found for found in runs if found.data.tags.get("search.trial") == "0"]
    assert sorted(found.data.tags["dvc.exp_name"] for found in trial_runs) == [
        "search-0-fold0",
        "search-0-fold1",
    ]
