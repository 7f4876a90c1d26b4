"""The README's quick start on a default bake: install, two experiments, then their records.

Runs the template's real defaults (20 epochs on 24 synthetic volumes), once for the module.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import yaml
from conftest import (
    DEFAULT_PACKAGE,
    DEFAULT_SLUG,
    exp_show,
    git,
    metrics_of,
    params_of,
    project_env,
    run,
)
from mlflow.entities import Run

pytestmark = pytest.mark.slow

HEX64 = re.compile(r"[0-9a-f]{64}")
DEFAULT_LR, SECOND_LR = 0.002, 1e-4
PROMISED_DICE = 0.90  # what the template promises for the default synthetic experiment
TRAIN_METRICS, EVALUATE_METRICS = "metrics/train.json", "metrics/evaluate.json"


@dataclass
class Experiments:
    project: Path
    env: dict[str, str]
    layer_bin: Path
    seconds: dict[str, float]  # wall time of each `dvc exp run`, by command line
    shown: dict[str, dict]  # `dvc exp show` data, by experiment name
    class_names: list[str]  # foreground classes of the synthetic dataset.json

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.project / 'mlflow.db'}"

    def named(self, lr: float) -> tuple[str, dict]:
        matches = [
            (name, data)
            for name, data in self.shown.items()
            if params_of(data)["lr"] == lr
        ]
        assert len(matches) == 1, (
            f"expected one experiment with lr={lr}: {sorted(self.shown)}"
        )
        return matches[0]


def readme_block(project: Path, heading: str) -> list[str]:
    """The commands of the first bash block under ``heading`` in the baked README, comments
    stripped, in order."""
    section = (project / "README.md").read_text().split(f"## {heading}\n", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section.split("\n## ", 1)[0], re.DOTALL)
    assert block, f"the README has no bash block under {heading!r}"
    lines = (line.split("#")[0].strip() for line in block.group(1).splitlines())
    return [line for line in lines if line]


def readme_quick_start(project: Path) -> list[str]:
    return readme_block(project, "Start here")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def check_mlflow_ui(command: str, project: Path, env: dict[str, str]) -> int:
    """Start the README's `mlflow ui` as written (on a free port, through MLFLOW_PORT) and
    return how many runs its REST API lists for the project's experiment."""
    port = free_port()
    server = subprocess.Popen(
        ["bash", "-c", command],
        cwd=project,
        env={**env, "MLFLOW_PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    api = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                query = urllib.parse.urlencode({"experiment_name": DEFAULT_SLUG})
                with urllib.request.urlopen(
                    f"{api}/experiments/get-by-name?{query}"
                ) as answer:
                    experiment_id = json.load(answer)["experiment"]["experiment_id"]
                break
            except OSError:
                assert server.poll() is None, (
                    f"`{command}` exited with {server.returncode}"
                )
                assert time.monotonic() < deadline, (
                    f"`{command}` did not answer on port {port}"
                )
                time.sleep(1)
        request = urllib.request.Request(
            f"{api}/runs/search",
            data=json.dumps(
                {"experiment_ids": [experiment_id], "max_results": 100}
            ).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request) as answer:
            return len(json.load(answer).get("runs", []))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def experiments(
    bake, install_venv, tmp_path_factory: pytest.TempPathFactory
) -> Experiments:
    """The README's quick start, every command as written and in order."""
    project = bake(tmp_path_factory.mktemp("end-to-end"))
    layer_bin = install_venv(project)
    env = project_env(project, path_prefix=layer_bin)
    env.pop(
        "PYTHONPATH"
    )  # the README's `pip install -e` must make the package importable
    commands = readme_quick_start(project)
    assert commands == [
        'pip install -e ".[dev]"',
        f"{DEFAULT_SLUG} doctor",
        "dvc exp run",
        "dvc exp run -S lr=1e-4",  # SECOND_LR
        "dvc exp show",
        "mlflow ui --backend-store-uri sqlite:///mlflow.db",
    ], commands

    seconds = {}
    for command in commands:
        if command.startswith("mlflow ui"):
            assert check_mlflow_ui(command, project, env) == 4, (
                "the UI lists not 4 runs"
            )
            continue
        started = time.perf_counter()
        result = run(["bash", "-c", command], cwd=project, env=env)
        seconds[command] = time.perf_counter() - started
        if command.startswith("pip install"):
            assert git(project, "status", "--porcelain") == "", (
                "the install left files for git to commit"
            )
        if command.endswith(" doctor"):
            assert result.stdout.splitlines()[-1].startswith("0 failed"), result.stdout
        if command == "dvc exp show":
            # The table is cut to the terminal's width: check the rows, not every column.
            rows = re.findall(r"\[[\w-]+\]", result.stdout)
            assert len(rows) == 2 and "dice_mean" in result.stdout, result.stdout
    labels = json.loads((project / "data" / "synthetic" / "dataset.json").read_text())[
        "labels"
    ]
    class_names = [name for index, name in labels.items() if index != "0"]
    return Experiments(
        project,
        env,
        layer_bin,
        {c: s for c, s in seconds.items() if c.startswith("dvc exp run")},
        exp_show(project, env),
        class_names,
    )


@pytest.fixture(scope="module")
def client(experiments: Experiments) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=experiments.tracking_uri)


@pytest.fixture(scope="module")
def runs(experiments: Experiments, client: mlflow.MlflowClient) -> dict[str, Run]:
    """Every run of the project's MLflow experiment, by run id."""
    experiment = client.get_experiment_by_name(DEFAULT_SLUG)
    assert experiment is not None, f"no MLflow experiment named {DEFAULT_SLUG}"
    found = client.search_runs([experiment.experiment_id], max_results=1000)
    return {run_.info.run_id: run_ for run_ in found}


def run_ids(data: dict) -> tuple[str, str]:
    """(train run id, evaluate run id) of one experiment, from its DVC metrics."""
    train = metrics_of(data, TRAIN_METRICS)["mlflow_run_id"]
    evaluate = metrics_of(data, EVALUATE_METRICS)["mlflow_run_id"]
    return train, evaluate


def lock_md5(project: Path, path: str) -> str:
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    md5s = {
        out["path"]: out["md5"]
        for stage in lock["stages"].values()
        for out in stage.get("outs", [])
    }
    return md5s[path]


def download(
    experiments: Experiments, run_id: str, artifact: str, tmp_path: Path
) -> str:
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id,
        artifact_path=artifact,
        dst_path=str(tmp_path / run_id),
        tracking_uri=experiments.tracking_uri,
    )
    return Path(local).read_text()


def test_readme_install_makes_the_package_importable(experiments: Experiments) -> None:
    env = dict(experiments.env)
    env.pop("PYTHONPATH", None)
    result = run(
        [
            experiments.layer_bin / "python",
            "-c",
            f"import {DEFAULT_PACKAGE}; print({DEFAULT_PACKAGE}.__file__)",
        ],
        cwd=experiments.project.parent,
        env=env,
    )
    assert Path(result.stdout.strip()).is_relative_to(experiments.project / "src")


def test_both_experiments_are_shown_with_params_and_metrics(
    experiments: Experiments,
) -> None:
    assert len(experiments.shown) == 2, sorted(experiments.shown)
    for lr in (DEFAULT_LR, SECOND_LR):
        _, data = experiments.named(lr)
        assert metrics_of(data, TRAIN_METRICS)["mlflow_run_id"]
        evaluation = metrics_of(data, EVALUATE_METRICS)
        expected = {"mlflow_run_id", "dice_mean", "hd95_mean"}
        expected |= {
            f"{metric}_{name}"
            for metric in ("dice", "hd95")
            for name in experiments.class_names
        }
        assert expected <= set(evaluation), sorted(evaluation)
        assert 0.0 <= evaluation["dice_mean"] <= 1.0


def test_default_experiment_keeps_the_dice_promise(
    experiments: Experiments, capsys: pytest.CaptureFixture[str]
) -> None:
    with capsys.disabled():
        for command, seconds in experiments.seconds.items():
            print(f"\n  `{command}` took {seconds:.0f} s", end="")
    _, data = experiments.named(DEFAULT_LR)
    dice = metrics_of(data, EVALUATE_METRICS)["dice_mean"]
    assert dice >= PROMISED_DICE, (
        f"default experiment's test dice_mean {dice:.3f} < {PROMISED_DICE}"
    )


def test_runs_in_mlflow_are_exactly_the_runs_in_exp_show(
    experiments: Experiments, runs: dict[str, Run]
) -> None:
    shown_ids = {
        run_id for data in experiments.shown.values() for run_id in run_ids(data)
    }
    assert set(runs) == shown_ids
    for name, data in experiments.shown.items():
        train_id, evaluate_id = run_ids(data)
        assert runs[train_id].data.tags["stage"] == "train"
        assert runs[evaluate_id].data.tags["mlflow.parentRunId"] == train_id, (
            f"{name}: evaluate not nested"
        )
    assert all(run_.info.status == "FINISHED" for run_ in runs.values())


def test_every_run_carries_the_provenance_contract(
    experiments: Experiments, runs: dict[str, Run]
) -> None:
    project = experiments.project
    head = git(project, "rev-parse", "HEAD")
    data_md5 = {
        name: lock_md5(project, f"data/{name}") for name in ("synthetic", "processed")
    }
    params_hashes = {}
    for name, data in experiments.shown.items():
        params = {
            key: value for key, value in params_of(data).items() if key != "conf_sha256"
        }
        canonical = json.dumps(params, sort_keys=True, separators=(",", ":"))
        for run_id in run_ids(data):
            tags = runs[run_id].data.tags
            where = f"{name}/{tags.get('stage')} run {run_id}"
            assert tags["git.commit"] == head, where
            assert tags["git.dirty"] == "false", where
            assert HEX64.fullmatch(tags["code.sha256"]), where
            assert HEX64.fullmatch(tags["params.sha256"]), where
            assert (
                tags["params.sha256"] == hashlib.sha256(canonical.encode()).hexdigest()
            ), where
            assert tags["seed"] == str(params["seed"]), where
            assert tags["dvc.exp_name"] == name, where
            assert tags["dvc.baseline_rev"] == head, where
            for folder, md5 in data_md5.items():
                assert tags[f"data.{folder}.md5"] == md5, where
                assert data["outs"][f"data/{folder}"]["hash"] == md5, where
            params_hashes.setdefault(name, set()).add(tags["params.sha256"])
    assert len({run_.data.tags["code.sha256"] for run_ in runs.values()}) == 1, (
        "one code, several hashes"
    )
    assert all(len(hashes) == 1 for hashes in params_hashes.values()), params_hashes
    assert len(set.union(*params_hashes.values())) == 2, (
        "both experiments have the same params.sha256"
    )


def test_runs_log_params_curves_model_and_artifacts(
    experiments: Experiments,
    runs: dict[str, Run],
    client: mlflow.MlflowClient,
    tmp_path: Path,
) -> None:
    experiment_id = client.get_experiment_by_name(DEFAULT_SLUG).experiment_id
    models = client.search_logged_models(experiment_ids=[experiment_id])
    for lr in (DEFAULT_LR, SECOND_LR):
        name, data = experiments.named(lr)
        params = params_of(data)
        train_id, evaluate_id = run_ids(data)
        for run_id in (train_id, evaluate_id):
            logged = runs[run_id].data.params
            assert float(logged["lr"]) == lr and logged["epochs"] == str(
                params["epochs"]
            ), name
            assert logged["model.net._target_"] == params["model"]["net"]["_target_"]
            assert "conf_sha256" not in logged
            config = download(experiments, run_id, "config/params.yaml", tmp_path)
            resolved = {
                key: value for key, value in params.items() if key != "conf_sha256"
            }
            assert yaml.safe_load(config) == resolved, (
                f"{name}: config/params.yaml is not the params"
            )
            packages = download(
                experiments, run_id, "environment/requirements.txt", tmp_path
            )
            assert all(
                f"\n{package}==" in f"\n{packages.lower()}"
                for package in ("torch", "monai", "mlflow")
            )

        history = client.get_metric_history(train_id, "train_loss")
        assert [
            metric.step for metric in sorted(history, key=lambda m: m.step)
        ] == list(range(1, params["epochs"] + 1)), (
            f"{name}: train_loss is not logged once per epoch"
        )
        assert [model.source_run_id for model in models].count(train_id) == 1, (
            f"{name}: no logged model"
        )
        assert [model.source_run_id for model in models].count(evaluate_id) == 0


def test_stale_params_yaml_is_refused(
    experiments: Experiments, runs: dict[str, Run], client: mlflow.MlflowClient
) -> None:
    """An edit to conf/ that `dvc repro` cannot compose: the pipeline must stop and say why."""
    project = experiments.project
    config = project / "conf" / "config.yaml"
    original = config.read_text()
    edited = re.sub(r"(?m)^epochs: \d+", "epochs: 3", original)
    assert edited != original
    try:
        config.write_text(edited)
        result = run(["dvc", "repro"], cwd=project, env=experiments.env, check=False)
    finally:
        config.write_text(original)
    assert result.returncode != 0, (
        f"`dvc repro` accepted a stale params.yaml\n{result.stdout[-2000:]}"
    )
    assert "stale" in result.stderr and "dvc exp run" in result.stderr, result.stderr[
        -2000:
    ]
    experiment_id = client.get_experiment_by_name(DEFAULT_SLUG).experiment_id
    assert len(client.search_runs([experiment_id], max_results=1000)) == len(runs), (
        "a stale run was logged"
    )


def test_readme_promote_block_gives_a_branch_that_verifies(
    experiments: Experiments, tmp_path: Path
) -> None:
    """ "Promote a result" as written: the best experiment becomes a branch; its evaluate run
    verifies there, on a commit that descends from the one it recorded."""
    project, env = experiments.project, experiments.env
    show, branch = readme_block(project, "Promote a result")
    assert show == (
        "dvc exp show --sort-by metrics/evaluate.json:dice_mean --sort-order desc"
    )
    shown = run(["bash", "-c", show], cwd=project, env=env).stdout
    best = max(
        experiments.shown,
        key=lambda name: metrics_of(experiments.shown[name], EVALUATE_METRICS)[
            "dice_mean"
        ],
    )
    assert shown.index(best) < min(
        shown.index(name) for name in experiments.shown if name != best
    )
    command = branch.replace("<experiment>", best).replace("<branch>", "promoted")
    run(["bash", "-c", command], cwd=project, env=env)
    evaluate_id = run_ids(experiments.shown[best])[1]
    # A colleague's clone of the branch, sharing this machine's DVC cache and MLflow store.
    colleague = tmp_path / "colleague"
    run(
        [
            "git",
            "clone",
            "--quiet",
            "--branch",
            "promoted",
            str(project),
            str(colleague),
        ],
        cwd=tmp_path,
        env=env,
    )
    cache = str(project / ".dvc" / "cache")
    run(["dvc", "cache", "dir", "--local", cache], cwd=colleague, env=env)
    run(["dvc", "checkout"], cwd=colleague, env=env)
    shared = {**env, "MLFLOW_TRACKING_URI": experiments.tracking_uri}
    verified = run([DEFAULT_SLUG, "verify", evaluate_id], cwd=colleague, env=shared)
    assert "descendant of" in verified.stdout and "MISMATCH" not in verified.stdout
