"""What a stage does when the MLflow tracking server does not answer.

- At start: the stage stops before it loads anything, with the URI and the fix.
- During a run: MLflow's client retries each request (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``,
  7 with exponential backoff by default: about 4 minutes), then gives up. The stage then fails,
  naming the URI, so DVC records none of its outputs. Its run stays RUNNING, or becomes FAILED
  when the server is back in time, but never FINISHED. Re-running logs a complete run.
Buffering what could not be sent would instead leave a result whose record may never arrive.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ..errors import UserError
from ..paths import PACKAGE

if TYPE_CHECKING:  # imported where a probe runs: a stage that logs locally never needs it
    import requests

# How long one probe of the server may take; MLflow's own requests wait up to 120 s each.
PROBE_SECONDS = 10


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def probe(uri: str, path: str) -> requests.Response:
    """A GET of ``path`` on the server, without credentials, with MLflow's TLS setting."""
    import requests  # an MLflow dependency, which honours REQUESTS_CA_BUNDLE like MLflow does

    verify = os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() != "true"
    return requests.get(f"{uri.rstrip('/')}/{path}", timeout=PROBE_SECONDS, verify=verify)


def unreachable_reason(uri: str) -> str | None:
    """None when the server at ``uri`` answers; else why not ("Connection refused", ...).

    Any HTTP answer counts: a proxy's 401 means a server is there, and MLflow reports the rest.
    """
    import requests

    try:
        probe(uri, "health")
    except requests.RequestException as error:
        return short_reason(error)
    return None


def check(uri: str) -> None:
    """A UserError naming ``uri`` and the fix when it is a server that does not answer."""
    if is_server(uri) and (reason := unreachable_reason(uri)):
        raise UserError(
            f"The MLflow tracking server {uri} (MLFLOW_TRACKING_URI) does not answer: {reason}. "
            f"Start it (`python -m {PACKAGE} server`, see the README's Team setup) or unset "
            "MLFLOW_TRACKING_URI to log to this repository's mlflow.db. Nothing was run."
        )


def server_lost(uri: str, stage: str, run_id: str, error: BaseException) -> UserError | None:
    """The error to raise when ``error`` came from losing the server mid-run, else None."""
    if not is_server(uri) or unreachable_reason(uri) is None:
        return None
    return UserError(
        f"The MLflow tracking server {uri} stopped answering during the {stage} stage "
        f"({short_reason(error)}). Its run {run_id} is not FINISHED, and DVC records none of the "
        "stage's outputs: once the server is back, run the experiment again; that run is complete."
    )


@contextmanager
def fail_fast() -> Iterator[None]:
    """MLflow requests without retries, for a last message to a server that is probably gone."""
    settings = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(PROBE_SECONDS)}
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def short_reason(error: BaseException) -> str:
    """The operating system's reason inside a connection error's nested message, if any."""
    match = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(error))
    return match.group(1).strip() if match else type(error).__name__
