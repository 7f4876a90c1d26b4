"""Provenance values behind the MLflow tags: file, code and params hashes, DVC md5s, git state."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hydra_plugins.conf_sha256.hashing import conf_sha256, sha256_of_files

DVC_LOCK = """\
schema: '2.0'
stages:
  synthesize:
    cmd: python -m pkg synthesize
    deps:
    - path: src/pkg/stages/synthesize.py
      hash: md5
      md5: 0f343b0931126a20f133d67c2b018a3b
      size: 1834
    params:
      params.yaml:
        seed: 0
    outs:
    - path: data/synthetic
      hash: md5
      md5: 7e9a1e29f5c1b1d7b8c8bd2c1e3a6f01.dir
      size: 1203344
      nfiles: 49
  preprocess:
    cmd: python -m pkg preprocess
    deps:
    - path: data/synthetic
      hash: md5
      md5: 7e9a1e29f5c1b1d7b8c8bd2c1e3a6f01.dir
      size: 1203344
      nfiles: 49
    outs:
    - path: data/processed
      hash: md5
      md5: 3c59dc048e8850243be8079a5c74d079.dir
      size: 998720
      nfiles: 50
"""

RAW_DVC = """\
outs:
- md5: a3f1e5c0d2b64b9e8f7a6c5d4e3b2a19.dir
  size: 52428800
  nfiles: 263
  hash: md5
  path: raw
"""


@pytest.fixture
def provenance(package_module):
    return package_module("lab.provenance")


def write_files(root: Path, contents: dict[str, bytes]) -> list[Path]:
    paths = []
    for name, data in contents.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths.append(path)
    return paths


FILES = {"a.yaml": b"lr: 0.1\n", "sub/b.yaml": b"net: unet\n", "c.py": b"print(1)\n"}


def test_file_hash_ignores_listing_order(tmp_path: Path) -> None:
    paths = write_files(tmp_path, FILES)
    assert sha256_of_files(tmp_path, paths) == sha256_of_files(tmp_path, list(reversed(paths)))
    assert sha256_of_files(tmp_path, iter(paths)) == sha256_of_files(tmp_path, paths)


def test_file_hash_changes_with_one_byte(tmp_path: Path) -> None:
    paths = write_files(tmp_path, FILES)
    before = sha256_of_files(tmp_path, paths)
    paths[0].write_bytes(b"lr: 0.2\n")
    assert sha256_of_files(tmp_path, paths) != before


def test_file_hash_changes_with_a_file_name(tmp_path: Path) -> None:
    paths = write_files(tmp_path, FILES)
    before = sha256_of_files(tmp_path, paths)
    renamed = paths[1].rename(paths[1].with_name("b2.yaml"))
    assert sha256_of_files(tmp_path, [paths[0], renamed, paths[2]]) != before


def test_file_hash_depends_on_relative_names_only(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    assert sha256_of_files(one, write_files(one, FILES)) == sha256_of_files(two, write_files(two, FILES))


def test_conf_hash_covers_nested_yaml_only(tmp_path: Path) -> None:
    write_files(tmp_path, FILES)
    before = conf_sha256(tmp_path)
    (tmp_path / "notes.txt").write_text("not config")
    assert conf_sha256(tmp_path) == before
    (tmp_path / "sub" / "b.yaml").write_text("net: segresnet\n")
    assert conf_sha256(tmp_path) != before


@pytest.fixture
def resolved(package_module, project_root: Path) -> dict:
    params = OmegaConf.load(project_root / "params.yaml")
    return package_module("config.params").resolved_params(params)


def reorder(value: object) -> object:
    """The same mapping with every level's keys in reverse order."""
    if isinstance(value, dict):
        return {key: reorder(value[key]) for key in reversed(list(value))}
    return value


def test_params_hash_is_stable_under_key_order(provenance, resolved: dict) -> None:
    shuffled = reorder(resolved)
    assert list(shuffled) != list(resolved)
    assert provenance.params_sha256(shuffled) == provenance.params_sha256(resolved)


def test_params_hash_changes_with_lr(provenance, resolved: dict) -> None:
    changed = {**resolved, "lr": resolved["lr"] / 10}
    assert provenance.params_sha256(changed) != provenance.params_sha256(resolved)


def test_params_hash_is_sha256_of_canonical_json(provenance, resolved: dict) -> None:
    canonical = json.dumps(resolved, sort_keys=True, separators=(",", ":"))
    assert provenance.params_sha256(resolved) == hashlib.sha256(canonical.encode()).hexdigest()


def test_params_hash_ignores_the_conf_hash(package_module, provenance, project_root: Path) -> None:
    config = package_module("config.params")
    params = OmegaConf.load(project_root / "params.yaml")
    before = provenance.params_sha256(config.resolved_params(params))
    params.conf_sha256 = "0" * 64
    assert provenance.params_sha256(config.resolved_params(params)) == before


def test_data_tags_read_dvc_lock_and_dvc_files(provenance, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "dvc.lock").write_text(DVC_LOCK)
    (tmp_path / "data" / "raw.dvc").write_text(RAW_DVC)
    tags = provenance.data_tags(tmp_path, ["data/raw", "data/synthetic", "data/processed"])
    assert tags == {
        "data.raw.md5": "a3f1e5c0d2b64b9e8f7a6c5d4e3b2a19.dir",
        "data.raw.path": "data/raw",
        "data.synthetic.md5": "7e9a1e29f5c1b1d7b8c8bd2c1e3a6f01.dir",
        "data.synthetic.path": "data/synthetic",
        "data.processed.md5": "3c59dc048e8850243be8079a5c74d079.dir",
        "data.processed.path": "data/processed",
    }
    inputs = provenance.recorded_inputs(tags)
    assert ("data.raw.md5", "data/raw", tags["data.raw.md5"]) in inputs and len(inputs) == 3


def test_data_tags_prefer_the_producing_stage_over_stale_deps(provenance, tmp_path: Path) -> None:
    # While train runs, its own dvc.lock entry still lists the previous run's data/processed.
    stale_train = "  train:\n    cmd: python -m pkg train\n    deps:\n    - path: data/processed\n"
    stale_train += "      hash: md5\n      md5: 00000000000000000000000000000000.dir\n"
    (tmp_path / "dvc.lock").write_text(DVC_LOCK + stale_train)
    tags = provenance.data_tags(tmp_path, ["data/processed"])
    assert tags["data.processed.md5"] == "3c59dc048e8850243be8079a5c74d079.dir"


def test_data_tags_name_the_path_without_a_record(provenance, user_error, tmp_path: Path) -> None:
    (tmp_path / "dvc.lock").write_text(DVC_LOCK)
    with pytest.raises(user_error) as raised:
        provenance.data_tags(tmp_path, ["data/synthetic", "data/raw"])
    assert "data/raw" in str(raised.value)
    assert "data/synthetic" not in str(raised.value)


def test_data_tags_without_any_dvc_record(provenance, user_error, tmp_path: Path) -> None:
    with pytest.raises(user_error, match="data/processed"):
        provenance.data_tags(tmp_path, ["data/processed"])


@pytest.fixture
def project_copy(project_root: Path, tmp_path: Path) -> Path:
    """What a stage's code identity reads (src/, dvc.yaml, params.yaml, .dvcignore) as a DVC repo."""
    ignore = shutil.ignore_patterns("__pycache__", ".ruff_cache", "*.egg-info", ".pytest_cache")
    shutil.copytree(project_root / "src", tmp_path / "src", ignore=ignore)
    shutil.copytree(project_root / "conf", tmp_path / "conf")
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy2(project_root / name, tmp_path / name)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "--quiet"], cwd=tmp_path, check=True)
    return tmp_path


def code_md5s(provenance, workdir: Path) -> dict[str, str]:
    stages = ("synthesize", "fingerprint", "preprocess", "train", "evaluate")
    return {stage: provenance.code_md5(provenance.stage_code(workdir, stage)) for stage in stages}


def test_a_stages_code_is_its_code_deps_as_dvc_hashes_them(provenance, pkg, project_copy: Path) -> None:
    code = provenance.stage_code(project_copy, "train")
    package = f"src/{pkg.__name__}"
    assert {f"{package}/training", f"{package}/stages/train.py", f"{package}/data"} <= set(code)
    assert not any(dep.startswith(f"{package}/lab") for dep in code)  # the plumbing is no part of it
    cli = project_copy / package / "cli.py"
    assert code[f"{package}/cli.py"] == hashlib.md5(cli.read_bytes()).hexdigest()
    assert code[f"{package}/training"].endswith(".dir")


@pytest.mark.parametrize(
    ("edited", "changed"),
    [
        ("lab/doctor.py", set()),
        ("lab/tracking.py", set()),
        ("evaluation/overlays.py", {"evaluate"}),
        ("stages/evaluate.py", {"evaluate"}),
        ("training/engine.py", {"train", "evaluate"}),
        ("model/networks.py", {"train", "evaluate"}),
        ("data/transforms.py", {"preprocess", "train", "evaluate"}),
        ("data/synthetic.py", {"synthesize", "train", "evaluate"}),
    ],
)
def test_an_edit_changes_the_code_of_exactly_the_stages_that_run_it(
    provenance, pkg, project_copy: Path, edited: str, changed: set[str]
) -> None:
    before = code_md5s(provenance, project_copy)
    path = project_copy / "src" / pkg.__name__ / edited
    path.write_text(path.read_text() + "\n# changed\n")
    after = code_md5s(provenance, project_copy)
    assert {stage for stage in before if before[stage] != after[stage]} == changed


def test_code_identity_ignores_conf_and_bytecode(provenance, pkg, project_copy: Path) -> None:
    before = code_md5s(provenance, project_copy)
    config_yaml = project_copy / "conf" / "config.yaml"
    config_yaml.write_text(config_yaml.read_text().replace("epochs: 20", "epochs: 21", 1))
    cache = project_copy / "src" / pkg.__name__ / "training" / "__pycache__"
    cache.mkdir(exist_ok=True)
    (cache / "stray.cpython-311.pyc").write_bytes(b"\x00")
    assert code_md5s(provenance, project_copy) == before


def git(workdir: Path, *args: str) -> str:
    identity = ["-c", "user.name=Test", "-c", "user.email=test@example.org", "-c", "commit.gpgsign=false"]
    result = subprocess.run(
        ["git", *identity, *args], cwd=workdir, capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


@pytest.fixture
def repo(project_copy: Path, project_root: Path) -> Path:
    shutil.copy2(project_root / "params.yaml", project_copy / "params.yaml")
    git(project_copy, "init", "--quiet")
    git(project_copy, "add", "--all")
    git(project_copy, "commit", "--quiet", "-m", "initial")
    return project_copy


def test_git_commit_is_head_or_the_dvc_baseline(
    provenance, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    assert provenance.git_commit(repo) == git(repo, "rev-parse", "HEAD")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "f" * 40)
    assert provenance.git_commit(repo) == "f" * 40


def test_git_dirty_counts_sources_and_conf_only(provenance, pkg, repo: Path) -> None:
    assert provenance.git_dirty(repo) is False
    # DVC rewrites params.yaml (and dvc.lock) during `dvc exp run`: not dirty.
    (repo / "params.yaml").write_text((repo / "params.yaml").read_text().replace("lr: 0.002", "lr: 0.0001"))
    (repo / "dvc.lock").write_text(DVC_LOCK)
    assert provenance.git_dirty(repo) is False
    (repo / "conf" / "model" / "new.yaml").write_text("net: {}\n")
    assert provenance.git_dirty(repo) is True
    (repo / "conf" / "model" / "new.yaml").unlink()
    (repo / "src" / pkg.__name__ / "model" / "networks.py").write_text("\n", encoding="utf-8")
    assert provenance.git_dirty(repo) is True


def test_git_outside_a_repository_is_a_user_error(
    provenance, user_error, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # no repository above either
    with pytest.raises(user_error, match="git rev-parse HEAD"):
        provenance.git_commit(tmp_path)


def test_environment_names_the_numerical_stack(provenance) -> None:
    import monai
    import torch

    env = provenance.environment()
    assert env["env.torch"] == torch.__version__
    assert env["env.monai"] == monai.__version__
    assert {"env.python", "env.cuda", "env.cudnn", "env.gpu"} <= set(env)
    assert all(isinstance(value, str) and value for value in env.values())


def test_package_list_pins_every_distribution(provenance) -> None:
    import torch

    lines = provenance.package_list().splitlines()
    assert lines == sorted(lines, key=str.lower)
    assert all("==" in line for line in lines)
    assert f"torch=={torch.__version__}" in lines
