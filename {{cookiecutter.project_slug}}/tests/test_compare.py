"""`compare`: paired per-case differences between evaluate runs, with an interval and a verdict;
and the registry's `tracking.champion_policy`, which moves `champion` by the same rule.

The shared experiment's evaluate run scored one test case, so the runs compared here are made
beside it: evaluate runs with its tags (the same preprocessed data, hence the same split) and
a per-case table of six cases, logged to an MLflow experiment of their own.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import mlflow
import pandas as pd
import pytest

BASE = [0.62, 0.70, 0.55, 0.81, 0.74, 0.66]  # Dice of six test cases


def client_for(experiment: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(f"sqlite:///{experiment / 'mlflow.db'}")


def evaluate_run_id(experiment: Path) -> str:
    return json.loads((experiment / "metrics/evaluate.json").read_text())["mlflow_run_id"]


def scored_run(experiment: Path, tmp_path: Path, change: float | list[float], **tags: str) -> str:
    """An evaluate run like the shared one, whose six cases score BASE plus ``change`` per case
    (a number: change x (1, 1.1, ..., 1.5))."""
    client = client_for(experiment)
    real = client.get_run(evaluate_run_id(experiment))
    classes = [c for c in pd.read_csv(experiment / "reports/per_case.csv").columns if c.startswith("dice_")]
    table = pd.DataFrame({"case": [f"case_{index:03d}" for index in range(len(BASE))]})
    changes = change if isinstance(change, list) else [change * (1 + 0.1 * i) for i in range(len(BASE))]
    for column in classes:
        table[column] = [score + delta for score, delta in zip(BASE, changes, strict=True)]
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    table.to_csv(folder / "per_case.csv", index=False)
    found = client.get_experiment_by_name("compared")
    experiment_id = found.experiment_id if found else client.create_experiment("compared")
    kept = {k: v for k, v in real.data.tags.items() if not k.startswith(("mlflow.", "dvc."))}
    run = client.create_run(experiment_id, tags=kept | tags)
    client.log_artifact(run.info.run_id, str(folder / "per_case.csv"), "reports")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def class_rows(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("| ") and not line.startswith("| class")]


def compare(experiment: Path, run, *args: str) -> subprocess.CompletedProcess:
    package = next(p.parent.name for p in (experiment / "src").glob("*/cli.py"))
    return run([sys.executable, "-m", package, "compare", *args], experiment, check=False)


def test_a_gain_on_every_case_is_a_difference_and_is_logged(experiment: Path, run, tmp_path: Path) -> None:
    base, better = scored_run(experiment, tmp_path, 0.0), scored_run(experiment, tmp_path, 0.05)
    result = compare(experiment, run, base, better)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = class_rows(result.stdout)
    assert rows and all(re.search(r"B beats A by 0\.06\d \(", row) for row in rows), result.stdout
    p_value = float(rows[0].split("|")[5])
    assert p_value == pytest.approx(0.031, abs=5e-4)  # six cases, all better: the least two-sided p
    client = client_for(experiment)
    compared = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "tags.stage = 'compare'"
    )
    assert (compared[0].data.tags["compare.a"], compared[0].data.tags["compare.b"]) == (base, better)
    logged = Path(client.download_artifacts(compared[0].info.run_id, "compare.md")).read_text()
    assert rows[0] in logged


def test_noise_is_no_difference(experiment: Path, run, tmp_path: Path) -> None:
    base = scored_run(experiment, tmp_path, 0.0)
    noisy = scored_run(experiment, tmp_path, [0.02, -0.03, 0.01, -0.02, 0.03, -0.01])
    result = compare(experiment, run, base, noisy)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = class_rows(result.stdout)
    assert rows and all("no difference beyond noise" in row for row in rows), result.stdout


def test_a_run_against_itself_by_experiment_name_is_no_difference(experiment: Path, run) -> None:
    name = client_for(experiment).get_run(evaluate_run_id(experiment)).data.tags["dvc.exp_name"]
    result = compare(experiment, run, name, evaluate_run_id(experiment))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = class_rows(result.stdout)
    assert rows and all("no difference beyond noise (+0.000" in row for row in rows), result.stdout


def test_a_group_shows_its_spread_across_members(experiment: Path, run, tmp_path: Path) -> None:
    base = scored_run(experiment, tmp_path, 0.0)
    group = ",".join(scored_run(experiment, tmp_path, change) for change in (0.05, 0.15))
    result = compare(experiment, run, base, group)
    assert result.returncode == 0, result.stderr[-3000:]
    row = class_rows(result.stdout)[0]
    spread_a, spread_b = (cell.strip() for cell in row.split("|")[6:8])
    assert spread_a == "-" and float(spread_b) > 0, row
    assert re.search(r"B beats A by 0\.12\d \(", row), row  # the members' mean: 0.1 x (1, ..., 1.5)


def test_runs_on_other_test_cases_are_refused(experiment: Path, run, tmp_path: Path) -> None:
    base = scored_run(experiment, tmp_path, 0.0)
    other = scored_run(experiment, tmp_path, 0.1, **{"data.processed.md5": "0" * 32})
    result = compare(experiment, run, base, other)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "did not score the same test cases" in result.stderr and "data.processed.md5" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_train_run_is_refused_with_the_fix(experiment: Path, run) -> None:
    train = json.loads((experiment / "metrics/train.json").read_text())["mlflow_run_id"]
    result = compare(experiment, run, train, evaluate_run_id(experiment))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"Run {train} is a train run" in result.stderr and "metrics/evaluate.json" in result.stderr


@pytest.mark.parametrize("reference", ["no-such-experiment", "models:/no-such-model/1"])
def test_an_unknown_reference_is_named(experiment: Path, run, reference: str) -> None:
    result = compare(experiment, run, reference, evaluate_run_id(experiment))
    assert result.returncode == 2 and reference in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_model_version_evaluate_did_not_register_is_refused(experiment: Path, run, tmp_path: Path) -> None:
    client = client_for(experiment)
    name = f"by-hand-{tmp_path.name}"
    client.create_registered_model(name)
    scored = scored_run(experiment, tmp_path, 0.0)
    client.create_model_version(name, f"runs:/{scored}/model", run_id=scored)  # no evaluate_run_id tag
    result = compare(experiment, run, f"models:/{name}/1", evaluate_run_id(experiment))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"models:/{name}/1 (version 1) was not registered by evaluate" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def promote(experiment: Path, tmp_path: Path, package_module: Callable[[str], ModuleType]) -> Callable:
    """Register a crafted evaluate run (BASE plus a change per case) as the next version of a model
    of its own, under a champion policy, as evaluate does; return the registry's decision."""
    registry = package_module("lab.registry")
    client = client_for(experiment)
    name = f"policy-{tmp_path.name}"
    client.create_registered_model(name)

    def register(change: float | list[float], policy: str, **tags: str) -> dict:
        run_id = scored_run(experiment, tmp_path, change, **tags)
        changes = change if isinstance(change, list) else [change * (1 + 0.1 * i) for i in range(len(BASE))]
        score = sum(BASE) / len(BASE) + sum(changes) / len(changes)
        client.log_metric(run_id, "test_dice_mean", score)
        version = client.create_model_version(
            name, f"runs:/{run_id}/model", run_id=run_id, tags={"evaluate_run_id": run_id}
        )
        rule = registry.Rule("dice_mean", "max", policy)
        registry._promote_if_better(client, version, rule, score, client.get_run(run_id))
        return {
            "version": int(version.version),
            "champion": int(client.get_registered_model(name).aliases["champion"]),
            "decision": client.get_model_version(name, version.version).tags["champion.decision"],
        }

    return register


def test_significant_policy_moves_the_champion_only_beyond_noise(promote: Callable) -> None:
    first = promote(0.0, "significant")
    assert first["champion"] == 1 and "now champion (previous: none)" in first["decision"]
    # A higher mean (+0.008) whose interval straddles 0: `best` would take it, `significant` does not.
    noise = promote([0.05, -0.03, 0.02, -0.02, 0.04, -0.01], "significant")
    assert noise["champion"] == 1, noise
    assert re.search(
        r"champion stays v1: dice_mean gain over v1 \+0\.0083 \(-0\.\d+ to \+0\.\d+, 6 paired",
        noise["decision"],
    ), noise
    assert "within noise" in noise["decision"] and "tracking.champion_policy=significant" in noise["decision"]
    gain = promote(0.05, "significant")  # better on every case
    assert gain["champion"] == 3, gain
    assert re.search(
        r"now champion \(previous: v1\): dice_mean gain over v1 \+0\.06\d+ \(\+0\.", gain["decision"]
    )
    assert "beyond noise" in gain["decision"]


def test_best_policy_moves_the_champion_on_any_higher_mean(promote: Callable) -> None:
    promote(0.0, "best")
    noise = promote([0.05, -0.03, 0.02, -0.02, 0.04, -0.01], "best")
    assert noise["champion"] == 2 and "beats v1's" in noise["decision"], noise
    assert "tracking.champion_policy=best" in noise["decision"]


def test_significant_policy_keeps_the_champion_against_other_test_cases(promote: Callable) -> None:
    promote(0.0, "significant")
    other = promote(0.2, "significant", **{"data.processed.md5": "0" * 32})
    assert other["champion"] == 1, other
    assert "champion stays v1: no comparison with v1" in other["decision"]
    assert "did not score the same test cases" in other["decision"]
