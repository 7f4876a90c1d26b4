"""verify, reproduce, sync and the run-cache, on the shared experiment.

Each hash is shown to move alone: a voxel moves only the data hash, a param only the params
hash, a line of stage code only the code hash (and git.dirty), and an unused file nothing.
The checks take seconds and run in the fast tier; the ones that re-run stages are ``slow``.
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import nibabel as nib
import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cli(run):
    """``cli(experiment, *args)``: this project's command line in a copy; never fails the test."""

    def call(experiment: Path, *args: str) -> subprocess.CompletedProcess:
        package = next(p.parent.name for p in (experiment / "src").glob("*/cli.py"))
        return run([sys.executable, "-m", package, *args], experiment, check=False)

    return call


def mismatches(result: subprocess.CompletedProcess) -> set[str]:
    return {line.split()[1] for line in result.stdout.splitlines() if line.strip().startswith("MISMATCH")}


def client_for(experiment: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(f"sqlite:///{experiment / 'mlflow.db'}")


def run_id(experiment: Path, stage: str) -> str:
    return json.loads((experiment / f"metrics/{stage}.json").read_text())["mlflow_run_id"]


def test_verify_matches_the_workspace_run(experiment: Path, cli) -> None:
    started = time.perf_counter()
    result = cli(experiment, "verify")
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stdout + result.stderr
    checked = {line.split()[1] for line in result.stdout.splitlines() if line.strip().startswith("match")}
    assert {"git.commit", "code.evaluate.md5", "params.sha256", "data.processed.md5"} <= checked
    print(f"verify took {seconds:.1f} s")


def test_verify_accepts_a_later_commit_with_the_same_sources(
    experiment: Path, cli, run, tmp_path: Path
) -> None:
    """The team's flow: results committed after the run; a code change there is still caught."""
    clone = tmp_path / "clone"
    shutil.copytree(experiment, clone, symlinks=True)
    recorded = client_for(clone).get_run(run_id(clone, "evaluate")).data.tags["git.commit"]
    run(["git", "add", "--all"], clone)
    run(["git", "commit", "--quiet", "-m", "Results of the first experiment"], clone)
    result = cli(clone, "verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"(descendant of {recorded[:12]}, sources unchanged)" in result.stdout

    stage = next((clone / "src").glob("*/stages/evaluate.py"))
    stage.write_text(stage.read_text() + "\n# a change of code after the run\n")
    run(["git", "commit", "--quiet", "--all", "-m", "Change evaluate"], clone)
    result = cli(clone, "verify")
    assert result.returncode == 1
    assert mismatches(result) == {"git.commit", "code.evaluate.md5"}


def test_one_voxel_changes_only_the_data_hash(experiment: Path, cli, run) -> None:
    case = experiment / "data/synthetic/imagesTr/case_000.nii.gz"
    image = nib.load(case)
    voxels = image.get_fdata().astype("float32")
    voxels[0, 0, 0] += 1.0
    nib.save(nib.Nifti1Image(voxels, image.affine), case)
    try:
        result = cli(experiment, "verify")
        assert result.returncode == 1
        assert mismatches(result) == {"data.synthetic.md5"}
    finally:
        run([sys.executable, "-m", "dvc", "checkout", "--force", "data/synthetic"], experiment)


def test_one_param_changes_only_the_params_hash(experiment: Path, cli) -> None:
    params = experiment / "params.yaml"
    original = params.read_text()
    params.write_text(original.replace("lr: 0.002", "lr: 0.003"))
    try:
        result = cli(experiment, "verify")
        assert result.returncode == 1
        assert mismatches(result) == {"params.sha256"}
    finally:
        params.write_text(original)


def test_one_line_of_stage_code_changes_only_the_code_hash(experiment: Path, cli) -> None:
    stage = next((experiment / "src").glob("*/stages/evaluate.py"))
    original = stage.read_text()
    stage.write_text(original + "\n# one more line\n")
    try:
        result = cli(experiment, "verify")
        assert result.returncode == 1
        assert mismatches(result) == {"code.evaluate.md5", "git.dirty"}
    finally:
        stage.write_text(original)


def test_a_file_no_stage_uses_changes_nothing(experiment: Path, cli) -> None:
    readme = experiment / "README.md"
    original = readme.read_text()
    readme.write_text(original + "\nA note.\n")
    try:
        result = cli(experiment, "verify")
        assert result.returncode == 0, result.stdout
        assert mismatches(result) == set()
    finally:
        readme.write_text(original)


def test_environment_difference_is_a_warning_not_a_failure(experiment: Path, cli) -> None:
    client = client_for(experiment)
    evaluate_run = run_id(experiment, "evaluate")
    recorded = client.get_run(evaluate_run).data.tags["env.torch"]
    client.set_tag(evaluate_run, "env.torch", "0.0.1")
    try:
        result = cli(experiment, "verify")
        assert result.returncode == 0
        assert any(line.split()[:2] == ["warning", "env.torch"] for line in result.stdout.splitlines())
    finally:
        client.set_tag(evaluate_run, "env.torch", recorded)


def test_runs_record_environment_and_determinism(experiment: Path) -> None:
    client = client_for(experiment)
    train = client.get_run(run_id(experiment, "train"))
    for tag in ("env.python", "env.torch", "env.cuda", "env.cudnn", "env.monai", "env.gpu", "env.gpu_driver"):
        assert train.data.tags[tag]
    assert train.data.tags["deterministic"] == "true"
    packages = client.download_artifacts(train.info.run_id, "environment/requirements.txt")
    assert "torch==" in Path(packages).read_text()


@pytest.mark.slow
def test_reproduce_gives_bitwise_equal_metrics_on_cpu(experiment: Path, cli, run) -> None:
    for stage in ("train", "evaluate"):
        result = cli(experiment, "reproduce", run_id(experiment, stage))
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "agree (bitwise)" in result.stdout and "metrics agree" in result.stdout
    assert run(["git", "status", "--porcelain", "--", "src", "conf", "dvc.yaml"], experiment).stdout == ""
    assert "reproduce-" not in run(["git", "worktree", "list"], experiment).stdout


@contextmanager
def without_dvc_cache(experiment: Path) -> Iterator[None]:
    """The DVC cache moved aside for the block, as on a machine that never had the data."""
    cache, hidden = experiment / ".dvc/cache", experiment / ".dvc/cache-hidden"
    cache.rename(hidden)
    try:
        yield
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        hidden.rename(cache)


@pytest.mark.slow
def test_reproduce_names_a_missing_input(experiment: Path, cli) -> None:
    with without_dvc_cache(experiment):
        result = cli(experiment, "reproduce", run_id(experiment, "train"))
    assert result.returncode == 2
    assert "data/processed" in result.stderr and "dvc pull" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_reproduce_pulls_inputs_from_the_remote(experiment: Path, cli, run, tmp_path: Path) -> None:
    dvc = [sys.executable, "-m", "dvc"]
    run([*dvc, "remote", "add", "--local", "--default", "storage", str(tmp_path / "remote")], experiment)
    run([*dvc, "push"], experiment)
    try:
        with without_dvc_cache(experiment):
            result = cli(experiment, "reproduce", run_id(experiment, "evaluate"))
    finally:
        run([*dvc, "remote", "remove", "--local", "storage"], experiment)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "metrics agree" in result.stdout


def crafted_experiment(client: mlflow.MlflowClient) -> str:
    """An MLflow experiment of its own for crafted runs, apart from the runs the pipeline logged."""
    found = client.get_experiment_by_name("crafted")
    return found.experiment_id if found else client.create_experiment("crafted")


def crafted_run(experiment: Path, pkg, marker: Path, **extra: object) -> str:
    """A run written into the tracking store as anyone who can reach the server could write it.

    It copies the experiment's train run (tags, metrics), and its logged config builds
    ``monai.utils.run_cmd`` as the loss, with ``params.sha256`` recomputed to match.
    """
    client = client_for(experiment)
    real = client.get_run(run_id(experiment, "train"))
    logged = mlflow.artifacts.download_artifacts(
        run_id=real.info.run_id, artifact_path="config/params.yaml", tracking_uri=client.tracking_uri
    )
    params = yaml.safe_load(Path(logged).read_text())
    params["loss"] = {"_target_": "monai.utils.run_cmd", "cmd_list": ["touch", str(marker)]}
    params.update(extra)
    provenance = importlib.import_module(f"{pkg.__name__}.lab.provenance")
    tags = {key: value for key, value in real.data.tags.items() if not key.startswith("mlflow.")}
    tags["params.sha256"] = provenance.params_sha256(params)
    crafted = client.create_run(crafted_experiment(client), tags=tags, run_name="crafted-train")
    for key, value in real.data.metrics.items():
        client.log_metric(crafted.info.run_id, key, value)
    client.log_dict(crafted.info.run_id, params, "config/params.yaml")
    client.set_terminated(crafted.info.run_id)
    return crafted.info.run_id


@pytest.mark.parametrize(
    "extra", [{}, {"allowed_targets": ["monai.utils"]}], ids=["guard", "allowed_targets in the record"]
)
def test_reproduce_refuses_a_crafted_run_before_any_stage_runs(
    experiment: Path, cli, run, pkg, extra: dict
) -> None:
    marker = experiment.parent / "reproduced-marker"
    crafted = crafted_run(experiment, pkg, marker, **extra)
    client = client_for(experiment)
    project_runs = client.get_run(run_id(experiment, "train")).info.experiment_id  # where stages log
    runs_before = len(client.search_runs([project_runs]))
    result = cli(experiment, "reproduce", crafted)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    expected = "`allowed_targets` holds" if extra else "`loss._target_=monai.utils.run_cmd` is refused"
    assert f"the params logged with run {crafted}: {expected}" in result.stderr
    assert "Re-running stage" not in result.stdout and "Traceback" not in result.stderr
    assert not marker.exists()
    assert len(client.search_runs([project_runs])) == runs_before
    assert "reproduce-" not in run(["git", "worktree", "list"], experiment).stdout


def test_reproduce_refuses_recorded_values_that_git_or_dvc_would_not_write(experiment: Path, cli) -> None:
    client = client_for(experiment)
    real = client.get_run(run_id(experiment, "train"))
    for tag, value in (("git.commit", "--output=/tmp/x"), ("data.processed.path", "../../outside")):
        tags = {key: value for key, value in real.data.tags.items() if not key.startswith("mlflow.")}
        crafted = client.create_run(crafted_experiment(client), tags=tags | {tag: value})
        result = cli(experiment, "reproduce", crafted.info.run_id)
        assert result.returncode == 2 and "refused" in result.stderr and value in result.stderr


@pytest.mark.slow
def test_run_cache_restores_point_at_the_original_runs(experiment: Path, exp_run) -> None:
    client = client_for(experiment)
    experiment_id = client.get_run(run_id(experiment, "train")).info.experiment_id
    first = {stage: run_id(experiment, stage) for stage in ("train", "evaluate")}
    exp_run(experiment, "lr=0.001")
    count = len(client.search_runs([experiment_id]))
    exp_run(experiment, "lr=0.002")  # same inputs as the first experiment: DVC restores both stages
    assert {stage: run_id(experiment, stage) for stage in ("train", "evaluate")} == first
    assert len(client.search_runs([experiment_id])) == count


def test_sync_tags_runs_with_their_experiment_commit(experiment: Path, cli, run) -> None:
    assert cli(experiment, "sync").returncode == 0
    refs = run(["git", "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps"], experiment).stdout
    commits = {ref.rsplit("/", 1)[-1]: sha for ref, sha in (line.split() for line in refs.splitlines())}
    client = client_for(experiment)
    train = client.get_run(run_id(experiment, "train"))
    assert train.data.tags["dvc.exp_commit"] == commits[train.data.tags["dvc.exp_name"]]
