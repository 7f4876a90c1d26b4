"""Every key of params.yaml: its type, its allowed values or range, and the rules between keys.

Every stage, ``check-params`` included, applies it as it loads params.yaml, so a typo stops
``dvc exp run`` before any stage does its work, with the key, the bad value, what is allowed and
the ``-S`` that fixes it. The stages can then use values without checking them again. Importing
this module loads no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from ..errors import UserError

# A rule returns None for a good value, else what is allowed (for the message).
Rule = Callable[[object], "str | None"]
AXIS_OF = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def integer(low: int | None = None) -> Rule:
    allowed = "an integer" + ("" if low is None else f" >= {low}")
    return lambda value: None if _is_int(value) and (low is None or value >= low) else allowed


def number(
    low: float = -math.inf, high: float = math.inf, low_open: bool = False, high_open: bool = False
) -> Rule:
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"

    def check(value: object) -> str | None:
        if not _is_number(value):
            return "a number"
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        return None if above and below else f"a number in {interval}"

    return check


def boolean(value: object) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def text(value: object) -> str | None:
    return None if isinstance(value, str) and value else "a non-empty string"


def one_of(*choices: str) -> Rule:
    return lambda value: None if value in choices else f"one of {', '.join(choices)}"


def subset_of(*choices: str) -> Rule:
    def check(value: object) -> str | None:
        good = isinstance(value, list) and all(item in choices for item in value)
        return None if good else f"a list of any of {', '.join(choices)} (or [])"

    return check


def names(value: object) -> str | None:
    good = isinstance(value, list) and all(isinstance(item, str) and item for item in value)
    return None if good else "a list of module or object names"


def auto_or_three(kind: str) -> Rule:
    def check(value: object) -> str | None:
        if value == "auto":
            return None
        test = _is_int if kind == "integers" else _is_number
        good = isinstance(value, list) and len(value) == 3 and all(test(edge) and edge > 0 for edge in value)
        return None if good else f"auto or three positive {kind}"

    return check


def radius_range(value: object) -> str | None:
    good = isinstance(value, list) and len(value) == 2 and all(_is_int(edge) for edge in value)
    return None if good and 1 <= value[0] < value[1] else "[min, max]: integers with 1 <= min < max"


def orientation(value: object) -> str | None:
    axes = sorted(AXIS_OF.get(code, -1) for code in value) if isinstance(value, str) else []
    return None if axes == [0, 1, 2] else "three axis codes, one of R/L, A/P and S/I each (e.g. RAS)"


def mapping(value: object) -> str | None:
    return None if isinstance(value, dict) else "a mapping of keys to values"


@dataclass(frozen=True)
class Key:
    rule: Rule
    example: str  # a good value, for the `-S` of the message
    required: bool = True


SCHEMA: dict[str, Key] = {
    "seed": Key(integer(0), "0"),
    "lr": Key(number(0, low_open=True), "1e-3"),
    "epochs": Key(integer(1), "20"),
    "batch_size": Key(integer(1), "2"),
    "patch_size": Key(auto_or_three("integers"), "'[64,64,64]'"),
    "patch_voxels": Key(integer(1), "110592"),
    "allowed_targets": Key(names, "'[]'"),
    "data": Key(mapping, "synthetic"),
    "data.name": Key(text, "raw"),
    "data.dir": Key(text, "data/raw"),
    "data.pixdim": Key(auto_or_three("numbers"), "auto"),
    "data.orientation": Key(orientation, "RAS"),
    "data.normalization": Key(one_of("auto", "ct", "zscore", "window"), "auto"),
    "data.intensity.a_min": Key(number(), "-175.0"),
    "data.intensity.a_max": Key(number(), "250.0"),
    "data.test_fraction": Key(number(0, 1, high_open=True), "0.2"),
    "data.seed": Key(integer(0), "0"),
    "data.folds": Key(integer(2), "5"),
    "data.fold": Key(integer(0), "0"),
    "data.num_workers": Key(integer(0), "2"),
    "data.cache": Key(one_of("auto", "gpu", "memory", "disk"), "auto"),
    "data.cache_budget_mb": Key(number(0), "4096"),
    "model": Key(mapping, "unet"),
    "model.net": Key(mapping, "unet"),
    "optimizer": Key(mapping, "adamw"),
    "loss": Key(mapping, "dice_ce"),
    "trainer": Key(mapping, "auto"),
    "trainer.accelerator": Key(one_of("auto", "cpu", "cuda"), "auto"),
    "trainer.amp": Key(boolean, "true"),
    "trainer.amp_dtype": Key(one_of("auto", "bfloat16", "float16"), "auto"),
    "trainer.channels_last": Key(boolean, "false"),
    "trainer.compile": Key(boolean, "false"),
    "trainer.num_threads": Key(integer(1), "2"),
    "trainer.num_workers": Key(integer(0), "0"),
    "trainer.deterministic": Key(boolean, "true"),
    "trainer.launcher": Key(text, "python"),
    "trainer.nproc_per_node": Key(integer(1), "2", required=False),
    "synthetic": Key(mapping, "'{num_cases: 24}'"),
    "synthetic.seed": Key(integer(0), "0"),
    "synthetic.num_cases": Key(integer(1), "24"),
    "synthetic.size": Key(integer(1), "48"),
    "synthetic.num_classes": Key(integer(1), "1"),
    "synthetic.num_objects": Key(integer(0), "6"),
    "synthetic.radius": Key(radius_range, "'[4,10]'"),
    "synthetic.noise": Key(number(0), "0.3"),
    "train": Key(mapping, "'{val_every: 1}'"),
    "train.val_every": Key(integer(1), "1"),
    "train.samples_per_volume": Key(integer(1), "1"),
    "train.foreground_ratio": Key(number(0, 1), "0.5"),
    "train.resume": Key(one_of("auto", "never"), "auto"),
    "evaluate": Key(mapping, "'{overlap: 0.25}'"),
    "evaluate.overlap": Key(number(0, 1, high_open=True), "0.25"),
    "evaluate.hd_percentile": Key(number(0, 100, low_open=True), "95"),
    "evaluate.overlays": Key(integer(0), "3"),
    "tracking": Key(mapping, "'{experiment_name: my-experiment}'"),
    "tracking.experiment_name": Key(text, "my-experiment"),
    "tracking.log_model": Key(boolean, "true"),
    "tracking.register_model": Key(boolean, "true"),
    "tracking.champion_metric": Key(text, "dice_mean"),
    "tracking.champion_mode": Key(one_of("max", "min"), "max"),
    "tracking.champion_policy": Key(one_of("significant", "best"), "significant"),
    "tracking.sinks": Key(subset_of("tensorboard", "wandb"), "'[tensorboard]'"),
}
# Networks whose input must divide evenly by their total downsampling, and how to read it.
DOWNSAMPLING = {
    "monai.networks.nets.UNet": lambda net: math.prod(_first(stride) for stride in net.get("strides", [])),
    "monai.networks.nets.SegResNet": lambda net: 2 ** (len(net.get("blocks_down", [1, 2, 2, 4])) - 1),
}


def check(params: DictConfig, source: str) -> None:
    """Every key, then the rules between keys; the first problem is raised as a UserError."""
    plain = OmegaConf.to_container(params, resolve=True)
    for key, spec in SCHEMA.items():
        found, value = _lookup(plain, key)
        if not found:
            if spec.required:
                raise UserError(f"{source}: key `{key}` is missing; add it to conf/ (see conf/config.yaml).")
            continue
        allowed = spec.rule(value)
        if allowed:
            raise UserError(
                f"{source}: `{key}={_shown(value)}` is not allowed: it must be {allowed}. "
                f"Fix it with `dvc exp run -S {key}={spec.example}`, or in conf/."
            )
    _check_between_keys(plain, source)


def _check_between_keys(plain: dict, source: str) -> None:
    data, synthetic = plain["data"], plain["synthetic"]
    if data["fold"] >= data["folds"]:
        raise UserError(
            f"{source}: `data.fold={data['fold']}` is not one of the {data['folds']} folds (0 to "
            f"{data['folds'] - 1}, data.folds); e.g. -S data.fold=0."
        )
    if data["normalization"] == "window" and not data["intensity"]["a_min"] < data["intensity"]["a_max"]:
        raise UserError(
            f"{source}: `data.intensity.a_min` ({data['intensity']['a_min']}) must be below "
            f"`data.intensity.a_max` ({data['intensity']['a_max']}) for normalization=window."
        )
    if synthetic["size"] <= 2 * synthetic["radius"][1]:
        raise UserError(
            f"{source}: `synthetic.size` ({synthetic['size']}) must exceed twice the largest radius "
            f"({synthetic['radius'][1]}); e.g. -S synthetic.size={2 * synthetic['radius'][1] + 1}."
        )
    tracking = plain["tracking"]
    if tracking["register_model"] and not tracking["log_model"]:
        raise UserError(
            f"{source}: `tracking.register_model=true` needs a logged model; "
            "-S tracking.log_model=true, or -S tracking.register_model=false."
        )
    factor = DOWNSAMPLING.get(str(plain["model"]["net"].get("_target_")))
    patch = plain["patch_size"]
    if factor and patch != "auto" and any(edge % factor(plain["model"]["net"]) for edge in patch):
        step = factor(plain["model"]["net"])
        fixed = [max(step, round(edge / step) * step) for edge in patch]
        raise UserError(
            f"{source}: `patch_size={patch}` must be divisible by {step}, the network's total "
            f"downsampling (model.net); e.g. -S 'patch_size=[{','.join(map(str, fixed))}]'."
        )


def _first(stride: object) -> int:
    """A stride given per axis counts by its first axis (MONAI accepts an int or a sequence)."""
    return stride[0] if isinstance(stride, list) else int(stride)


def _lookup(tree: dict, key: str) -> tuple[bool, object]:
    node: object = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _shown(value: object) -> str:
    return str(value).replace(" ", "") if isinstance(value, list) else str(value)
