"""Loading a model runs none of its code: `predict` refuses a pickled model from MLflow.

The train stage logs models in MLflow's pt2 format (a torch.export program, weights as plain
tensors), which MLflow checks to be free of pickle before loading. A model logged elsewhere in
the older pickle format can run any code when unpickled; `predict` must refuse it unless the
user sets MLFLOW_ALLOW_PICKLE_DESERIALIZATION for a model they trust.
"""

from __future__ import annotations

import pathlib
from pathlib import Path

import mlflow
import mlflow.pytorch
import pytest
import torch


class Payload(torch.nn.Module):
    """A model whose unpickling touches a file, as foreign code would run."""

    def __init__(self, marker: Path) -> None:
        super().__init__()
        self.marker = marker

    def __reduce__(self) -> tuple:
        return pathlib.Path.touch, (self.marker,)


@pytest.fixture
def pickled_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A pickle-format model logged to a store of its own; its URI and the file it would touch."""
    (tmp_path / ".dvc").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    # Set, then unset: the variable is unset again after the test, whatever `predict` sets.
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "unset")
    monkeypatch.delenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION")
    marker = tmp_path / "code-ran"
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with mlflow.start_run() as run:
        mlflow.pytorch.log_model(
            Payload(marker), name="model", serialization_format="pickle", pip_requirements=[]
        )
    return f"runs:/{run.info.run_id}/model", marker


def test_predict_refuses_a_pickled_model(
    package_module, user_error, pickled_model: tuple[str, Path], tmp_path: Path
) -> None:
    uri, marker = pickled_model
    with pytest.raises(user_error, match=rf"Cannot load model {uri} .*pickle is disallowed"):
        package_module("inference.predict").load_model(uri, tmp_path)
    assert not marker.exists()


def test_the_payload_would_run_if_allowed(
    package_module, pickled_model: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the refusal prevents: with pickle allowed, loading runs the model's code."""
    uri, marker = pickled_model
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    with pytest.raises(Exception):  # noqa: B017  the payload is no model; only its side effect counts
        package_module("inference.predict").load_model(uri, tmp_path)
    assert marker.exists()
