"""Real servers on 127.0.0.1 for the team-setup tests, each started once per session.

- PostgreSQL: a throwaway cluster (`initdb`, `pg_ctl`) in a temporary folder, on a free port,
  run by the ``postgres`` user when the tests run as root (PostgreSQL refuses root).
- An S3-protocol store: ``moto_server`` on a free port, in IAM mode, so that it refuses keys
  it did not issue, as a real store does.
- ``Service``: any other server process (the project's `server` command), restartable.

`.ci/env.sh` installs all of them and sets ``TEMPLATE_TESTS_REQUIRE_SERVERS``, so that in CI a
missing server fails the tests; elsewhere they skip, saying what to install.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REQUIRED = "TEMPLATE_TESTS_REQUIRE_SERVERS"
REGION = "us-east-1"
# moto answers its first N requests without checking keys: the three that issue the lab's key.
BOOTSTRAP_REQUESTS = 3


def unavailable(reason: str) -> None:
    if os.environ.get(REQUIRED):
        pytest.fail(f"{reason} (CI needs it: run .ci/env.sh)")
    pytest.skip(f"{reason}; .ci/env.sh installs it")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(
    port: int, process: subprocess.Popen, what: str, log: Path, timeout: float = 90
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"{what} did not start on port {port}:\n{log.read_text()[-3000:]}"
            )
        time.sleep(0.3)


class Service:
    """A server process in its own process group, logging to a file; stopped by killing the group."""

    def __init__(
        self,
        name: str,
        command: list[str],
        env: dict[str, str],
        cwd: Path,
        port: int,
        log: Path,
    ):
        self.name, self.command, self.env, self.cwd, self.port, self.log = (
            name,
            command,
            env,
            cwd,
            port,
            log,
        )
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_path: str | None = None) -> Service:
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_port(self.port, self.process, self.name, self.log)
        if ready_path:  # the port opens before the application answers
            deadline = time.monotonic() + 90
            while True:
                try:
                    with urllib.request.urlopen(self.url + ready_path, timeout=5):
                        break
                except OSError:
                    if time.monotonic() > deadline or self.process.poll() is not None:
                        raise RuntimeError(
                            f"{self.name} does not answer:\n{self.log.read_text()[-3000:]}"
                        )
                    time.sleep(0.5)
        return self

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


@dataclass
class Postgres:
    bin_dir: Path
    port: int
    user: str
    password: str

    def uri(self, database: str) -> str:
        """Without the password, which libpq takes from PGPASSWORD (``env``)."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    @property
    def env(self) -> dict[str, str]:
        return {"PGPASSWORD": self.password}

    def create_database(self, name: str) -> str:
        subprocess.run(
            [
                self.bin_dir / "createdb",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                self.user,
                name,
            ],
            env={**os.environ, **self.env},
            check=True,
            capture_output=True,
        )
        return self.uri(name)


@dataclass
class S3Store:
    endpoint: str
    access_key_id: str
    secret_access_key: str

    @property
    def env(self) -> dict[str, str]:
        """What an S3 client (boto3, an MLflow server) needs to reach this store."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_DEFAULT_REGION": REGION,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


def _postgres_bin_dir() -> Path | None:
    """Debian keeps the server binaries in /usr/lib/postgresql/<major>/bin; others put them on PATH."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: int(path.parts[-3]),
    )
    if candidates:
        return candidates[-1].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    bin_dir = _postgres_bin_dir()
    if bin_dir is None:
        unavailable("PostgreSQL (initdb, pg_ctl) is not installed")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="template-tests-pg-"))
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            unavailable(
                "running as root, and there is no postgres user to run PostgreSQL as"
            )
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    password = "team-tests-pg-password"
    (folder / "pwfile").write_text(password + "\n")
    if as_user:
        os.chown(folder / "pwfile", owner.pw_uid, owner.pw_gid)
    data, port = folder / "data", free_port()
    subprocess.run(
        [
            *as_user,
            bin_dir / "initdb",
            "-D",
            data,
            "-U",
            "lab",
            f"--pwfile={folder / 'pwfile'}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
        cwd=folder,
    )
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg_ctl = [*as_user, bin_dir / "pg_ctl", "-D", data, "-l", folder / "log"]
    subprocess.run(
        [*pg_ctl, "-o", options, "-w", "start"],
        check=True,
        capture_output=True,
        cwd=folder,
    )
    try:
        yield Postgres(bin_dir, port, "lab", password)
    finally:
        subprocess.run(
            [*pg_ctl, "-m", "immediate", "stop"],
            check=False,
            capture_output=True,
            cwd=folder,
        )
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_store() -> Iterator[S3Store]:
    moto_server = Path(sys.executable).parent / "moto_server"
    if not moto_server.exists():
        unavailable("moto_server (pip install 'moto[server]') is not installed")
    import boto3

    folder = Path(tempfile.mkdtemp(prefix="template-tests-s3-"))
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(BOOTSTRAP_REQUESTS)}
    command = [str(moto_server), "-H", "127.0.0.1", "-p", str(port)]
    service = Service("moto_server", command, env, folder, port, folder / "log").start()
    try:
        endpoint = service.url
        iam = boto3.client(
            "iam",
            endpoint_url=endpoint,
            region_name=REGION,
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
        )
        iam.create_user(UserName="lab")
        key = iam.create_access_key(UserName="lab")["AccessKey"]
        allow_all = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
        }
        iam.put_user_policy(
            UserName="lab", PolicyName="lab", PolicyDocument=json.dumps(allow_all)
        )
        yield S3Store(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        service.stop()
        shutil.rmtree(folder, ignore_errors=True)
