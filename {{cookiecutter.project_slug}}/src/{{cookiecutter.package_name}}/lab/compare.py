"""``compare A B``: is B really better than A? Paired per-case differences on the same test cases.

A and B are each an evaluate run's id, a DVC experiment's name, a registered model version
(``models:/<name>/<version>`` or ``models:/<name>@<alias>``), or a group of those joined by
commas (e.g. one configuration under several seeds): a group scores each case by its members'
mean, and its spread across members is shown.

For every class: the mean of B - A over the test cases, its 95 % bootstrap interval (scipy's
``bootstrap``), a Wilcoxon signed-rank p-value (scipy's ``wilcoxon``), and one line in words.
A difference whose interval excludes 0 is a difference; anything else is noise. With few test
cases no interval is narrow: that is the honest answer, not a flaw of the test.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from scipy import stats

from ..errors import UserError
from .tracking import tracking_uri

log = logging.getLogger(__name__)

PER_CASE = "reports/per_case.csv"
SPLIT_TAG = "data.processed.md5"  # the preprocessed data, its train/val/test split included
CONFIDENCE = 0.95
SCORING_STAGES = ("evaluate", "ensemble")  # the runs that hold a per-case table of the test set


@dataclass
class Side:
    """One side of a comparison: its evaluate runs and their per-case scores."""

    reference: str
    runs: list[mlflow.entities.Run]
    scores: list[pd.DataFrame]  # one table per run, indexed by case

    def mean(self, column: str) -> pd.Series:
        return pd.concat([table[column] for table in self.scores], axis=1).mean(axis=1)

    def spread(self, column: str) -> float | None:
        """Standard deviation of the members' mean scores (a group only)."""
        means = [table[column].mean() for table in self.scores]
        return float(np.std(means, ddof=1)) if len(means) > 1 else None


@dataclass
class Difference:
    column: str
    cases: int
    mean: float
    low: float
    high: float
    p_value: float | None
    spreads: tuple[float | None, float | None]

    def verdict(self, a: str, b: str) -> str:
        if math.isnan(self.low):
            return f"too few test cases ({self.cases}) for an interval"
        if self.low > 0:
            return f"{b} beats {a} by {self.mean:.3f} ({self.low:.3f} to {self.high:.3f})"
        if self.high < 0:
            return f"{a} beats {b} by {-self.mean:.3f} ({-self.high:.3f} to {-self.low:.3f})"
        return f"no difference beyond noise ({self.mean:+.3f}, {self.low:+.3f} to {self.high:+.3f})"


def compare(root: Path, a: str, b: str, resamples: int = 9999, seed: int = 0) -> list[Difference]:
    """Print the comparison of ``b`` against ``a`` and log it to MLflow; return it."""
    client = mlflow.MlflowClient(tracking_uri(root))
    first, second = (_side(client, reference) for reference in (a, b))
    _check_comparable(first, second)
    columns = [column for column in first.scores[0].columns if column.startswith("dice_")]
    differences = [_difference(first, second, column, resamples, seed) for column in columns]
    table = _table(differences, a, b)
    print(table)
    _log(client, first, second, table)
    return differences


def paired_difference(
    client: mlflow.MlflowClient, a: mlflow.entities.Run, b: mlflow.entities.Run, column: str, seed: int = 0
) -> Difference:
    """B - A on one per-case score of two evaluate runs: a class's column, or ``<score>_mean``
    (e.g. dice_mean), each case's mean over its classes. A UserError when they did not score the
    same test cases. The bootstrap's ``seed`` is fixed, so the same runs always get the same answer."""
    first, second = (
        Side(run.info.run_id, [run], [_with_case_means(_per_case(client, run))]) for run in (a, b)
    )
    _check_comparable(first, second)
    return _difference(first, second, column, resamples=9999, seed=seed)


def _with_case_means(table: pd.DataFrame) -> pd.DataFrame:
    """The per-case table plus ``<score>_mean`` per case (dice_mean, hd95_mean, ...), empty masks left out."""
    for score in {column.split("_")[0] for column in table.columns}:
        table[f"{score}_mean"] = table.filter(regex=f"^{score}_").mean(axis=1, skipna=True)
    return table


def _side(client: mlflow.MlflowClient, reference: str) -> Side:
    runs = [_evaluate_run(client, member.strip()) for member in reference.split(",") if member.strip()]
    if not runs:
        raise UserError(f"`{reference}` names no run, experiment or model version to compare.")
    return Side(reference, runs, [_per_case(client, run) for run in runs])


def _evaluate_run(client: mlflow.MlflowClient, reference: str) -> mlflow.entities.Run:
    """The evaluate run behind a run id, a DVC experiment's name or a model version."""
    if reference.startswith("models:/"):
        name, _, rest = reference.removeprefix("models:/").partition("/")
        name, _, alias = name.partition("@")
        try:
            version = (
                client.get_model_version_by_alias(name, alias)
                if alias
                else client.get_model_version(name, rest)
            )
        except mlflow.MlflowException as error:
            raise UserError(f"No model version {reference} ({error.message}).") from error
        if "evaluate_run_id" not in version.tags:
            raise UserError(
                f"{reference} (version {version.version}) was not registered by evaluate: it has no "
                "evaluate_run_id tag naming the run that scored it. Compare evaluate runs or experiments."
            )
        return client.get_run(version.tags["evaluate_run_id"])
    try:
        run = client.get_run(reference)
    except mlflow.MlflowException:
        experiments = [experiment.experiment_id for experiment in client.search_experiments()]
        found = client.search_runs(
            experiments,
            f"tags.`dvc.exp_name` = '{reference}' and tags.stage = 'evaluate' "
            "and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not found:
            raise UserError(
                f"`{reference}` is no MLflow run id, DVC experiment with an evaluate run, or "
                "models:/ URI in this store; `dvc exp show` lists the experiments."
            ) from None
        return found[0]
    if run.data.tags.get("stage") not in SCORING_STAGES:
        raise UserError(
            f"Run {reference} is a {run.data.tags.get('stage', 'non-stage')} run; compare scores "
            "test cases, so give an evaluate run (its id is in metrics/evaluate.json) or an ensemble's."
        )
    return run


def _per_case(client: mlflow.MlflowClient, run: mlflow.entities.Run) -> pd.DataFrame:
    try:
        path = mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path=PER_CASE, tracking_uri=client.tracking_uri
        )
    except (mlflow.MlflowException, OSError) as error:
        raise UserError(f"Run {run.info.run_id} has no {PER_CASE} artifact to compare ({error}).") from error
    return pd.read_csv(path).set_index("case").sort_index()


def _check_comparable(*sides: Side) -> None:
    """Refuse runs that did not score the same test cases, and say why."""
    runs = [run for side in sides for run in side.runs]
    splits = {run.data.tags.get(SPLIT_TAG) for run in runs}
    if len(splits) > 1:
        listed = ", ".join(f"{run.info.run_id}: {run.data.tags.get(SPLIT_TAG)}" for run in runs)
        raise UserError(
            f"These runs did not score the same test cases: their preprocessed data ({SPLIT_TAG}, "
            f"which holds the split) differs ({listed}). Compare runs made on the same data."
        )
    cases = {tuple(table.index) for side in sides for table in side.scores}
    if len(cases) > 1:
        raise UserError(f"These runs scored different test cases: {sorted(cases)}.")


def _difference(a: Side, b: Side, column: str, resamples: int, seed: int) -> Difference:
    paired = pd.concat([a.mean(column), b.mean(column)], axis=1).dropna()  # NaN: an empty mask
    change = (paired.iloc[:, 1] - paired.iloc[:, 0]).to_numpy()
    spreads = (a.spread(column), b.spread(column))
    if len(change) and np.all(change == change[0]) and (change[0] == 0 or len(change) > 1):
        # Every case moved by the same amount (none, for identical runs): nothing to resample.
        value = float(change[0])
        return Difference(column, len(change), value, value, value, None, spreads)
    if len(change) < 2:
        return Difference(column, len(change), float(change.mean()) if len(change) else math.nan,
                          math.nan, math.nan, None, spreads)  # fmt: skip
    interval = stats.bootstrap(
        (change,), np.mean, confidence_level=CONFIDENCE, n_resamples=resamples, method="percentile", rng=seed
    ).confidence_interval
    return Difference(
        column,
        len(change),
        float(change.mean()),
        float(interval.low),
        float(interval.high),
        float(stats.wilcoxon(change).pvalue),
        spreads,
    )


def _table(differences: list[Difference], a: str, b: str) -> str:
    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = [
        f"B = {b} against A = {a}: B - A per test case, mean and {CONFIDENCE:.0%} bootstrap interval",
        "",
        "| class | cases | B - A | interval | Wilcoxon p | spread A | spread B | in words |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d in differences:
        cells = [
            d.column.removeprefix("dice_"),
            str(d.cases),
            f"{d.mean:+.3f}",
            f"{d.low:+.3f} to {d.high:+.3f}",
            number(d.p_value),
            number(d.spreads[0]),
            number(d.spreads[1]),
            d.verdict("A", "B"),
        ]
        lines.append(f"| {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def _log(client: mlflow.MlflowClient, a: Side, b: Side, table: str) -> None:
    """The comparison as a run of its own, beside the runs it compares, with the table attached."""
    experiment_id = b.runs[0].info.experiment_id
    tags = {
        "stage": "compare",
        "compare.a": ",".join(run.info.run_id for run in a.runs),
        "compare.b": ",".join(run.info.run_id for run in b.runs),
    }
    run = client.create_run(experiment_id, tags=tags, run_name=f"compare {a.reference} vs {b.reference}")
    client.log_text(run.info.run_id, table, "compare.md")
    client.set_terminated(run.info.run_id)
    log.info("Logged to MLflow run %s (compare.md)", run.info.run_id)
