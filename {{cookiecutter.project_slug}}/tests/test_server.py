"""`server` and the tracking server's reachability and login.

PostgreSQL and S3 behind the server are exercised by the template's own tests; here the server
runs on a SQLite store and a local artifact folder.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ADMIN_PASSWORD = "admin-pw-7c1e9a4f"


@pytest.fixture
def server(package_module):
    return package_module("lab.server")


def test_the_server_listens_on_loopback_and_keeps_store_uris_off_its_command_line(
    server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_BACKEND_STORE_URI", raising=False)
    backend = "sqlite:///lab.db"
    command, env = server.server_command(
        backend, "file:///srv/mlflow-artifacts", "127.0.0.1", 5123, ["--", "--workers", "2"]
    )
    assert command[-7:] == ["server", "--host", "127.0.0.1", "--port", "5123", "--workers", "2"]
    assert backend not in command and env["MLFLOW_BACKEND_STORE_URI"] == backend
    assert env["MLFLOW_ARTIFACTS_DESTINATION"] == "file:///srv/mlflow-artifacts"


def test_beyond_loopback_the_server_asks_for_a_login_or_says_it_does_not(
    server, user_error, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    monkeypatch.delenv("MLFLOW_AUTH_CONFIG_PATH", raising=False)
    stores = ("sqlite:///lab.db", "file:///srv/mlflow-artifacts")
    with pytest.raises(user_error, match="set MLFLOW_AUTH_ADMIN_PASSWORD.*--no-auth"):
        server.server_command(*stores, "0.0.0.0", 5000, [])
    command, _ = server.server_command(*stores, "0.0.0.0", 5000, [], auth=False)
    assert "--app-name" not in command and "asks no login (--no-auth)" in caplog.text
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", ADMIN_PASSWORD)
    command, env = server.server_command(*stores, "0.0.0.0", 5000, [])
    assert command[-2:] == ["--app-name", "basic-auth"] and ADMIN_PASSWORD not in command
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    assert "--app-name" not in server.server_command(*stores, "127.0.0.1", 5000, [])[0]


def request(url: str, login: tuple[str, str] | None = None, body: dict | None = None) -> int:
    headers = {"Content-Type": "application/json"}
    if login:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(login).encode()).decode()
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code
    except urllib.error.URLError:  # nothing listens yet
        return 0


@pytest.mark.slow
def test_a_server_open_to_the_network_refuses_runs_without_a_login(pkg, tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env |= {"MLFLOW_AUTH_ADMIN_USERNAME": "lab-admin", "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(pkg.__file__).parents[1]), env.get("PYTHONPATH", "")])
    command = [
        sys.executable, "-m", pkg.__name__, "server", "--host", "0.0.0.0", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--artifacts-destination", (tmp_path / "artifacts").as_uri(),
    ]  # fmt: skip
    log = tmp_path / "server.log"
    with log.open("w") as output:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while request(f"{url}/health") != 200:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        create = f"{url}/api/2.0/mlflow/runs/create"
        assert request(create, body={"experiment_id": "0"}) == 401
        assert request(create, ("lab-admin", "wrong-password-123"), {"experiment_id": "0"}) == 401
        assert request(create, ("lab-admin", ADMIN_PASSWORD), {"experiment_id": "0"}) == 200
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert (tmp_path / "mlflow-auth.db").is_file()  # accounts persist beside the server
    assert "login required" in log.read_text()
    assert ADMIN_PASSWORD not in log.read_text()
    assert ADMIN_PASSWORD.encode() not in (tmp_path / "mlflow.db").read_bytes()


def test_the_server_needs_both_stores(server, user_error, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_BACKEND_STORE_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ARTIFACTS_DESTINATION", raising=False)
    with pytest.raises(user_error, match="--backend-store-uri postgresql://"):
        server.server_command(None, "file:///srv/mlflow-artifacts", "127.0.0.1", 5000, [])
    with pytest.raises(user_error, match="--artifacts-destination s3://"):
        server.server_command("sqlite:///lab.db", None, "127.0.0.1", 5000, [])


def test_a_server_that_does_not_answer_names_its_uri_and_the_fix(package_module, user_error) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{probe.getsockname()[1]}"
    reachability = package_module("lab.reachability")
    with pytest.raises(user_error, match="does not answer: Connection refused") as refused:
        reachability.check(uri)
    assert uri in str(refused.value) and "unset MLFLOW_TRACKING_URI" in str(refused.value)
    reachability.check(f"sqlite:///{Path.cwd() / 'mlflow.db'}")  # a local store needs no probe
