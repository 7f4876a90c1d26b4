"""The template README's demo, then the baked README, every command in its order.

The demo runs as the template README gives it, in a fresh `git clone` of this repository with
no git identity, and bakes the default project: its install and both experiments are the baked
README's quick start ("Start here"), at the real defaults. The rest of "Start here" (`doctor`,
`dvc exp show`, `mlflow ui`) runs as written in that project, and the tests after it check the
two experiments' records. The last test makes the defaults tiny in conf/ (as the README says
to change a default) and walks every other bash block of the README: own data, predict, sweeps
and search, promote, verify and reproduce, team setup, hooks. It changes the project, so it
stays last.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pytest
import yaml
from conftest import (
    DEFAULT_PACKAGE,
    DEFAULT_SLUG,
    describe,
    exp_show,
    fresh_clone,
    git,
    metrics_of,
    params_of,
    project_env,
    readme_blocks,
    run,
    template_readme_commands,
    wait_for_queue,
)
from mlflow.entities import Run
from msd_datasets import CT_SPACINGS, case_name, write_ct
from servers import Service, free_port

pytestmark = pytest.mark.slow

HEX64 = re.compile(r"[0-9a-f]{64}")
DEFAULT_LR, SECOND_LR = 0.002, 1e-4
# The template's promise for the default synthetic experiment (lr 0.002), which the demo runs.
PROMISED_DICE = 0.90
# Lines the demo must no longer print: library chatter that buried the project's own lines.
NOISE = (
    "INFO mlflow.",
    "FutureWarning",
    "0/1 specialized",
    "Registered model",
    "Successfully registered model",
    "Created version",
    "No file hash info found",
    "DeprecationWarning",
)
TRAIN_METRICS, EVALUATE_METRICS = "metrics/train.json", "metrics/evaluate.json"


@dataclass
class Experiments:
    project: Path
    env: dict[str, str]
    layer_bin: Path
    shown: dict[str, dict]  # `dvc exp show` data, by experiment name
    class_names: list[str]  # foreground classes of the synthetic dataset.json
    # The template README's demo, which baked the project.
    demo: subprocess.CompletedProcess

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


def readme_quick_start(project: Path) -> list[str]:
    return next(
        commands
        for heading, commands in readme_blocks(project)
        if heading == "Start here"
    )


def check_mlflow_ui(command: str, project: Path, env: dict[str, str], log: Path) -> int:
    """Start the README's `mlflow ui` as written (on a free port, through MLFLOW_PORT) and
    return how many runs its REST API lists for the project's experiment."""
    port = free_port()
    ui = Service(
        f"`{command}`",
        ["bash", "-c", command],
        {**env, "MLFLOW_PORT": str(port)},
        project,
        port,
        log,
    ).start(ready_path="/health")
    api = f"{ui.url}/api/2.0/mlflow"
    try:
        query = urllib.parse.urlencode({"experiment_name": DEFAULT_SLUG})
        with urllib.request.urlopen(f"{api}/experiments/get-by-name?{query}") as answer:
            experiment_id = json.load(answer)["experiment"]["experiment_id"]
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
        ui.stop()


def commit_tiny_defaults(project: Path) -> None:
    """A tiny problem (2 epochs, 6 volumes of 32^3), set in conf/config.yaml and committed."""
    config = project / "conf" / "config.yaml"
    tiny = re.sub(r"(?m)^epochs: \d+", "epochs: 2", config.read_text())
    tiny = re.sub(r"(?m)^  num_cases: \d+", "  num_cases: 6", tiny)
    tiny = re.sub(r"(?m)^  size: \d+", "  size: 32", tiny)
    config.write_text(tiny)
    git(
        project,
        "commit",
        "--quiet",
        "-m",
        "Tiny settings for the tests",
        "conf/config.yaml",
    )


def run_demo(
    clone: Path, layer_bin: Path, git_isolation: dict[str, str | None]
) -> subprocess.CompletedProcess:
    """The template README's demo command as written, in ``clone``, with no git identity. It
    shares the test virtualenv through ``VENV`` (a layer over it, so that the demo's
    `pip install -e` does not touch the shared one)."""
    (layer_bin.parent / ".complete").touch()  # .ci/env.sh: the virtualenv is ready
    env = {key: value for key, value in os.environ.items() if key not in git_isolation}
    env |= {key: value for key, value in git_isolation.items() if value is not None}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("PYTHONPATH", None)
    shared_bin = Path(sys.executable).parent
    env |= {
        "VENV": str(layer_bin.parent),
        "PATH": f"{layer_bin}:{shared_bin}:{env['PATH']}",
    }
    demo, _ = template_readme_commands()
    result = run(["bash", "-c", demo], cwd=clone, env=env, check=False, timeout=900)
    assert result.returncode == 0, describe(result)
    return result


def demo_commands(clone: Path) -> list[str]:
    """The commands of .ci/demo after its `cd` into the baked project (`time` aside)."""
    lines = (clone / ".ci" / "demo").read_text().split("cd ", 1)[1].splitlines()[1:]
    commands = (line.split("#")[0].strip().removeprefix("time ") for line in lines)
    return [command for command in commands if command]


def pipeline_paths(project: Path) -> set[str]:
    """What `dvc exp run` writes besides DVC's .gitignore entries: params.yaml, dvc.lock, and
    each stage's outs, metrics and plots."""
    declared = {"params.yaml", "dvc.lock"}
    for stage in yaml.safe_load((project / "dvc.yaml").read_text())["stages"].values():
        for key in ("outs", "metrics", "plots"):
            for entry in stage.get(key, []):
                declared.add(next(iter(entry)) if isinstance(entry, dict) else entry)
    return declared


def written_by_the_pipeline(path: str, declared: set[str]) -> bool:
    return Path(path).name == ".gitignore" or any(
        path == out or path.startswith(f"{out.rstrip('/')}/") for out in declared
    )


@pytest.fixture(scope="module")
def experiments(
    install_venv, git_isolation, tmp_path_factory: pytest.TempPathFactory
) -> Experiments:
    """The demo, then the rest of the baked README's quick start, every command as written."""
    clone = fresh_clone(tmp_path_factory.mktemp("end-to-end") / "template")
    layer_bin = install_venv(clone)
    demo = run_demo(clone, layer_bin, git_isolation)
    project = clone / "demo" / DEFAULT_SLUG
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
    # The demo ran the install and both experiments, in this order; `doctor` runs after them.
    in_demo = demo_commands(clone)
    ran_by_demo = [command for command in commands if command in in_demo]
    assert ran_by_demo == [commands[0], *commands[2:4]], in_demo
    status = ["git", "status", "--porcelain", "--untracked-files=all"]
    changed = run(status, cwd=project).stdout
    declared = pipeline_paths(project)
    strays = [
        line
        for line in changed.splitlines()
        if not written_by_the_pipeline(line[3:], declared)
    ]
    assert not strays, f"the install left files for git to commit:\n{changed}"

    for command in commands:
        if command in ran_by_demo:
            continue
        if command.startswith("mlflow ui"):
            log = tmp_path_factory.mktemp("mlflow-ui") / "log"
            assert check_mlflow_ui(command, project, env, log) == 4, (
                "the UI lists not 4 runs"
            )
            continue
        result = run(["bash", "-c", command], cwd=project, env=env)
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
        exp_show(project, env),
        class_names,
        demo,
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


def test_demo_shows_both_experiments_and_the_default_one_learns(
    experiments: Experiments, capsys: pytest.CaptureFixture[str]
) -> None:
    stdout = experiments.demo.stdout
    output = stdout + experiments.demo.stderr
    with capsys.disabled():
        print(f"\n  the demo printed {len(output.splitlines())} lines", end="")
    rows = [line for line in stdout.splitlines() if re.match(r"\|.*\[[\w-]+\]", line)]
    assert len(rows) == 2, f"expected two experiments in the table:\n{stdout[-3000:]}"
    header = next(line for line in stdout.splitlines() if "| Experiment" in line)
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    by_lr = {}
    for row in rows:
        cells = dict(
            zip(
                columns,
                (cell.strip() for cell in row.strip("|").split("|")),
                strict=True,
            )
        )
        by_lr[float(cells["lr"])] = cells
        assert 0.0 <= float(cells["dice_mean"]) <= 1.0, row
        assert re.fullmatch(
            r"[0-9a-f]{32}", cells["metrics/train.json:mlflow_run_id"]
        ), row
    assert set(by_lr) == {DEFAULT_LR, SECOND_LR}, rows
    dice = float(by_lr[DEFAULT_LR]["dice_mean"])
    assert dice >= PROMISED_DICE, (
        f"the default experiment's test dice_mean {dice} < {PROMISED_DICE}"
    )
    assert (experiments.project / ".git").is_dir()
    noisy = [line for line in output.splitlines() if any(n in line for n in NOISE)]
    assert not noisy, "the demo prints library noise again:\n" + "\n".join(noisy)


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
    stage_deps = {
        stage: [str(dep).split()[0] for dep in spec.get("deps", [])]
        for stage, spec in yaml.safe_load((project / "dvc.yaml").read_text())[
            "stages"
        ].items()
    }
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
            stage = tags["stage"]
            code = {  # the stage's code deps, as this experiment's dvc.lock records them
                dep: data["deps"][dep]["hash"]
                for dep in stage_deps[stage]
                if dep.startswith("src/")
            }
            expected_code = hashlib.md5(
                json.dumps(code, sort_keys=True).encode()
            ).hexdigest()
            assert tags[f"code.{stage}.md5"] == expected_code, where
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
    for stage in ("train", "evaluate"):
        codes = {
            r.data.tags[f"code.{stage}.md5"]
            for r in runs.values()
            if r.data.tags["stage"] == stage
        }
        assert len(codes) == 1, f"one code, several {stage} code hashes"
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


# The rest of the README after "Start here", in its order. "Tests and layout" names the
# baked suite, which test_baked_project_tests.py runs with the command it reads from there.
WALKTHROUGH = [
    "Your own data",  # dvc add, then an experiment on the data
    "Your own data",  # predict
    "Sweeps and search",
    "Promote a result",
    "Check and re-run a result",
    "Team setup",  # the DVC remote
    "Team setup",  # the MLflow server
    "Team setup",  # its accounts: the admin adds a member, who logs in
    "Tests and layout",
]
LAB_BUCKET = "lab-walkthrough"


class Walk:
    """Runs README commands as written in one project, bar the placeholders a reader fills in
    (``<experiment>``, ``<bucket>``, the lab's host names, ...), which ``fill`` maps to values
    of this machine. ``export`` lines set the environment of the commands after them."""

    def __init__(self, project: Path, env: dict[str, str]) -> None:
        self.project, self.env = project, dict(env)
        self.fill: dict[str, str] = {"[RUN_ID]": ""}  # optional: the workspace's run

    def command(self, written: str) -> str:
        command = written
        for placeholder, value in self.fill.items():
            command = command.replace(placeholder, value)
        assert not re.search(r"<[\w ]+>", command), (
            f"no value for a placeholder of `{written}`"
        )
        return command

    def run(self, written: str) -> subprocess.CompletedProcess:
        command = self.command(written)
        if command.startswith("export "):
            for assignment in shlex.split(command)[1:]:
                name, value = assignment.split("=", 1)
                self.env[name] = value
            return subprocess.CompletedProcess(command, 0, "", "")
        return run(["bash", "-c", command], cwd=self.project, env=self.env)


def take_block(blocks: list[tuple[str, list[str]]], heading: str) -> list[str]:
    found, commands = blocks.pop(0)
    assert found == heading, (
        f"the README's next bash block is under {found!r}, not {heading!r}"
    )
    return commands


def check_ct_resolves_auto_from_its_fingerprint_and_is_traced(
    project: Path, env: dict[str, str], store: mlflow.MlflowClient
) -> None:
    """The README's CT experiment (data=msd on write_ct's anisotropic scans): what `auto`
    became, from the fingerprint, and where it is recorded."""
    fingerprint = json.loads((project / "data" / "fingerprint.json").read_text())
    assert fingerprint["modality"] == ["CT"]
    z = [spacing[2] for spacing in CT_SPACINGS]
    expected_pixdim = [0.8, 0.8, round(float(np.percentile(z, 10)), 4)]
    assert expected_pixdim[2] < np.median(z), (
        "the check needs the 10th percentile to differ"
    )

    resolved = json.loads((project / "metrics" / "preprocess.json").read_text())
    assert resolved["normalization"] == "ct"
    assert resolved["pixdim"] == "x".join(f"{value:g}" for value in expected_pixdim)
    processed = nib.load(project / "data" / "processed" / "imagesTr" / case_name(0))
    assert processed.header.get_zooms()[:3] == pytest.approx(expected_pixdim, abs=1e-4)
    # Clipped to the foreground's 0.5/99.5 percentiles, then z-scored: air is no longer -1000.
    values = np.asarray(processed.dataobj)
    assert -10 < values.min() < 0 < values.max() < 10
    evaluation = json.loads((project / EVALUATE_METRICS).read_text())
    expected = {
        f"{m}_{name}" for m in ("dice", "hd95") for name in ("liver", "tumour", "mean")
    }
    assert expected <= set(evaluation), sorted(evaluation)

    lock = yaml.safe_load((project / "dvc.lock").read_text())
    fingerprint_md5 = lock["stages"]["fingerprint"]["outs"][0]["md5"]
    raw_md5 = yaml.safe_load((project / "data" / "raw.dvc").read_text())["outs"][0][
        "md5"
    ]
    train_id = json.loads((project / TRAIN_METRICS).read_text())["mlflow_run_id"]
    train_run = store.get_run(train_id)
    assert train_run.data.tags["data.raw.md5"] == raw_md5
    assert train_run.data.tags["data.fingerprint.md5"] == fingerprint_md5
    assert "data.synthetic.md5" not in train_run.data.tags, (
        "data=msd does not read data/synthetic"
    )
    assert train_run.data.params["resolved.normalization"] == "ct"
    assert train_run.data.params["resolved.pixdim"] == resolved["pixdim"]
    assert (
        train_run.info.experiment_id
        == store.get_experiment_by_name("liver").experiment_id
    )
    shown = [
        data
        for data in exp_show(project, env).values()
        if metrics_of(data, TRAIN_METRICS).get("mlflow_run_id") == train_id
    ]
    assert len(shown) == 1, "the CT run is not one experiment of `dvc exp show`"
    assert (
        metrics_of(shown[0], "metrics/preprocess.json")["pixdim"] == resolved["pixdim"]
    )
    verified = run([DEFAULT_SLUG, "verify", train_id], cwd=project, env=env).stdout
    assert "data.fingerprint.md5" in verified and "MISMATCH" not in verified, verified


def test_every_other_readme_block_runs_as_written_in_order(
    experiments: Experiments, postgres, s3_store, tmp_path: Path
) -> None:
    """After "Start here": own data, predict, sweeps and search, promote, verify and reproduce,
    team setup, hooks. Every command as the README writes it, in the README's order."""
    project = experiments.project
    # The demo ran the real defaults; the walk runs many more experiments.
    commit_tiny_defaults(project)
    blocks = readme_blocks(project)
    assert [heading for heading, _ in blocks] == ["Start here", *WALKTHROUGH], blocks
    blocks.pop(0)  # Start here: the `experiments` fixture
    walk = Walk(project, experiments.env)

    # Your own data: a CT dataset in MSD layout, with two unlabelled scans in imagesTs.
    raw = project / "data" / "raw"
    write_ct(raw, CT_SPACINGS)
    (raw / "imagesTs").mkdir()
    for name in sorted(path.name for path in (raw / "imagesTr").iterdir())[:2]:
        shutil.copy(raw / "imagesTr" / name, raw / "imagesTs" / name)
    for command in take_block(blocks, "Your own data"):
        walk.run(command)
    evaluation = json.loads((project / EVALUATE_METRICS).read_text())
    assert {"dice_liver", "dice_tumour"} <= set(evaluation), sorted(evaluation)
    store = mlflow.MlflowClient(tracking_uri=experiments.tracking_uri)
    assert int(store.get_model_version_by_alias("liver", "champion").version) == 1
    check_ct_resolves_auto_from_its_fingerprint_and_is_traced(project, walk.env, store)

    scan = project / "scan.nii.gz"
    shutil.copy(raw / "imagesTs" / "case_000.nii.gz", scan)
    for command in take_block(blocks, "Your own data"):
        walk.run(command)
    predictions = project / "predictions"
    for source in [*(raw / "imagesTs").iterdir(), scan]:
        mask = nib.load(predictions / source.name)
        assert mask.shape == nib.load(source).shape, source.name
        card = json.loads(
            (predictions / source.name.replace(".nii.gz", ".json")).read_text()
        )
        assert card["version"] == "1", card
    shutil.rmtree(predictions)
    scan.unlink()

    # Sweeps and search: the queue's workers, then one search trial instead of 20 (the baked
    # full tier's test_search runs a study of three, two side by side, and resumes it).
    walk.fill["--trials 20"] = "--trials 1"
    queued: list[str] = []
    for command in take_block(blocks, "Sweeps and search"):
        if "<experiment>" in command:
            walk.fill["<experiment>"] = queued[0]
        result = walk.run(command)
        queued += re.findall(
            r"Queued experiment '([\w-]+)'", result.stdout + result.stderr
        )
        if command.startswith("dvc queue start"):
            wait_for_queue(project, walk.env, count=2)
        if command.startswith("dvc queue logs"):
            assert "evaluate" in result.stdout, result.stdout[-2000:]
    assert len(queued) == 2, queued
    shown = exp_show(project, walk.env)
    assert set(queued) | {"search-0"} <= set(shown), sorted(shown)

    # Promote a result: the best experiment of this baseline becomes a branch.
    best = max(
        shown, key=lambda name: metrics_of(shown[name], EVALUATE_METRICS)["dice_mean"]
    )
    walk.fill |= {"<experiment>": best, "<branch>": "promoted"}
    sorted_table, _ = (
        walk.run(command).stdout for command in take_block(blocks, "Promote a result")
    )
    assert sorted_table.index(best) < min(
        sorted_table.index(name) for name in shown if name != best
    )
    # A colleague's clone of the branch, sharing this machine's DVC cache and MLflow store.
    colleague = tmp_path / "colleague"
    git(
        project,
        "clone",
        "--quiet",
        "--branch",
        "promoted",
        str(project),
        str(colleague),
    )
    run(
        ["dvc", "cache", "dir", "--local", str(project / ".dvc" / "cache")],
        cwd=colleague,
        env=walk.env,
    )
    run(["dvc", "checkout"], cwd=colleague, env=walk.env)
    evaluate_id = run_ids(shown[best])[1]
    shared = {**walk.env, "MLFLOW_TRACKING_URI": experiments.tracking_uri}
    verified = run(
        [DEFAULT_SLUG, "verify", evaluate_id], cwd=colleague, env=shared
    ).stdout
    assert "descendant of" in verified and "MISMATCH" not in verified, verified

    # Check and re-run: the run behind the workspace's outputs (the last search trial).
    verified, reproduced, synced = (
        walk.run(c) for c in take_block(blocks, "Check and re-run a result")
    )
    assert "MISMATCH" not in verified.stdout and " match " in verified.stdout, (
        verified.stdout
    )
    assert "metrics agree" in reproduced.stdout, reproduced.stdout
    assert re.search(r"Tagged [1-9]\d* run", synced.stderr), synced.stderr
    for name in (*queued, "search-0"):
        found = store.search_runs(
            [store.get_experiment_by_name(DEFAULT_SLUG).experiment_id],
            filter_string=f"tags.`dvc.exp_name` = '{name}'",
        )
        assert found and all("dvc.exp_commit" in run_.data.tags for run_ in found), name

    # Team setup: the lab's bucket and MLflow server, here on 127.0.0.1.
    s3_store.create_bucket(LAB_BUCKET)
    port = free_port()
    walk.fill |= {
        "<bucket>": LAB_BUCKET,
        "https://s3.lab.example.org": s3_store.endpoint,
        "<key id>": s3_store.access_key_id,
        "<secret>": s3_store.secret_access_key,
        "<db password>": postgres.password,
        "postgresql://mlflow@db.lab.example.org/mlflow": postgres.create_database(
            "walkthrough"
        ),
        "--port 5000": f"--port {port}",
    }
    for command in take_block(blocks, "Team setup"):
        walk.run(command)
    assert s3_store.secret_access_key in (project / ".dvc" / "config.local").read_text()
    assert s3_store.secret_access_key not in git(project, "show", "HEAD:.dvc/config")
    run(["dvc", "push"], cwd=project, env=walk.env)
    assert s3_store.keys(LAB_BUCKET), "dvc push sent nothing to the lab's bucket"

    walk.fill |= {
        "<admin password>": "walk-admin-pw-3f9d1c",
        "<server>:5000": f"127.0.0.1:{port}",
        "<member>": "walk-member",
        "<member password>": "walk-member-pw-81b2e7",
    }
    *setup, server_command = take_block(blocks, "Team setup")
    assert " server " in server_command and "--host 0.0.0.0" in server_command, (
        server_command
    )
    for command in setup:
        walk.run(command)
    server_log = tmp_path / "server.log"
    server = Service(
        "the README's mlflow server", ["bash", "-c", walk.command(server_command)],
        walk.env, project, port, server_log,
    )  # fmt: skip
    server.start(ready_path="/health")
    try:
        # The accounts block: the admin creates a member, who sets their login.
        for command in take_block(blocks, "Team setup"):
            walk.run(command)
        member = dict(walk.env)
        for name in (
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "PGPASSWORD",
            "MLFLOW_AUTH_ADMIN_PASSWORD",
        ):
            member.pop(
                name
            )  # a member needs neither the store's keys nor the database's
        assert member["MLFLOW_TRACKING_URI"] == server.url
        logged = run(
            [experiments.layer_bin / "python", "-c", LOG_ONE_ARTIFACT],
            cwd=tmp_path,
            env=member,
        ).stdout.splitlines()[-1]
        assert any(key.endswith(logged) for key in s3_store.keys(LAB_BUCKET)), logged
        anonymous = {
            k: v for k, v in member.items() if not k.startswith("MLFLOW_TRACKING_")
        }
        anonymous["MLFLOW_TRACKING_URI"] = server.url
        refused = run(
            [experiments.layer_bin / "python", "-c", LOG_ONE_ARTIFACT],
            cwd=tmp_path,
            env=anonymous | {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"},
            check=False,
        )
        assert refused.returncode != 0 and "401" in refused.stderr, refused.stderr[
            -2000:
        ]
    finally:
        server.stop()
    for password in (walk.fill["<admin password>"], walk.fill["<member password>"]):
        assert password not in server_log.read_text()

    # Tests and layout: the git hooks (the suite itself: test_baked_project_tests.py).
    suite, *hooks = take_block(blocks, "Tests and layout")
    assert suite == "python -m pytest", suite
    for command in hooks:
        walk.run(command)
    for hook in ("pre-commit", "post-checkout"):
        assert "pre-commit" in (project / ".git" / "hooks" / hook).read_text(), hook
    assert blocks == [], blocks


# A member's first MLflow call through the server: the artifact lands in the lab's bucket.
LOG_ONE_ARTIFACT = """
import mlflow
with mlflow.start_run() as run:
    mlflow.log_text("hello", "hello.txt")
print(f"{run.info.run_id}/artifacts/hello.txt")
"""
