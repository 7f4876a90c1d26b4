"""``server``: the lab's MLflow tracking server, with PostgreSQL for runs and S3 for artifacts.

This is MLflow's documented team setup (`mlflow server --backend-store-uri postgresql://...
--artifacts-destination s3://...`). The server proxies artifacts, so clients need no S3
credentials, only ``MLFLOW_TRACKING_URI``. It binds 127.0.0.1 unless ``--host`` says otherwise:
MLflow's server has no login of its own, so exposing it is a decision to make on purpose.
Store URIs travel to the server in the environment, not on its command line, where `ps` would
show a password embedded in them.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import NoReturn
from urllib.parse import urlsplit

from .errors import UserError

BACKEND_VARIABLE = "MLFLOW_BACKEND_STORE_URI"
ARTIFACTS_VARIABLE = "MLFLOW_ARTIFACTS_DESTINATION"


def server_command(
    backend_store_uri: str | None,
    artifacts_destination: str | None,
    host: str,
    port: int,
    extra_args: list[str],
) -> tuple[list[str], dict[str, str]]:
    """The `mlflow server` command line and its environment, after checking the stores."""
    backend = backend_store_uri or os.environ.get(BACKEND_VARIABLE)
    artifacts = artifacts_destination or os.environ.get(ARTIFACTS_VARIABLE)
    if not backend:
        raise UserError(
            f"No backend store: pass --backend-store-uri postgresql://<user>@<host>/<database> or set "
            f"{BACKEND_VARIABLE}; keep the password in PGPASSWORD or ~/.pgpass."
        )
    if not artifacts:
        raise UserError(
            f"No artifact store: pass --artifacts-destination s3://<bucket>/<prefix> or set "
            f"{ARTIFACTS_VARIABLE}; S3 credentials come from AWS_* variables or ~/.aws, and "
            "MLFLOW_S3_ENDPOINT_URL names an S3-compatible store (MinIO, Ceph, ...)."
        )
    _check_backend(backend)
    _check_artifacts(artifacts)
    extra = extra_args[1:] if extra_args[:1] == ["--"] else extra_args
    command = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port), *extra]
    env = {**os.environ, BACKEND_VARIABLE: backend, ARTIFACTS_VARIABLE: artifacts}
    return command, env


def serve(
    backend_store_uri: str | None,
    artifacts_destination: str | None,
    host: str,
    port: int,
    extra_args: list[str],
) -> NoReturn:
    """Replace this process with the MLflow server, so that signals reach it directly."""
    command, env = server_command(backend_store_uri, artifacts_destination, host, port, extra_args)
    print(
        f"MLflow server on http://{host}:{port}: runs in {_without_password(env[BACKEND_VARIABLE])}, "
        f"artifacts in {env[ARTIFACTS_VARIABLE]}. Clients: MLFLOW_TRACKING_URI=http://{host}:{port}",
        flush=True,
    )
    os.execve(command[0], command, env)


def _check_backend(uri: str) -> None:
    """The database driver SQLAlchemy picks for ``uri`` (psycopg for postgresql://) is installed."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(uri).get_dialect().import_dbapi()
    except ArgumentError as error:
        raise UserError(f"--backend-store-uri {uri!r} is not a database URI: {error}") from error
    except ModuleNotFoundError as error:
        raise UserError(
            f"The backend store needs the {error.name} module, which is not installed: "
            "pip install -e '.[team]'"
        ) from error


def _check_artifacts(uri: str) -> None:
    if urlsplit(uri).scheme == "s3" and importlib.util.find_spec("boto3") is None:
        raise UserError("s3:// artifact stores need boto3, which is not installed: pip install -e '.[team]'")


def _without_password(uri: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(uri).render_as_string(hide_password=True)
