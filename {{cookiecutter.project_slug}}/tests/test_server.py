"""`server` and the tracking server's reachability: what they refuse and say, without a server.

The real servers (PostgreSQL, S3, MLflow) are exercised by the template's own tests.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest


@pytest.fixture
def server(package_module):
    return package_module("server")


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
    reachability = package_module("reachability")
    with pytest.raises(user_error, match="does not answer: Connection refused") as refused:
        reachability.check(uri)
    assert uri in str(refused.value) and "unset MLFLOW_TRACKING_URI" in str(refused.value)
    reachability.check(f"sqlite:///{Path.cwd() / 'mlflow.db'}")  # a local store needs no probe
