"""Bake every option combination and check the files; check the hooks' refusals and re-runs."""

from __future__ import annotations

import importlib.util
import itertools
import re
import sys
import types
from pathlib import Path

import pytest
import yaml
from conftest import (
    DEFAULT_PACKAGE,
    DEFAULT_SLUG,
    OPTIONS,
    TEMPLATE_PROJECT,
    assert_one_clean_commit,
    git,
    project_env,
    run,
)
from cookiecutter.exceptions import FailedHookException
from dvc.config import Config

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

CHOICES = {name: value for name, value in OPTIONS.items() if isinstance(value, list)}
COMBINATIONS = [
    dict(zip(CHOICES, values, strict=True))
    for values in itertools.product(*CHOICES.values())
]
TEMPLATE_SYNTAX = re.compile(rb"\{\{|\{%|\{#")
# GitHub Actions expressions (`${{ matrix.x }}`) are meant to stay in workflow files.
ACTIONS_EXPRESSION = re.compile(rb"\$\{\{")
REMOTE_URLS = {"s3": "s3://my-bucket/{slug}", "local": "/srv/dvc-storage/{slug}"}
LICENSE_HEADINGS = {
    "MIT": "MIT License",
    "BSD-3-Clause": "BSD 3-Clause License",
    "Apache-2.0": "Licensed under the Apache License, Version 2.0",
}
COMPOSE = (
    "import sys; from dvc.utils.hydra import compose_and_dump; "
    "compose_and_dump(sys.argv[1], sys.argv[2], None, 'config', sys.argv[3], [])"
)


def load_hashing(project: Path) -> types.ModuleType:
    """The baked project's hashing module, loaded by path without writing bytecode into it."""
    path = project / "src" / "hydra_plugins" / "conf_sha256" / "hashing.py"
    spec = importlib.util.spec_from_file_location("baked_conf_hashing", path)
    module = importlib.util.module_from_spec(spec)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "dont_write_bytecode", True)
        spec.loader.exec_module(module)
    return module


# Not in the template tree: the post-generation hook writes the plots page (offline_plots.py).
HOOK_WRITTEN = {".dvc/plots", ".dvc/plots/offline.html"}


def expected_paths(package: str, license_: str, ci_workflow: str) -> set[str]:
    """The template tree with its path placeholders rendered, minus what the options drop,
    plus what the hook writes."""
    paths = set(HOOK_WRITTEN)
    for path in TEMPLATE_PROJECT.rglob("*"):
        relative = path.relative_to(TEMPLATE_PROJECT).as_posix()
        relative = relative.replace("{{cookiecutter.package_name}}", package)
        if license_ == "none" and relative == "LICENSE":
            continue
        if ci_workflow == "none" and (
            relative == ".github" or relative.startswith(".github/")
        ):
            continue
        paths.add(relative)
    return paths


def baked_paths(project: Path) -> set[str]:
    paths = set()
    for path in project.rglob("*"):
        relative = path.relative_to(project)
        if relative.parts[0] != ".git":
            paths.add(relative.as_posix())
    return paths


def conf_hash(project: Path) -> str:
    return load_hashing(project).conf_sha256(project / "conf")


def params_conf_hash(project: Path) -> str:
    match = re.search(
        r"(?m)^conf_sha256: (\S+)$", (project / "params.yaml").read_text()
    )
    assert match, "params.yaml has no conf_sha256 line"
    return match.group(1)


def assert_no_template_syntax(project: Path) -> None:
    leftovers = []
    for relative in git(project, "ls-files").splitlines():
        content = (project / relative).read_bytes()
        if relative.startswith(".github/workflows/"):
            content = ACTIONS_EXPRESSION.sub(b"", content)
        if TEMPLATE_SYNTAX.search(content):
            lines = [
                line for line in content.splitlines() if TEMPLATE_SYNTAX.search(line)
            ]
            leftovers.append(f"{relative}: {lines[:3]}")
    assert not leftovers, "unrendered Jinja in the baked project:\n" + "\n".join(
        leftovers
    )


def assert_data_remote(project: Path, data_remote: str) -> None:
    config = Config(dvc_dir=str(project / ".dvc"), validate=True).load_one("repo")
    if data_remote == "none":
        assert config["remote"] == {}
        assert "remote" not in config["core"]
    else:
        url = REMOTE_URLS[data_remote].format(slug=DEFAULT_SLUG)
        assert config["remote"] == {"storage": {"url": url}}
        assert config["core"]["remote"] == "storage"
    assert config["hydra"] == {"enabled": "true", "plugins_path": "src"}


def assert_pyproject(project: Path, answers: dict[str, str]) -> None:
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    assert pyproject["name"] == DEFAULT_SLUG
    assert pyproject["requires-python"] == f">={answers['python_version']}"
    dvc_requirements = [
        req for req in pyproject["dependencies"] if re.match(r"dvc\b", req)
    ]
    expected = "dvc[s3]" if answers["data_remote"] == "s3" else "dvc>="
    assert len(dvc_requirements) == 1 and dvc_requirements[0].startswith(expected), (
        dvc_requirements
    )
    if answers["license"] == "none":
        assert "license" not in pyproject
    else:
        assert pyproject["license"] == answers["license"]
    assert pyproject["scripts"] == {DEFAULT_SLUG: f"{DEFAULT_PACKAGE}.cli:main"}


def assert_license(project: Path, license_: str) -> None:
    if license_ == "none":
        assert not (project / "LICENSE").exists()
        return
    text = (project / "LICENSE").read_text()
    assert LICENSE_HEADINGS[license_] in text
    assert OPTIONS["author_name"] in text
    others = [heading for name, heading in LICENSE_HEADINGS.items() if name != license_]
    assert not any(heading in text for heading in others), (
        f"LICENSE mixes licenses:\n{text[:300]}"
    )


@pytest.mark.parametrize(
    "answers",
    COMBINATIONS,
    ids=["-".join(combination.values()) for combination in COMBINATIONS],
)
def test_every_combination_bakes_exactly_the_template(
    bake, tmp_path: Path, answers: dict[str, str]
) -> None:
    project = bake(tmp_path, **answers)

    assert project == tmp_path / DEFAULT_SLUG
    expected = expected_paths(
        DEFAULT_PACKAGE, answers["license"], answers["ci_workflow"]
    )
    actual = baked_paths(project)
    assert actual == expected, (
        f"unexpected: {sorted(actual - expected)}; missing: {sorted(expected - actual)}"
    )
    assert_one_clean_commit(project)
    assert git(project, "branch", "--show-current") == "main"
    # No git identity on this machine: the hook commits as the template's author.
    author = f"{OPTIONS['author_name']} <{OPTIONS['author_email']}>"
    assert git(project, "log", "-1", "--format=%an <%ae>") == author
    assert_no_template_syntax(project)
    assert_data_remote(project, answers["data_remote"])
    assert_pyproject(project, answers)
    assert_license(project, answers["license"])
    if answers["ci_workflow"] == "github":
        assert_workflow(project, answers["python_version"])
    assert params_conf_hash(project) == conf_hash(project)


def assert_workflow(project: Path, python_version: str) -> None:
    """The workflow parses, and has the job and steps that the baked README promises."""
    workflow = yaml.safe_load(
        (project / ".github" / "workflows" / "ci.yml").read_text()
    )
    readme = (project / "README.md").read_text()
    assert "runs one job, `test`, on the CPU: ruff and the fast tier on every" in readme
    assert list(workflow["jobs"]) == ["test"]
    steps = {step.get("name"): step for step in workflow["jobs"]["test"]["steps"]}
    assert {"Lint", "Fast tier", "Full tier"} <= set(steps)
    assert steps["Fast tier"]["run"].splitlines()[-1] == "python -m pytest -v"
    full = steps["Full tier"]
    assert full["run"] == "python -m pytest -v -m slow" and full["if"] == "github.event_name != 'push'"
    setup = next(
        step
        for step in steps.values()
        if step.get("uses", "").startswith("actions/setup-python")
    )
    assert setup["with"]["python-version"] == python_version
    # PyYAML reads the bare key `on` as True.
    triggers = workflow[True]
    assert set(triggers) == {"push", "pull_request", "schedule", "workflow_dispatch"}
    assert triggers["pull_request"] == {"branches": ["main"]}  # the branch the bake creates


@pytest.mark.parametrize(
    ("answers", "slug", "package"),
    [
        ({}, DEFAULT_SLUG, DEFAULT_PACKAGE),
        ({"project_name": "Liver Tumour_Seg"}, "liver-tumour-seg", "liver_tumour_seg"),
        (
            {"project_slug": "kidney-ct", "package_name": "kidneys"},
            "kidney-ct",
            "kidneys",
        ),
    ],
    ids=["default", "from-project-name", "explicit-names"],
)
def test_params_yaml_is_what_dvc_composes(
    bake, tmp_path: Path, answers: dict[str, str], slug: str, package: str
) -> None:
    project = bake(tmp_path / "out", **answers)
    assert project.name == slug
    assert (project / "src" / package / "cli.py").is_file()
    assert f"python -m {package} evaluate" in (project / "dvc.yaml").read_text()

    composed = tmp_path / "composed.yaml"
    env = project_env(project)
    # As DVC runs it: the plugin is found through plugins_path alone.
    env.pop("PYTHONPATH")
    run(
        [sys.executable, "-c", COMPOSE, composed, project / "conf", project / "src"],
        cwd=project,
        env=env,
    )
    assert composed.read_text() == (project / "params.yaml").read_text()
    assert f"experiment_name: {slug}\n" in composed.read_text()


def test_composed_conf_hash_is_of_this_projects_conf(bake, tmp_path: Path) -> None:
    """Two projects in one environment: the other one's ``src`` comes first on ``sys.path``.

    That is the case for any project after another was installed with `pip install -e`,
    since DVC appends ``plugins_path`` to the end of ``sys.path``.
    """
    first = bake(tmp_path / "first", project_name="Liver Seg")
    second = bake(tmp_path / "second", project_name="Kidney Seg")
    assert conf_hash(first) != conf_hash(second)

    composed = tmp_path / "composed.yaml"
    env = project_env(second)
    env["PYTHONPATH"] = str(first / "src")
    run(
        [sys.executable, "-c", COMPOSE, composed, second / "conf", second / "src"],
        cwd=second,
        env=env,
    )
    assert composed.read_text() == (second / "params.yaml").read_text(), (
        "the conf_sha256 resolver hashed another project's conf/"
    )


@pytest.mark.parametrize(
    ("answers", "allowed"),
    [
        ({"project_slug": "Bad Slug!"}, "use lowercase letters, digits and single '-'"),
        ({"package_name": "1bad"}, "starting with a letter"),
        ({"package_name": "class"}, "not a Python keyword"),
        ({"package_name": "torch"}, "would shadow the module"),
        ({"package_name": "json"}, "would shadow the module"),
        ({"data_remote": "s3", "data_remote_url": "/srv/dvc"}, "must start with s3://"),
        (
            {"data_remote": "local", "data_remote_url": " "},
            "give the folder DVC should push data to",
        ),
    ],
    ids=[
        "slug",
        "package-digit",
        "package-keyword",
        "package-torch",
        "package-stdlib",
        "s3-url",
        "local-url",
    ],
)
def test_invalid_answers_are_refused_before_anything_is_written(
    bake,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    answers: dict[str, str],
    allowed: str,
) -> None:
    output_dir = tmp_path / "out"
    with pytest.raises(FailedHookException):
        bake(output_dir, **answers)
    assert list(output_dir.iterdir()) == []
    stderr = capfd.readouterr().err
    assert "ERROR:" in stderr and allowed in stderr, stderr


def test_rebake_over_a_baked_project_keeps_one_clean_commit(
    bake, tmp_path: Path
) -> None:
    answers = {"license": "none", "ci_workflow": "none", "data_remote": "local"}
    project = bake(tmp_path, **answers)
    first_commit = git(project, "rev-parse", "HEAD")

    again = bake(tmp_path, overwrite_if_exists=True, **answers)

    assert again == project
    assert git(project, "rev-parse", "HEAD") == first_commit
    assert_one_clean_commit(project)
    assert baked_paths(project) == expected_paths(DEFAULT_PACKAGE, "none", "none")


def test_cookiecutter_cli_reports_the_refusal(
    tmp_path: Path, cookiecutter_config: Path
) -> None:
    """The command users type: a non-zero exit, the rule on stderr, no folder left behind.

    (cookiecutter itself logs a traceback of its FailedHookException; that is not ours.)
    """
    result = run(
        [
            Path(sys.executable).parent / "cookiecutter",
            "--no-input",
            "--config-file",
            cookiecutter_config,
            "--output-dir",
            tmp_path,
            TEMPLATE_PROJECT.parent,
            "package_name=1bad",
        ],
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode != 0
    assert "package_name '1bad' is invalid" in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_matrix_knows_every_choice() -> None:
    """A new choice option needs its own rule in expected_paths and its own checks above."""
    assert set(CHOICES) == {"python_version", "data_remote", "ci_workflow", "license"}
