"""``server``: the lab's MLflow tracking server, with PostgreSQL for runs and S3 for artifacts.

This is MLflow's documented team setup (`mlflow server --backend-store-uri postgresql://...
--artifacts-destination s3://...`). The server proxies artifacts, so clients need no S3
credentials, only ``MLFLOW_TRACKING_URI`` and their login. It binds 127.0.0.1 unless ``--host``
says otherwise. Anyone who can log a run can write what a colleague later reproduces, so a
server reachable from the network runs MLflow's basic-auth app (accounts, per-experiment
permissions) unless ``--no-auth`` says otherwise, on purpose.
Store URIs and passwords travel to the server in the environment, not on its command line,
where `ps` would show them.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import UserError

log = logging.getLogger(__name__)

BACKEND_VARIABLE = "MLFLOW_BACKEND_STORE_URI"
ARTIFACTS_VARIABLE = "MLFLOW_ARTIFACTS_DESTINATION"
# MLflow's own variables: its auth settings file, the first admin account, the CSRF key.
AUTH_CONFIG_VARIABLE = "MLFLOW_AUTH_CONFIG_PATH"
ADMIN_USER_VARIABLE = "MLFLOW_AUTH_ADMIN_USERNAME"
ADMIN_PASSWORD_VARIABLE = "MLFLOW_AUTH_ADMIN_PASSWORD"
SECRET_KEY_VARIABLE = "MLFLOW_FLASK_SERVER_SECRET_KEY"
# Accounts and permissions, beside the project unless MLFLOW_AUTH_CONFIG_PATH names another store.
AUTH_DATABASE = "mlflow-auth.db"
# Every account may read and write every experiment: lab members reproduce each other's runs.
# Finer rights: MLflow's permission API, or an auth settings file of your own (README).
AUTH_SETTINGS = """[mlflow]
default_permission = EDIT
database_uri = sqlite:///{database}
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
"""


def server_command(
    backend_store_uri: str | None,
    artifacts_destination: str | None,
    host: str,
    port: int,
    extra_args: list[str],
    auth: bool = True,
) -> tuple[list[str], dict[str, str]]:
    """The `mlflow server` command line and its environment, after checking the stores.

    With ``auth`` and a host beyond loopback, the command runs MLflow's basic-auth app; its
    settings file is then still to be written (see :func:`serve`).
    """
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
    if is_loopback(host):
        return command, env
    if not auth:
        log.warning(
            "The MLflow server on %s asks no login (--no-auth): anyone who can reach it can log runs "
            "that a colleague's `reproduce` will read. Use it only on a network you trust.",
            host,
        )
        return command, env
    _check_auth(env)
    env.setdefault(SECRET_KEY_VARIABLE, secrets.token_hex(32))  # CSRF key, shared by its workers
    return [*command, "--app-name", "basic-auth"], env


def serve(command: list[str], env: dict[str, str]) -> bool:
    """Run :func:`server_command`'s server until it stops; SIGTERM and SIGINT are passed on to it."""
    login = "--app-name" in command
    host, port = command[command.index("--host") + 1], command[command.index("--port") + 1]
    print(
        f"MLflow server on http://{host}:{port}: runs in {_without_password(env[BACKEND_VARIABLE])}, "
        f"artifacts in {env[ARTIFACTS_VARIABLE]}"
        + (", login required (MLflow basic-auth)" if login else "")
        + f". Clients: MLFLOW_TRACKING_URI=http://{host}:{port}"
        + (" with MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" if login else ""),
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="mlflow-auth-") as settings_dir:
        if login and AUTH_CONFIG_VARIABLE not in env:
            settings = Path(settings_dir) / "basic_auth.ini"
            settings.write_text(AUTH_SETTINGS.format(database=Path(AUTH_DATABASE).resolve()))
            env[AUTH_CONFIG_VARIABLE] = str(settings)
        server = subprocess.Popen(command, env=env)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda received, _frame: server.send_signal(received))
        return server.wait() == 0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def _check_auth(env: dict[str, str]) -> None:
    """The first start of the auth app creates the admin account, so it needs its password."""
    first_start = AUTH_CONFIG_VARIABLE not in env and not Path(AUTH_DATABASE).is_file()
    if first_start and not env.get(ADMIN_PASSWORD_VARIABLE):
        raise UserError(
            "A server reachable from the network asks for a login (MLflow basic-auth), and its first "
            f"start creates the admin account: set {ADMIN_PASSWORD_VARIABLE} (12 characters or more; "
            f"the account is {ADMIN_USER_VARIABLE}, default admin). Or listen on 127.0.0.1, or pass "
            "--no-auth for an open server on a network you trust."
        )


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
