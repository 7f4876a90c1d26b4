"""The `_target_` guard: each slot builds only its kind of object, and only commits trust more code.

Every payload here would leave a marker file if it ran; each test checks that none exists.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from hydra_plugins.conf_sha256.hashing import conf_sha256

# (slot, target, extra keys that would make the call do harm): callables inside torch and MONAI
# that run commands, run downloaded code, compile, unpickle or download.
HARMFUL = [
    ("loss", "monai.utils.run_cmd", {"cmd_list": ["touch", "MARKER"]}),
    ("loss", "monai.utils.misc.run_cmd", {"cmd_list": ["touch", "MARKER"]}),
    ("model.net", "torch.hub.load", {"repo_or_dir": "MARKER_DIR", "model": "net", "source": "local"}),
    ("loss", "torch.utils.cpp_extension.load_inline", {"name": "x", "cpp_sources": "int x;"}),
    ("optimizer", "torch.load", {"f": "MARKER"}),
    ("model.net", "monai.bundle.download", {"name": "spleen_ct_segmentation"}),
    ("loss", "monai.apps.download_url", {"url": "http://127.0.0.1:9/x", "filepath": "MARKER"}),
    ("model.net", "os.system", {"command": "touch MARKER"}),
    ("loss", "subprocess.run", {"args": ["touch", "MARKER"]}),
    ("model.net", "builtins.eval", {"source": "open('MARKER', 'w')"}),
]


@pytest.fixture
def workdir(project_root: Path, tmp_path: Path, run) -> Path:
    """A committed git repository with this project's conf/ and params.yaml: what a stage reads."""
    shutil.copytree(project_root / "conf", tmp_path / "conf")
    shutil.copy2(project_root / "params.yaml", tmp_path / "params.yaml")
    commit(tmp_path, run)
    return tmp_path


def commit(workdir: Path, run) -> None:
    run(["git", "init", "--quiet"], workdir)
    run(["git", "add", "--all"], workdir)
    run(["git", "commit", "--quiet", "--allow-empty", "-m", "conf"], workdir)


def edit_params(workdir: Path, **changes: object) -> Path:
    """params.yaml with dotted keys changed, as `-S` or a pulled experiment would leave it."""
    path = workdir / "params.yaml"
    params = OmegaConf.load(path)
    for key, value in changes.items():
        OmegaConf.update(params, key.replace("__", "."), value, force_add=True)
    OmegaConf.save(params, path)
    return path


def payload(slot: str, target: str, extra: dict, marker: Path) -> dict:
    text = json.dumps(extra).replace("MARKER_DIR", str(marker.parent))
    fill = json.loads(text.replace("MARKER", str(marker)))
    return {"_target_": target, **fill}


@pytest.mark.parametrize(("slot", "target", "extra"), HARMFUL, ids=[target for _, target, _ in HARMFUL])
def test_a_harmful_target_is_refused_by_name_naming_its_key(
    config, user_error, workdir: Path, slot: str, target: str, extra: dict
) -> None:
    marker = workdir / "marker"
    path = edit_params(workdir, **{slot.replace(".", "__"): payload(slot, target, extra, marker)})
    with pytest.raises(user_error, match=rf"`{slot}._target_={target}` is refused: it \w+"):
        config.load_params(workdir)
    assert not marker.exists()
    assert path.is_file()


@pytest.mark.parametrize(("slot", "target", "extra"), HARMFUL, ids=[target for _, target, _ in HARMFUL])
def test_instantiate_refuses_what_it_would_call_in_any_slot(
    build, user_error, tmp_path: Path, slot: str, target: str, extra: dict
) -> None:
    marker = tmp_path / "marker"
    node = OmegaConf.create(payload(slot, target, extra, marker))
    with pytest.raises(user_error, match=rf"`{slot}._target_={target}` is refused"):
        build(node, slot)
    assert not marker.exists()


def test_an_alias_that_passes_every_name_check_is_refused_on_what_it_is(
    build, config, user_error, workdir: Path
) -> None:
    # MONAI's unet module imports torch, so this MONAI name reaches torch.hub.load, which runs
    # the hubconf.py of the folder it is given: no list of names can foresee every such path.
    hub = workdir / "hub"
    hub.mkdir()
    (hub / "hubconf.py").write_text("import pathlib\npathlib.Path(__file__).with_name('marker').touch()\n")
    marker = hub / "marker"
    target = "monai.networks.nets.unet.torch.hub.load"
    crafted = {"_target_": target, "repo_or_dir": str(hub), "model": "net", "source": "local"}
    edit_params(workdir, **{"model__net": crafted})
    params = config.load_params(workdir)  # the name alone looks like MONAI's
    refusal = rf"`model.net._target_={target}` is refused \(it resolves to torch.hub.load\): it downloads"
    with pytest.raises(user_error, match=refusal):
        config.check_buildable(params, workdir)
    with pytest.raises(user_error, match=refusal):
        build(params.model.net, "model.net")
    assert not marker.exists()
    # What the guard prevents: Hydra alone (with its own blocklist) builds the node and runs the code.
    from hydra.utils import instantiate

    with pytest.raises(Exception, match="net"):
        instantiate(params.model.net)
    assert marker.exists()


@pytest.mark.parametrize(
    ("slot", "target"),
    [("loss", "torch.optim.SGD"), ("optimizer", "torch.nn.MSELoss"), ("model.net", "monai.data.Dataset")],
)
def test_a_class_of_the_wrong_kind_is_refused_naming_what_the_slot_holds(
    build, user_error, slot: str, target: str
) -> None:
    with pytest.raises(user_error, match=rf"`{slot}._target_={target}` is refused.*: it is not of that kind"):
        build(OmegaConf.create({"_target_": target}), slot)


def test_a_nested_target_is_checked_like_its_slot(build, user_error, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    node = OmegaConf.create(
        {
            "_target_": "torch.nn.Sequential",
            "_args_": [{"_target_": "monai.utils.run_cmd", "cmd_list": ["touch", str(marker)]}],
        }
    )
    with pytest.raises(user_error, match=r"`model.net._args_.0._target_=monai.utils.run_cmd` is refused"):
        build(node, "model.net")
    assert not marker.exists()


def test_a_target_outside_every_slot_is_refused(config, user_error, workdir: Path) -> None:
    edit_params(workdir, data__reader={"_target_": "monai.data.NibabelReader"})
    with pytest.raises(user_error, match=r"`data.reader._target_=monai.data.NibabelReader` is refused: only"):
        config.load_params(workdir)


def test_a_module_outside_torch_and_monai_needs_a_commit(config, user_error, workdir: Path, run) -> None:
    edit_params(workdir, loss={"_target_": "collections.OrderedDict"})
    with pytest.raises(user_error, match=r"`loss._target_=collections.OrderedDict` is refused.*commit"):
        config.load_params(workdir)
    # allowed_targets written into params (by -S, a pulled experiment or a logged run) counts for nothing
    edit_params(workdir, allowed_targets=["collections"])
    with pytest.raises(user_error, match=r"`allowed_targets` holds \['collections'\], which the committed"):
        config.load_params(workdir)


def test_a_committed_allow_list_extends_names_but_not_kinds(config, user_error, workdir: Path, run) -> None:
    conf = workdir / "conf" / "config.yaml"
    conf.write_text(conf.read_text().replace("allowed_targets: []", "allowed_targets: [collections]"))
    commit(workdir, run)
    edit_params(
        workdir,
        allowed_targets=["collections"],
        loss={"_target_": "collections.OrderedDict"},
        conf_sha256=conf_sha256(workdir / "conf"),
    )
    params = config.load_params(workdir)
    with pytest.raises(user_error, match=r"OrderedDict` is refused: it is not of that kind"):
        config.check_buildable(params, workdir)


def test_a_factory_runs_only_when_a_commit_names_it_exactly_and_it_builds_the_slots_kind(
    build, config, user_error, workdir: Path, run, monkeypatch: pytest.MonkeyPatch
) -> None:
    (workdir / "lab_nets.py").write_text(
        "import torch\n\n"
        "def tiny_net(in_channels, out_channels):\n"
        "    return torch.nn.Conv3d(in_channels, out_channels, 1)\n\n"
        "def not_a_net(in_channels, out_channels):\n"
        "    return in_channels\n"
    )
    monkeypatch.syspath_prepend(str(workdir))
    monkeypatch.chdir(workdir)
    net = OmegaConf.create({"_target_": "lab_nets.tiny_net"})
    with pytest.raises(user_error, match=r"lab_nets.tiny_net` is refused: `_target_` may name only"):
        build(net, "model.net", in_channels=1, out_channels=2)
    conf = workdir / "conf" / "config.yaml"
    conf.write_text(conf.read_text().replace("allowed_targets: []", "allowed_targets: [lab_nets]"))
    commit(workdir, run)
    with pytest.raises(user_error, match=r"it is not a class.*named exactly in `allowed_targets`"):
        build(net, "model.net", in_channels=1, out_channels=2)
    conf.write_text(
        conf.read_text().replace("[lab_nets]", "[lab_nets, lab_nets.tiny_net, lab_nets.not_a_net]")
    )
    commit(workdir, run)
    built = build(net, "model.net", in_channels=1, out_channels=2)
    assert isinstance(built, torch.nn.Conv3d)
    wrong = OmegaConf.create({"_target_": "lab_nets.not_a_net"})
    with pytest.raises(user_error, match=r"`model.net` built a int, but `model.net` holds a network"):
        build(wrong, "model.net", in_channels=1, out_channels=2)


def test_the_committed_allow_list_cannot_let_a_harmful_object_in(
    build, config, user_error, workdir: Path, run, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = workdir / "conf" / "config.yaml"
    conf.write_text(conf.read_text().replace("allowed_targets: []", "allowed_targets: [monai.utils.run_cmd]"))
    commit(workdir, run)
    monkeypatch.chdir(workdir)
    marker = workdir / "marker"
    node = OmegaConf.create({"_target_": "monai.utils.run_cmd", "cmd_list": ["touch", str(marker)]})
    with pytest.raises(user_error, match=r"it runs a command"):
        build(node, "loss")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("tracking__experiment_name", "${oc.env:HOME}", r"`tracking.experiment_name` holds an interpol"),
        ("trainer__launcher", "touch MARKER; python", r"`trainer.launcher=touch MARKER; python` is refused"),
        ("trainer__launcher", "python -c 'import os'", r"`trainer.launcher=python -c 'import os'` is"),
        ("data__dir", "/etc", r"`data.dir=/etc` must be a folder inside the project"),
        ("data__dir", "../elsewhere", r"`data.dir=../elsewhere` must be a folder inside the project"),
    ],
)
def test_keys_that_name_code_or_paths_are_checked(
    config, user_error, workdir: Path, key: str, value: str, message: str
) -> None:
    edit_params(workdir, **{key: value})
    with pytest.raises(user_error, match=message):
        config.load_params(workdir)


def test_a_multi_node_torchrun_launcher_is_accepted(config, workdir: Path) -> None:
    launcher = "torchrun --nnodes=2 --nproc-per-node=4 --rdzv-backend=c10d --rdzv-endpoint=node01:29400"
    edit_params(workdir, trainer__launcher=launcher)
    assert config.load_params(workdir).trainer.launcher == launcher


def test_check_params_imports_neither_torch_nor_monai(pkg, workdir: Path) -> None:
    probe = (
        "import sys; from pathlib import Path\n"
        f"from {pkg.__name__}.config.params import load_params\n"
        f"load_params(Path({str(workdir)!r}))\n"
        "print(sorted(m for m in ('torch', 'monai') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
