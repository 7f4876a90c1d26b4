"""``reproduce``: rebuild a run's inputs in a temporary git worktree, re-run its stage, compare.

The workspace is not touched: the run's commit is checked out in a worktree that shares the
DVC cache, its params are restored from the run, and its data are checked out by the md5s
the run recorded (from the cache, or pulled from the remote).
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from pathlib import Path

import mlflow
import yaml
from omegaconf import OmegaConf

from hydra_plugins.conf_sha256.hashing import conf_sha256

from ..config.params import CONF_HASH_KEY, PARAMS_FILE, check_buildable, check_code_and_paths
from ..errors import UserError
from . import provenance
from .registry import ENSEMBLE_MEMBERS
from .tracking import PRUNED_TAG, REPRODUCES_VARIABLE, get_run, tracking_uri
from .worktree import checkout, dvc, worktree

# What each stage reads, checked out at the versions the run recorded.
STAGE_INPUTS = {"train": ["data/processed"], "evaluate": ["data/processed", "models", "metrics/train.json"]}
METRICS_FILES = {"train": "metrics/train.json", "evaluate": "metrics/evaluate.json"}
# Prefix the evaluate stage puts on test metrics in MLflow (they are bare in its JSON file).
MLFLOW_PREFIX = {"train": "", "evaluate": "test_"}
# The shapes of the recorded values that reach git and DVC files: commits, names, paths, md5s.
COMMIT = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")
EXPERIMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MD5 = re.compile(r"[0-9a-f]{32}(\.dir)?")
RUN_ID = re.compile(r"[0-9a-f]{32}")


def reproduce(run_id: str, root: Path, tolerance: float | None) -> bool:
    """Re-run ``run_id``'s stage from its recorded inputs; print a table; True if they agree.

    An ensemble's run is reproduced through its members: each member's training, in turn.
    """
    run = get_run(run_id)
    tags = run.data.tags
    stage = tags.get("stage")
    if stage == "ensemble":
        return _reproduce_members(run_id, tags, root, tolerance)
    if stage not in STAGE_INPUTS:
        raise UserError(
            f"Run {run_id} has stage {stage!r}; only train, evaluate and ensemble runs can be reproduced."
        )
    check_record(run_id, tags)
    if tags.get(PRUNED_TAG) == "true":
        raise UserError(
            f"Run {run_id} was pruned by search study {tags.get('search.study', '?')} at epoch "
            f"{tags.get('search.pruned_at_epoch', '?')}: when it stopped depended on the study's other "
            "trials, so a re-run alone cannot give it back. Reproduce a trial that finished."
        )
    if tolerance is None:  # bitwise on CPU; GPU kernels are not bitwise repeatable across runs
        tolerance = 0.0 if tags.get("env.gpu", "none") == "none" else 1e-2
    commit = _source_commit(root, tags)
    with worktree(root, commit) as project, tempfile.TemporaryDirectory(prefix="reproduce-") as scratch:
        _restore_params(project, run_id, tags["params.sha256"], Path(scratch))
        _check_code(project, stage, tags, run_id)
        _pin_md5s(project, {path: md5 for _, path, md5 in provenance.recorded_inputs(tags)})
        checkout(project, STAGE_INPUTS[stage])
        print(f"Re-running stage {stage} of run {run_id} at commit {commit[:12]} in {project}")
        # --no-commit keeps the re-run out of DVC's run-cache, where it would stand in for
        # the original run when a later experiment restores these outputs.
        dvc(
            project,
            "repro",
            "--force",
            "--single-item",
            "--no-commit",
            stage,
            extra_env={
                "MLFLOW_TRACKING_URI": tracking_uri(root),
                REPRODUCES_VARIABLE: run_id,
            },
            echo=True,
        )
        reproduced = json.loads((project / METRICS_FILES[stage]).read_text())
    recorded = {
        key.removeprefix(MLFLOW_PREFIX[stage]): value
        for key, value in run.data.metrics.items()
        if key.startswith(MLFLOW_PREFIX[stage]) and key.removeprefix(MLFLOW_PREFIX[stage]) in reproduced
    }
    return _print_table(recorded, reproduced, tolerance, reproduced.get("mlflow_run_id"))


def _reproduce_members(run_id: str, tags: dict[str, str], root: Path, tolerance: float | None) -> bool:
    """Each member's train run re-run from its own record; the ensemble agrees when all of them do.

    The ensemble adds no training of its own: its models are its members', so members that
    reproduce give back the models it combined.
    """
    members = ensemble_members(run_id, tags)
    print(f"Ensemble run {run_id}: reproducing the training of its {len(members)} members")
    agreed = []
    for number, member in enumerate(members, 1):
        print(f"\n[member {number}/{len(members)}] train run {member}")
        if get_run(member).data.tags.get("stage") != "train":
            raise UserError(f"Ensemble run {run_id}: its member {member} is no train run; refused.")
        agreed.append(reproduce(member, root, tolerance))
    verdict = "metrics agree." if all(agreed) else "metrics DIFFER."
    print(f"\n{sum(agreed)} of {len(members)} members reproduce: {verdict}")
    return all(agreed)


def ensemble_members(run_id: str, tags: dict[str, str]) -> list[str]:
    """The train runs an ensemble's run combines, refused unless each is an MLflow run id."""
    members = tags.get(ENSEMBLE_MEMBERS, "").split(",")
    if not all(RUN_ID.fullmatch(member) for member in members):
        listed = tags.get(ENSEMBLE_MEMBERS)
        raise UserError(f"Run {run_id}: tag {ENSEMBLE_MEMBERS}={listed!r} is not a list of run ids; refused.")
    return members


def _source_commit(root: Path, tags: dict[str, str]) -> str:
    """The commit holding the run's code and its stages' dvc.lock entries.

    That is the experiment's commit when this clone has its ref. A colleague's clone usually
    has instead the commit that kept the results (`dvc exp apply` + `git commit`): HEAD, when it
    descends from the run's git.commit with the same sources. Else git.commit itself.
    """
    exp_commit = provenance.experiment_commit(root, tags.get("dvc.exp_name"), tags.get("dvc.baseline_rev"))
    if exp_commit:
        return exp_commit
    recorded, head = tags["git.commit"], provenance.git_commit(root)
    if head != recorded and provenance.is_ancestor(root, recorded, head):
        if not provenance.git(root, "diff", "--name-only", recorded, head, "--", "src", "dvc.yaml"):
            return head
    return recorded


def check_record(run_id: str, tags: dict[str, str]) -> None:
    """The tags that reach git commands and DVC files have the shapes DVC and git give them.

    The record on the tracking server is data: anyone who can log a run can write it.
    """
    shapes = {"git.commit": COMMIT, "dvc.baseline_rev": COMMIT, "dvc.exp_name": EXPERIMENT_NAME}
    shapes |= {tag: MD5 for tag in tags if tag.startswith("data.") and tag.endswith(".md5")}
    for tag, shape in shapes.items():
        if tag in tags and not shape.fullmatch(tags[tag]):
            raise UserError(f"Run {run_id}: tag {tag}={tags[tag]!r} is not what git or DVC writes; refused.")
    for _, path, _ in provenance.recorded_inputs(tags):
        if Path(path).is_absolute() or ".." in Path(path).parts:
            raise UserError(f"Run {run_id}: input path {path!r} leaves the project; refused.")


def _restore_params(worktree: Path, run_id: str, recorded_sha256: str, scratch: Path) -> None:
    """params.yaml from the run's logged config, with the hash of the worktree's conf/.

    The logged config is data from the tracking server, and a matching params.sha256 proves
    nothing (it sits on the same server). So before any stage runs, every key that chooses code
    or paths must pass the guard that the run's own commit applies: its `_target_`s against
    that commit's committed allowed_targets, its launcher and its data folder.
    """
    logged = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="config/params.yaml", dst_path=str(scratch)
    )
    params = yaml.safe_load(Path(logged).read_text())
    if not isinstance(params, dict):
        raise UserError(f"The params logged with run {run_id} are not a mapping of keys to values.")
    if provenance.params_sha256(params) != recorded_sha256:
        raise UserError(f"The params logged with run {run_id} do not hash to its params.sha256.")
    source, config = f"the params logged with run {run_id}", OmegaConf.create(params)
    check_code_and_paths(config, source)
    check_buildable(config, worktree, source)
    config[CONF_HASH_KEY] = conf_sha256(worktree / "conf")
    (worktree / PARAMS_FILE).write_text(OmegaConf.to_yaml(config))


def _check_code(worktree: Path, stage: str, tags: dict[str, str], run_id: str) -> None:
    """Refuse to re-run other code than the run's: e.g. a run from an uncommitted tree."""
    recorded = tags.get(f"code.{stage}.md5", "?")
    if provenance.code_md5(provenance.stage_code(worktree, stage)) != recorded:
        raise UserError(
            f"The code of run {run_id}'s {stage} stage (code.{stage}.md5 {recorded[:12]}) is in neither "
            "its experiment commit nor its git.commit: it ran on uncommitted changes. Commit the code "
            "that produced it (or `dvc exp apply` its experiment) to make it reproducible."
        )


def _pin_md5s(worktree: Path, md5s: dict[str, str]) -> None:
    """Point the worktree's dvc.lock and .dvc files at the md5s the run recorded."""
    lock_path = worktree / "dvc.lock"
    lock = yaml.safe_load(lock_path.read_text()) if lock_path.is_file() else {"schema": "2.0", "stages": {}}
    for stage in lock.get("stages", {}).values():
        for entry in [*stage.get("deps", []), *stage.get("outs", [])]:
            if entry["path"] in md5s:
                entry["md5"] = md5s[entry["path"]]
    lock_path.write_text(yaml.safe_dump(lock, sort_keys=False))
    for path, md5 in md5s.items():
        dvc_file = worktree / f"{path}.dvc"
        if dvc_file.is_file():
            spec = yaml.safe_load(dvc_file.read_text())
            spec["outs"][0]["md5"] = md5
            dvc_file.write_text(yaml.safe_dump(spec, sort_keys=False))


def _print_table(recorded: dict, reproduced: dict, tolerance: float, new_run_id: str | None) -> bool:
    rule = "bitwise" if tolerance == 0 else f"|difference| <= {tolerance}"
    print(f"\n{'metric':<28}{'recorded':>22}{'reproduced':>22}  agree ({rule})")
    agree = True
    for key in sorted(recorded):
        old, new = float(recorded[key]), float(reproduced[key])
        same = old == new or (tolerance > 0 and math.isclose(old, new, abs_tol=tolerance))
        agree &= same
        print(f"{key:<28}{old!r:>22}{new!r:>22}  {'yes' if same else 'NO'}")
    if not recorded:
        raise UserError("The run recorded none of the metrics its stage writes; nothing to compare.")
    print(f"\nReproduced as MLflow run {new_run_id}: " + ("metrics agree." if agree else "metrics DIFFER."))
    return agree
