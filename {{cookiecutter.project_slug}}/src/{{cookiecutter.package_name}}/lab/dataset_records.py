"""Each run's DVC-tracked inputs as MLflow datasets, so that the MLflow UI's "Datasets used"
column and ``search_runs("dataset.digest = '<md5>'")`` show the data version natively.

The digest is DVC's md5 (``<md5>.dir`` for a folder), the same value as the ``data.<name>.md5``
tag; the source names the DVC path, the default DVC remote that holds it, and the git remote
of the repository, which together say where to `dvc pull` it from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import mlflow
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.exceptions import MlflowException

from . import provenance


class DvcDatasetSource(DatasetSource):
    """Where DVC keeps a dataset: its path in the repository and the remote it is pushed to."""

    def __init__(self, path: str, remote: str, repository: str):
        self.path, self.remote, self.repository = path, remote, repository

    @staticmethod
    def _get_source_type() -> str:
        return "dvc"

    def load(self) -> str:
        raise NotImplementedError(
            f"`dvc pull {self.path}` in a clone of {self.repository or 'the repository'}"
        )

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False

    @classmethod
    def _resolve(cls, raw_source: Any) -> DvcDatasetSource:
        raise NotImplementedError

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "remote": self.remote, "repository": self.repository}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> DvcDatasetSource:
        return cls(source_dict["path"], source_dict["remote"], source_dict["repository"])


def log_dvc_inputs(tags: dict[str, str], workdir: Path, context: str) -> None:
    """``mlflow.log_input`` for every input recorded in ``tags`` (see provenance.data_tags)."""
    remote, repository = _default_remote(workdir), _git_remote(workdir)
    for tag, path, md5 in provenance.recorded_inputs(tags):
        name = tag.removeprefix("data.").removesuffix(".md5")
        dataset = MetaDataset(DvcDatasetSource(path, remote, repository), name=name, digest=md5)
        _log_input(dataset, context)


def _log_input(dataset: MetaDataset, context: str) -> None:
    """``mlflow.log_input``, tried twice: MLflow's SQL store looks a dataset up, then inserts it,
    so two queued runs logging the same data at once can both miss it, and the later insert
    breaks the table's unique key. Tried again, the lookup finds the row the other run made."""
    try:
        mlflow.log_input(dataset, context=context)
    except MlflowException:
        mlflow.log_input(dataset, context=context)


def _default_remote(workdir: Path) -> str:
    """The default DVC remote's URL, or "" when there is none (`dvc remote add -d`)."""
    from dvc.repo import Repo

    with Repo(str(workdir)) as repo:
        name = repo.config["core"].get("remote")
        return _without_credentials(repo.config["remote"][name]["url"]) if name else ""


def _git_remote(workdir: Path) -> str:
    try:
        return _without_credentials(provenance.git(workdir, "remote", "get-url", "origin"))
    except Exception:  # no remote named origin: a local repository
        return ""


def _without_credentials(url: str) -> str:
    """``url`` without its ``user:password@``: clone URLs often carry an access token."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])) if parts.scheme else url
