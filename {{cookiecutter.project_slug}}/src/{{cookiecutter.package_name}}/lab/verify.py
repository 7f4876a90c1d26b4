"""``verify``: recompute a run's provenance in the current workspace and compare, item by item."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..config.params import load_params, repo_root, resolved_params
from ..errors import UserError
from . import provenance
from .reproduce import check_record, ensemble_members
from .tracking import get_run
from .worktree import dvc, worktree

# Where a stage writes the id of the MLflow run that produced the workspace's outputs.
RUN_ID_FILES = ("metrics/evaluate.json", "metrics/train.json")


@dataclass(frozen=True)
class Check:
    item: str
    recorded: str
    current: str
    accepted_because: str = ""  # why a different value still matches

    @property
    def matches(self) -> bool:
        return self.recorded == self.current or bool(self.accepted_because)

    def line(self) -> str:
        if self.accepted_because:
            return f"  match     {self.item:<24} {self.current} ({self.accepted_because})"
        if self.matches:
            return f"  match     {self.item:<24} {self.current}"
        return f"  MISMATCH  {self.item:<24} recorded {self.recorded} != now {self.current}"


def latest_run_id(workdir: Path) -> str:
    """The run behind the workspace's outputs, from the stages' DVC metrics files."""
    for name in RUN_ID_FILES:
        path = workdir / name
        if path.is_file():
            return json.loads(path.read_text())["mlflow_run_id"]
    raise UserError(f"No {' or '.join(RUN_ID_FILES)} here: run `dvc exp run` or pass a run id.")


def provenance_checks(tags: dict[str, str], workdir: Path) -> list[Check]:
    """Recompute git state, the code of the run's stage, params and each data md5 in ``workdir``."""
    params = resolved_params(load_params(workdir))
    checks = [
        Check("git.commit", tags.get("git.commit", "?"), provenance.git_commit(workdir)),
        Check("git.dirty", tags.get("git.dirty", "?"), str(provenance.git_dirty(workdir)).lower()),
        _code_check(tags, workdir),
        Check("params.sha256", tags.get("params.sha256", "?"), provenance.params_sha256(params)),
    ]
    inputs = provenance.recorded_inputs(tags)
    current = provenance.dvc_md5s(workdir, [path for _, path, _ in inputs])
    for tag, path, md5 in inputs:
        checks.append(Check(tag, md5, current[path] or f"missing ({path}; try `dvc pull`)"))
    return _accept_clean_stage_code(_accept_descendant(checks, workdir))


def _code_check(tags: dict[str, str], workdir: Path) -> Check:
    """The run's stage's code now against its record; a difference names the files that changed."""
    stage = tags.get("stage", "?")
    item = f"code.{stage}.md5"
    code = provenance.stage_code(workdir, stage)
    current = provenance.code_md5(code)
    recorded = tags.get(item, "?")
    if recorded == current:
        return Check(item, recorded, current)
    changed = changed_code_files(json.loads(tags.get(f"code.{stage}.deps", "{}")), code, tags, workdir)
    return Check(item, recorded, f"{current} (changed: {', '.join(changed) or 'the deps themselves'})")


def changed_code_files(
    recorded: dict[str, str], current: dict[str, str], tags: dict[str, str], workdir: Path
) -> list[str]:
    """The files behind the deps whose md5 differs: a file itself, or what changed in a folder
    since the run's commit (git), or the folder when git cannot say."""
    changed = []
    for dep in sorted(set(recorded) | set(current)):
        if recorded.get(dep) == current.get(dep):
            continue
        if not (workdir / dep).is_dir():
            changed.append(dep)
            continue
        inside = provenance.changed_since(workdir, tags.get("git.commit", ""), dep)
        changed += inside or [dep]
    return changed


def _accept_clean_stage_code(checks: list[Check]) -> list[Check]:
    """A tree dirty only outside the stage's code (plumbing, another stage) computes the same.

    git.dirty covers all sources; when the stage's code, params and data all match, a dirty
    file elsewhere (a fix in lab/, an edit of evaluate code against a train run) is no mismatch.
    """
    commit, dirty, *others = checks
    if dirty.matches or not all(check.matches for check in others):
        return checks
    if dirty.recorded != "false":
        return checks
    return [
        commit,
        Check(dirty.item, dirty.recorded, dirty.current, "only outside this stage's code"),
        *others,
    ]


def _accept_descendant(checks: list[Check], workdir: Path) -> list[Check]:
    """A HEAD that descends from the recorded commit matches when nothing hashed has changed.

    The team's flow commits a run's results after the run (`dvc exp apply` or `dvc exp branch`,
    then `git commit`), so a colleague's clone sits on a later commit than the one recorded.
    The code, params and data hashes decide whether that later commit still computes the same.
    """
    commit, dirty, *others = checks
    if commit.matches or not all(check.matches for check in others):
        return checks
    if not provenance.is_ancestor(workdir, commit.recorded, commit.current):
        return checks
    note = f"descendant of {commit.recorded[:12]}, sources unchanged"
    return [Check(commit.item, commit.recorded, commit.current, note), dirty, *others]


def environment_warnings(tags: dict[str, str]) -> list[str]:
    """Versions that differ from the run's: worth knowing, but not a provenance failure."""
    current = provenance.library_versions()
    return [
        f"  warning   {tag:<24} recorded {tags[tag]}, now {value}"
        for tag, value in current.items()
        if tag in tags and tags[tag] != value
    ]


def verify(run_id: str | None, workdir: Path) -> bool:
    """Print one line per item; True when every item matches.

    An ensemble's run is verified through its members, each where its experiment was made.
    """
    run_id = run_id or latest_run_id(workdir)
    tags = get_run(run_id).data.tags
    if tags.get("stage") == "ensemble":
        return _verify_members(run_id, tags, workdir)
    return _verify_run(run_id, tags, workdir)


def _verify_run(run_id: str, tags: dict[str, str], workdir: Path) -> bool:
    experiment = tags.get("dvc.exp_name", "no DVC experiment")
    print(f"Verifying MLflow run {run_id} ({tags.get('stage', '?')}, {experiment})")
    checks = provenance_checks(tags, workdir)
    for check in checks:
        print(check.line())
    for warning in environment_warnings(tags):
        print(warning)
    mismatches = sum(not check.matches for check in checks)
    summary = f"{len(checks) - mismatches} of {len(checks)} items match"
    print(summary + (f", {mismatches} MISMATCH" if mismatches else ""))
    return mismatches == 0


def _verify_members(run_id: str, tags: dict[str, str], workdir: Path) -> bool:
    """Each member's train run against the commit DVC made for its experiment, with that
    commit's data checked out from the cache: the folds of a `cv` run differ in their params, so
    no one workspace holds them all. A member whose experiment this clone lacks is checked here."""
    members, root = ensemble_members(run_id, tags), repo_root()
    print(f"Ensemble run {run_id}: verifying its {len(members)} members")
    matched = []
    for number, member in enumerate(members, 1):
        print(f"\n[member {number}/{len(members)}] ", end="")
        member_tags = get_run(member).data.tags
        check_record(member, member_tags)
        commit = provenance.experiment_commit(
            root, member_tags.get("dvc.exp_name"), member_tags.get("dvc.baseline_rev")
        )
        if commit is None:
            print("(its experiment is not in this clone: checked against the workspace)")
            matched.append(_verify_run(member, member_tags, workdir))
            continue
        with worktree(root, commit) as project:
            inputs = [path for _, path, _ in provenance.recorded_inputs(member_tags)]
            for path in inputs:  # missing from cache and remote: reported as missing below
                dvc(project, "checkout", path, check=False)
            matched.append(_verify_run(member, member_tags, project))
    print(f"\n{sum(matched)} of {len(members)} members verify")
    return all(matched)
