"""The lab's shared setup, against real servers on 127.0.0.1 (see servers.py).

Alice's project keeps its data in an S3 bucket through DVC and logs to the project's MLflow
server (PostgreSQL for runs, S3 for artifacts), which listens on 0.0.0.0 and so asks every
member for a login. She runs two experiments side by side through
DVC's queue, commits one, and pushes. Bob clones, pulls, verifies and reproduces her run. Then
the faults: keys the store refuses, a server that is down at start, and one that dies mid-run.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import (
    DEFAULT_PACKAGE,
    DEFAULT_SLUG,
    TINY,
    git,
    project_env,
    run,
    wait_for_queue,
)
from servers import Postgres, S3Store, Service, free_port

pytestmark = pytest.mark.slow

DVC_BUCKET, ARTIFACT_BUCKET = "lab-dvc-store", "lab-mlflow-artifacts"
PROVENANCE_TAGS = ("git.commit", "git.dirty", "code.train.md5", "params.sha256", "seed")
PROVENANCE_TAGS += ("dvc.exp_name", "dvc.baseline_rev", "data.processed.md5")
ADMIN = ("lab-admin", "team-admin-pw-5e0c2b")
MEMBER = ("lab-member", "team-member-pw-9a41d7")


def basic_auth(login: tuple[str, str]) -> dict[str, str]:
    return {
        "Authorization": "Basic " + base64.b64encode(":".join(login).encode()).decode()
    }


# The client side of a lost server, shortened so that the test does not wait for MLflow's
# default retries (about 4 minutes); what happens after them is the same.
FAST_FAILURE = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}


@dataclass
class Team:
    alice: Path
    origin: Path  # the bare git repository both clone from
    server: Service
    s3: S3Store
    env: dict[str, str]  # a member's environment: the server's URI, no S3 keys
    experiment_id: str

    def api(
        self,
        endpoint: str,
        body: dict | None = None,
        login: tuple[str, str] | None = MEMBER,
        **query: str,
    ) -> dict:
        url = f"{self.server.url}/api/2.0/mlflow/{endpoint}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = json.dumps(body).encode() if body is not None else None
        headers = {
            "Content-Type": "application/json",
            **(basic_auth(login) if login else {}),
        }
        with urllib.request.urlopen(
            urllib.request.Request(url, data, headers)
        ) as answer:
            return json.load(answer)

    def runs(self, filter_string: str = "") -> list[dict]:
        body = {
            "experiment_ids": [self.experiment_id],
            "filter": filter_string,
            "max_results": 1000,
        }
        return self.api("runs/search", body).get("runs", [])

    def run_of(self, experiment: str, stage: str) -> dict:
        (found,) = self.runs(
            f"tags.`dvc.exp_name` = '{experiment}' and tags.stage = '{stage}'"
        )
        return found

    def cli(
        self, project: Path, *args: str, env: dict | None = None, check: bool = True
    ):
        return run(
            [sys.executable, "-m", DEFAULT_PACKAGE, *args],
            cwd=project,
            env=env or self.member_env(project),
            check=check,
        )

    def member_env(self, project: Path) -> dict[str, str]:
        # MLflow clients fetch artifacts straight from S3 through presigned URLs when the
        # server offers them; moto in IAM mode cannot check those (it reads only the
        # Authorization header), real stores can. Here every download goes through the server.
        return project_env(project) | {
            "MLFLOW_TRACKING_URI": self.server.url,
            "MLFLOW_TRACKING_USERNAME": MEMBER[0],
            "MLFLOW_TRACKING_PASSWORD": MEMBER[1],
            "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false",
        }


def tags_of(found: dict) -> dict[str, str]:
    return {tag["key"]: tag["value"] for tag in found["data"].get("tags", [])}


def dvc(project: Path, *args: str, env: dict | None = None, check: bool = True):
    return run(
        ["dvc", *args], cwd=project, env=env or project_env(project), check=check
    )


def set_dvc_remote(project: Path, s3: S3Store, secret: str | None = None) -> None:
    """The README's Team setup: the endpoint in .dvc/config, the keys in .dvc/config.local."""
    dvc(project, "remote", "modify", "storage", "endpointurl", s3.endpoint)
    dvc(
        project,
        "remote",
        "modify",
        "--local",
        "storage",
        "access_key_id",
        s3.access_key_id,
    )
    secret = secret or s3.secret_access_key
    dvc(project, "remote", "modify", "--local", "storage", "secret_access_key", secret)


def file_md5s(project: Path, folders: tuple[str, ...]) -> dict[str, str]:
    return {
        str(path.relative_to(project)): hashlib.md5(path.read_bytes()).hexdigest()
        for folder in folders
        for path in sorted((project / folder).rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def team(bake, postgres: Postgres, s3_store: S3Store, tmp_path_factory) -> Team:
    folder = tmp_path_factory.mktemp("team")
    for bucket in (DVC_BUCKET, ARTIFACT_BUCKET):
        s3_store.create_bucket(bucket)
    backend = postgres.create_database("mlflow")
    alice = bake(
        folder / "alice",
        data_remote="s3",
        data_remote_url=f"s3://{DVC_BUCKET}/{DEFAULT_SLUG}",
    )
    set_dvc_remote(alice, s3_store)
    git(
        alice,
        "commit",
        "--quiet",
        "-m",
        "DVC remote: the lab's S3 endpoint",
        ".dvc/config",
    )
    origin = folder / "origin.git"
    run(
        ["git", "init", "--quiet", "--bare", "--initial-branch=main", origin],
        cwd=folder,
    )
    git(alice, "remote", "add", "origin", str(origin))
    git(alice, "push", "--quiet", "-u", "origin", "main")

    port = free_port()
    command = [
        sys.executable, "-m", DEFAULT_PACKAGE, "server", "--backend-store-uri", backend,
        "--artifacts-destination", f"s3://{ARTIFACT_BUCKET}/mlartifacts", "--port", str(port),
        "--host", "0.0.0.0", "--", "--workers", "2",
    ]  # fmt: skip
    # Only the server holds the S3 keys and the database password; members need neither.
    server_env = project_env(alice) | postgres.env | s3_store.env
    server_env |= {
        "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN[0],
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],
    }
    server = Service(
        "mlflow server", command, server_env, alice, port, folder / "mlflow-server.log"
    )
    server.start(ready_path="/health")
    try:
        team = Team(alice, origin, server, s3_store, {}, "")
        team.api(
            "users/create", {"username": MEMBER[0], "password": MEMBER[1]}, login=ADMIN
        )
        team.env = team.member_env(alice)
        for name, lr in (("alice-base", []), ("alice-lr", ["-S", "lr=0.001"])):
            dvc(
                alice, "exp", "run", "--queue", "--name", name, *TINY, *lr, env=team.env
            )
        dvc(alice, "queue", "start", "-j", "2", env=team.env)
        wait_for_queue(alice, team.env, 2)
        experiment = team.api("experiments/get-by-name", experiment_name=DEFAULT_SLUG)
        team.experiment_id = experiment["experiment"]["experiment_id"]
        yield team
    finally:
        server.stop()


def test_queued_experiments_leave_only_finished_runs(team: Team) -> None:
    runs = team.runs()
    assert sorted(tags_of(found)["mlflow.runName"] for found in runs) == [
        "alice-base-evaluate", "alice-base-train", "alice-lr-evaluate", "alice-lr-train",
    ]  # fmt: skip
    assert {found["info"]["status"] for found in runs} == {"FINISHED"}
    default = team.api("runs/search", {"experiment_ids": ["0"]}).get("runs", [])
    assert default == [], "runs landed in MLflow's Default experiment"


def test_the_server_refuses_anonymous_writes_and_no_password_is_recorded(
    team: Team,
) -> None:
    for login in (None, (MEMBER[0], "a-wrong-password-1")):
        with pytest.raises(urllib.error.HTTPError) as refused:
            team.api("runs/create", {"experiment_id": team.experiment_id}, login=login)
        assert refused.value.code == 401
    records = {
        "the server's log": team.server.log.read_text(),
        "MLflow's runs": json.dumps(team.runs()),
        "MLflow's models": json.dumps(team.api("registered-models/search")),
    }
    for name in ("params.yaml", "dvc.lock", ".dvc/config", ".dvc/config.local"):
        if (team.alice / name).is_file():
            records[name] = (team.alice / name).read_text()
    for password in (ADMIN[1], MEMBER[1]):
        leaked = [name for name, text in records.items() if password in text]
        assert not leaked, f"a password is written in {leaked}"
    assert "mlflow-auth.db" not in git(
        team.alice, "status", "--porcelain"
    )  # accounts stay out of git


def test_the_server_holds_tags_curves_model_and_champion(team: Team) -> None:
    train = team.run_of("alice-base", "train")
    run_id = train["info"]["run_id"]
    tags = tags_of(train)
    missing = [tag for tag in PROVENANCE_TAGS if tag not in tags]
    assert not missing, f"provenance tags missing on the server: {missing}"
    history = team.api("metrics/get-history", run_id=run_id, metric_key="val_dice")[
        "metrics"
    ]
    assert [point["step"] for point in history] == [1, 2]

    models = team.api(
        "logged-models/search",
        {
            "experiment_ids": [team.experiment_id],
            "filter": f"source_run_id = '{run_id}'",
        },
    )["models"]
    assert len(models) == 1
    champion = team.api("registered-models/alias", name=DEFAULT_SLUG, alias="champion")
    evaluate_ids = {
        team.run_of(name, "evaluate")["info"]["run_id"]
        for name in ("alice-base", "alice-lr")
    }
    assert champion["model_version"]["tags"]
    version_tags = {
        tag["key"]: tag["value"] for tag in champion["model_version"]["tags"]
    }
    assert version_tags["evaluate_run_id"] in evaluate_ids
    # Artifacts went through the server to the S3 bucket: the console log and the model.
    stored = team.s3.keys(ARTIFACT_BUCKET)
    assert any(
        key.endswith(f"{run_id}/artifacts/logs/console.log") for key in stored
    ), stored[:20]
    assert any("MLmodel" in key for key in stored)


def test_runs_are_found_by_their_dvc_data_version(team: Team) -> None:
    train = team.run_of("alice-base", "train")
    md5 = tags_of(train)["data.processed.md5"]
    found = team.runs(f"dataset.digest = '{md5}'")
    assert train["info"]["run_id"] in {run_["info"]["run_id"] for run_ in found}
    inputs = {
        item["dataset"]["name"]: item["dataset"]
        for item in train["inputs"]["dataset_inputs"]
    }
    source = json.loads(inputs["processed"]["source"])
    assert (
        source["path"] == "data/processed"
        and source["remote"] == f"s3://{DVC_BUCKET}/{DEFAULT_SLUG}"
    )
    description = tags_of(train)["mlflow.note.content"]
    assert (
        "alice-base" in description
        and f"reproduce {train['info']['run_id']}" in description
    )


@pytest.fixture(scope="module")
def published(team: Team) -> Team:
    """Alice commits one experiment's results, pushes git and data, and shares the other one."""
    alice = team.alice
    dvc(alice, "exp", "apply", "alice-base", env=team.env)
    git(alice, "add", "--all")
    git(alice, "commit", "--quiet", "-m", "Results of alice-base")
    git(alice, "push", "--quiet", "origin", "main")
    dvc(alice, "push", env=team.env)
    dvc(alice, "exp", "push", "origin", "alice-lr", env=team.env)
    return team


def test_data_round_trips_through_the_s3_remote(published: Team) -> None:
    alice = published.alice
    assert any(
        key.startswith(f"{DEFAULT_SLUG}/files/md5/")
        for key in published.s3.keys(DVC_BUCKET)
    )
    outputs = ("data", "models", "reports")
    before = file_md5s(alice, outputs)
    for path in (alice / ".dvc" / "cache", *(alice / folder for folder in outputs)):
        shutil.rmtree(path)
    dvc(alice, "pull", env=published.env)
    assert file_md5s(alice, outputs) == before
    assert "up to date" in dvc(alice, "status", env=published.env).stdout


@pytest.fixture(scope="module")
def bob(published: Team, tmp_path_factory) -> Path:
    """A colleague's clone: git from the bare remote, data from S3, his own copy of the keys."""
    bob = tmp_path_factory.mktemp("bob") / DEFAULT_SLUG
    run(["git", "clone", "--quiet", published.origin, bob], cwd=bob.parent)
    set_dvc_remote(bob, published.s3)
    run(
        ["git", "checkout", "--", ".dvc/config"], cwd=bob
    )  # the endpoint is already committed
    dvc(bob, "pull", env=published.member_env(bob))
    return bob


def test_a_colleague_verifies_and_reproduces_from_the_remotes(
    team: Team, bob: Path
) -> None:
    env = team.member_env(bob)
    train_id = team.run_of("alice-base", "train")["info"]["run_id"]
    verified = team.cli(bob, "verify", train_id, env=env, check=False)
    # HEAD is the commit holding the results, a descendant of the run's recorded git.commit.
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "descendant of" in verified.stdout

    dvc(bob, "exp", "pull", "origin", "alice-lr", env=env)
    assert "alice-lr" in dvc(bob, "exp", "list", "--all-commits", env=env).stdout

    reproduced = team.cli(bob, "reproduce", train_id, env=env)
    assert "metrics agree" in reproduced.stdout


SEARCH_TRIALS = 4


def clone_of(team: Team, folder: Path) -> Path:
    """A member's clone of the team's repository, with its keys to the store and its data."""
    clone = folder / DEFAULT_SLUG
    run(["git", "clone", "--quiet", team.origin, clone], cwd=folder)
    set_dvc_remote(clone, team.s3)
    run(
        ["git", "checkout", "--", ".dvc/config"], cwd=clone
    )  # the endpoint is committed
    dvc(clone, "pull", env=team.member_env(clone))
    return clone


@pytest.fixture(scope="module")
def shared_search(published: Team, postgres: Postgres, tmp_path_factory) -> dict:
    """Two workers, each in its own clone on its own "machine", run one study in PostgreSQL;
    its URL holds the database password, which must reach no log, run or file."""
    database = postgres.create_database("search")
    url = database.replace(f"{postgres.user}@", f"{postgres.user}:{postgres.password}@")
    clones = [
        clone_of(published, tmp_path_factory.mktemp(name))
        for name in ("worker1", "worker2")
    ]
    command = [
        sys.executable, "-m", DEFAULT_PACKAGE, "search", "--study", "shared", "--trials",
        str(SEARCH_TRIALS), "--storage", url, "--push", *TINY,
    ]  # fmt: skip
    started = time.monotonic()
    workers = [
        subprocess.Popen(
            command,
            cwd=clone,
            env=published.member_env(clone),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for clone in clones
    ]
    outputs = [worker.communicate(timeout=1200)[0] for worker in workers]
    print(
        f"\n  a {SEARCH_TRIALS}-trial study with 2 workers: {time.monotonic() - started:.0f} s"
    )
    for worker, output in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, output[-4000:]
    import optuna

    study = optuna.load_study(
        study_name="shared",
        storage=url.replace("postgresql://", "postgresql+psycopg://"),
    )
    return {
        "clones": clones,
        "outputs": outputs,
        "study": study,
        "password": postgres.password,
    }


def test_two_workers_share_one_study_and_run_each_trial_once(
    published: Team, shared_search: dict
) -> None:
    import optuna

    trials = shared_search["study"].trials
    assert sorted(trial.number for trial in trials) == list(range(SEARCH_TRIALS))
    assert {trial.state for trial in trials} == {optuna.trial.TrialState.COMPLETE}
    names = {trial.user_attrs["dvc_exp_name"] for trial in trials}
    assert names == {f"shared-{number}" for number in range(SEARCH_TRIALS)}
    # Both took trials: the study spread over the two clones.
    assert len({trial.user_attrs["worker"] for trial in trials}) == 2
    # Each proposed its own: workers that start together must not propose the same params.
    proposed = {json.dumps(trial.params, sort_keys=True) for trial in trials}
    assert len(proposed) == SEARCH_TRIALS, [trial.params for trial in trials]
    for output in shared_search["outputs"]:
        assert "Pushed shared-" in output and shared_search["password"] not in output, (
            output[-3000:]
        )
    # Every trial is a run on the team's server, tagged with its study and number.
    for trial in trials:
        found = published.run_of(trial.user_attrs["dvc_exp_name"], "train")
        tags = tags_of(found)
        assert tags["search.study"] == "shared" and tags["search.trial"] == str(
            trial.number
        )
        assert shared_search["password"] not in json.dumps(found)
    for clone in shared_search["clones"]:
        for name in ("params.yaml", "dvc.lock", ".dvc/config", ".dvc/config.local"):
            assert shared_search["password"] not in (clone / name).read_text(), name


def test_a_third_clone_pulls_every_trial_and_the_best_is_the_best_validation(
    published: Team, shared_search: dict, tmp_path: Path
) -> None:
    third = clone_of(published, tmp_path)
    names = [f"shared-{number}" for number in range(SEARCH_TRIALS)]
    env = published.member_env(third)
    dvc(third, "exp", "pull", "origin", *names, env=env)
    shown = json.loads(dvc(third, "exp", "show", "--json", env=env).stdout)
    scores = {
        rev["name"]: rev["data"]["metrics"]["metrics/train.json"]["data"][
            "best_val_dice"
        ]
        for entry in shown
        for experiment in entry.get("experiments") or []
        for rev in experiment["revs"]
        if rev.get("name") in names
    }
    assert sorted(scores) == names, sorted(scores)
    best, top = shared_search["study"].best_trial, max(scores.values())
    # By score, not by name: two trials may tie.
    assert scores[best.user_attrs["dvc_exp_name"]] == pytest.approx(top)
    assert best.value == pytest.approx(top)


def test_keys_the_store_refuses_fail_dvc_with_its_reason(
    published: Team, tmp_path: Path
) -> None:
    clone = tmp_path / DEFAULT_SLUG
    run(["git", "clone", "--quiet", published.origin, clone], cwd=tmp_path)
    set_dvc_remote(clone, published.s3, secret="not-the-lab-secret")
    pulled = dvc(clone, "pull", check=False)
    assert pulled.returncode != 0
    assert "failed to connect to s3" in pulled.stderr, pulled.stderr
    assert "Forbidden: An error occurred (403)" in pulled.stderr, pulled.stderr
    assert not (clone / "models").exists()


def test_a_server_down_at_start_stops_the_stage_before_any_work(
    team: Team, bob: Path
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    env = team.member_env(bob) | {"MLFLOW_TRACKING_URI": down}
    models = {path: path.stat().st_mtime_ns for path in (bob / "models").rglob("*")}
    started = time.monotonic()
    result = team.cli(bob, "train", env=env, check=False)
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"error: The MLflow tracking server {down} (MLFLOW_TRACKING_URI) does not answer"
    )
    assert "Connection refused" in result.stderr and "Team setup" in result.stderr
    assert time.monotonic() - started < 30
    assert {
        path: path.stat().st_mtime_ns for path in (bob / "models").rglob("*")
    } == models


def test_a_server_lost_mid_run_fails_the_stage_and_a_rerun_is_complete(
    team: Team, bob: Path
) -> None:
    env = team.member_env(bob) | FAST_FAILURE
    longer = ["--name", "outage", *TINY, "-S", "epochs=6"]
    experiment = subprocess.Popen(
        ["dvc", "exp", "run", *longer], cwd=bob, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while True:  # until the train run has logged an epoch
            assert experiment.poll() is None, experiment.stdout.read()
            assert time.monotonic() < deadline, "the train run logged no epoch"
            started = team.runs(
                "tags.`dvc.exp_name` = 'outage' and tags.stage = 'train'"
            )
            if started and any(
                m["key"] == "train_loss" for m in started[0]["data"].get("metrics", [])
            ):
                break
            time.sleep(0.5)
        team.server.stop(signal.SIGKILL)
        output, _ = experiment.communicate(timeout=300)
    finally:
        if experiment.poll() is None:
            experiment.kill()
        team.server.start(ready_path="/health")
    assert experiment.returncode != 0
    assert (
        f"The MLflow tracking server {team.server.url} stopped answering during the train stage"
        in output
    )
    (lost,) = team.runs("tags.`dvc.exp_name` = 'outage' and tags.stage = 'train'")
    assert lost["info"]["status"] in ("RUNNING", "FAILED")
    assert "outage" not in dvc(bob, "exp", "list", env=env).stdout

    dvc(bob, "exp", "run", "--name", "outage-rerun", *longer[2:], env=env)
    rerun = team.run_of("outage-rerun", "train")
    assert rerun["info"]["status"] == "FINISHED"
    history = team.api(
        "metrics/get-history", run_id=rerun["info"]["run_id"], metric_key="train_loss"
    )
    assert len(history["metrics"]) == 6
