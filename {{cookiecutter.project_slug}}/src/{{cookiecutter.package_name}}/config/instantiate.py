"""Build objects from config, behind the `_target_` guard: only the repository's commits name code.

Building a config node calls whatever its ``_target_`` resolves to. A name is not enough to
trust: torch and MONAI themselves hold callables that run commands (``monai.utils.run_cmd``),
run downloaded code (``torch.hub.load``), compile (``torch.utils.cpp_extension.load_inline``),
unpickle (``torch.load``) or download (``monai.apps.download_url``). So each slot accepts only
the kind of object it builds, checked on the resolved object, and what is trusted beyond torch,
MONAI and this package comes from ``allowed_targets`` in the *committed* ``conf/config.yaml``:
a params file, a search space, an MLflow record or a pulled experiment is data (README, Security).

Two depths of check:
- :func:`check_names` reads names only and imports nothing, so ``check-params`` stays fast;
- :func:`check_objects` resolves every target (importing torch) before the first object is built.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from ..errors import UserError
from ..paths import PACKAGE

TRUSTED_MODULES = ("torch", "monai", PACKAGE)
ALLOWED_KEY = "allowed_targets"
CONFIG_FILE = "conf/config.yaml"


@dataclass(frozen=True)
class Slot:
    """A params key that the stages build, and the one kind of object it may build."""

    builds: str  # what the slot holds, for messages
    base: str  # the class every target under the slot must subclass (or a factory must return)


# The only keys whose `_target_` is ever built; a `_target_` anywhere else is refused.
SLOTS = {
    "model.net": Slot("a network (a torch.nn.Module subclass)", "torch.nn.Module"),
    "loss": Slot("a loss (a torch.nn.Module subclass)", "torch.nn.Module"),
    "optimizer": Slot("an optimizer (a torch.optim.Optimizer subclass)", "torch.optim.Optimizer"),
}

# Refused in every slot, whatever allowed_targets says. Matched on the written name and on the
# resolved object's own module and name, so that an alias is caught too
# (monai.utils.run_cmd and monai.auto3dseg.utils.run_cmd are monai.utils.misc.run_cmd).
NEVER = {
    "builtins": "evaluates or imports code",
    "os": "runs commands and changes files",
    "subprocess": "runs commands",
    "pty": "runs commands",
    "shutil": "changes files",
    "importlib": "imports code",
    "runpy": "runs code",
    "code": "runs code",
    "ctypes": "loads native code",
    "pickle": "unpickles, which runs code",
    "marshal": "loads code",
    "urllib": "downloads",
    "http": "downloads",
    "socket": "opens connections",
    "requests": "downloads",
    "torch.hub": "downloads and runs code (hubconf.py)",
    "torch.utils.cpp_extension": "compiles and loads C++",
    "torch.utils.model_zoo": "downloads and unpickles",
    "torch.serialization": "unpickles (torch.load)",
    "torch.load": "unpickles",
    "torch.jit": "loads and compiles code",
    "torch.package": "loads packaged code",
    "torch.compile": "compiles code",
    "torch.ops": "loads native operators",
    "monai.utils.misc.run_cmd": "runs a command",
    "monai.utils.run_cmd": "runs a command",
    "monai.utils.module": "imports code",
    "monai.utils.optional_import": "imports code",
    "monai.bundle": "downloads bundles and runs their config",
    "monai.apps": "downloads data and models",
    "monai.auto3dseg": "runs commands",
    "monai.data.torchscript_utils": "loads TorchScript code",
}


def leaves(tree: object, prefix: str = "") -> Iterator[tuple[str, object]]:
    """Every (dotted key, value) of a leaf in a nested params tree of dicts and lists."""
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            yield from leaves(value, f"{prefix}{key}.")
    elif isinstance(tree, list):
        for index, item in enumerate(tree):
            yield from leaves(item, f"{prefix}{index}.")
    else:
        yield prefix.rstrip("."), tree


def targets(tree: object) -> Iterator[tuple[str, str]]:
    """Every (dotted key of the node, target name) in a nested params tree."""
    for key, value in leaves(tree):
        if key == "_target_" or key.endswith("._target_"):
            yield key.removesuffix("_target_").rstrip("."), str(value)


def committed_allowed_targets(workdir: Path) -> tuple[str, ...]:
    """``allowed_targets`` as HEAD's ``conf/config.yaml`` holds it: what a commit of this repo trusts.

    Uncommitted edits and params files do not count. Outside a git repository nothing is added.
    """
    # `./` makes the path relative to workdir, which is a subfolder in a monorepo.
    shown = subprocess.run(
        ["git", "show", f"HEAD:./{CONFIG_FILE}"], cwd=workdir, capture_output=True, text=True
    )
    if shown.returncode != 0:
        return ()
    committed = yaml.safe_load(shown.stdout) or {}
    return tuple(str(entry) for entry in committed.get(ALLOWED_KEY) or ())


def check_names(tree: Mapping, allowed: tuple[str, ...], source: str) -> None:
    """Refuse, by name alone, what no slot may build; imports nothing.

    ``tree`` is the plain params (or any part of them, keys relative to the root), ``allowed``
    the committed ``allowed_targets``, ``source`` the file named in messages.
    """
    extra = [entry for entry in tree.get(ALLOWED_KEY) or () if str(entry) not in allowed]
    if extra:
        raise UserError(
            f"{source}: `{ALLOWED_KEY}` holds {extra}, which the committed {CONFIG_FILE} does not. "
            f"Only a commit may trust more code: add it to `{ALLOWED_KEY}` in {CONFIG_FILE} and "
            "commit that file."
        )
    for key, target in targets(tree):
        _check_name(key, target, allowed, source)


def _check_name(key: str, target: str, allowed: tuple[str, ...], source: str) -> None:
    """One ``_target_`` at ``key``: in a slot, never a refused object, within trusted modules."""
    slot = slot_of(key)
    if slot is None:
        raise UserError(
            f"{source}: `{key}._target_={target}` is refused: only {', '.join(SLOTS)} are built "
            "from config, so a `_target_` elsewhere would never be used. Remove it."
        )
    reason = _never(target)
    if reason:
        raise UserError(_refusal(source, key, target, target, reason, slot))
    modules = (*TRUSTED_MODULES, *allowed)
    if not any(_within(target, module) for module in modules):
        raise UserError(
            f"{source}: `{key}._target_={target}` is refused: `_target_` may name only objects of "
            f"{', '.join(sorted(modules))}. If you trust that module, add it to `{ALLOWED_KEY}` in "
            f"{CONFIG_FILE} and commit that file."
        )


def check_objects(tree: Mapping, allowed: tuple[str, ...], source: str) -> None:
    """Resolve every ``_target_`` and refuse any that is not what its slot builds.

    A class must subclass the slot's base. Anything else (a function) is accepted only when
    ``allowed`` names it exactly, as a factory the lab committed to; its result is checked by
    :func:`check_built`.
    """
    check_names(tree, allowed, source)
    from hydra.utils import get_object

    for key, target in targets(tree):
        slot = slot_of(key)
        try:
            resolved = get_object(target)
        except Exception as error:  # ImportError, AttributeError, ValueError from Hydra's _locate
            raise UserError(f"{source}: `{key}._target_={target}` does not resolve: {error}.") from error
        identity = f"{getattr(resolved, '__module__', '')}.{getattr(resolved, '__qualname__', '')}"
        reason = _never(identity)
        if reason:
            raise UserError(_refusal(source, key, target, identity, reason, slot))
        if isinstance(resolved, type):
            if not issubclass(resolved, get_object(slot.base)):
                raise UserError(_refusal(source, key, target, identity, "is not of that kind", slot))
        elif target not in allowed:
            raise UserError(
                _refusal(source, key, target, identity, "is not a class", slot)
                + f" A factory function you trust may be named exactly in `{ALLOWED_KEY}` in "
                f"{CONFIG_FILE} (committed)."
            )


def check_built(key: str, built: object) -> None:
    """What a slot's factory (or ``_partial_`` call) returned is of the slot's kind."""
    from hydra.utils import get_object

    slot = slot_of(key)
    if slot is not None and not isinstance(built, get_object(slot.base)):
        raise UserError(f"`{key}` built a {type(built).__qualname__}, but `{key}` holds {slot.builds}.")


def slot_of(key: str) -> Slot | None:
    """The slot that ``key`` (e.g. ``model.net`` or ``model.net.act``) lies in, if any."""
    for name, slot in SLOTS.items():
        if key == name or key.startswith(f"{name}."):
            return slot
    return None


def _never(name: str) -> str | None:
    return next((reason for entry, reason in NEVER.items() if _within(name, entry)), None)


def _within(name: str, module: str) -> bool:
    return name == module or name.startswith(f"{module}.")


def _refusal(source: str, key: str, target: str, identity: str, reason: str, slot: Slot) -> str:
    resolved = "" if identity == target else f" (it resolves to {identity})"
    return (
        f"{source}: `{key}._target_={target}` is refused{resolved}: it {reason}, and `{key}` holds "
        f"{slot.builds}. Set `{key}` to such a class in conf/ or with `dvc exp run -S`."
    )


def instantiate_node(node: DictConfig, key: str, *args: object, **kwargs: object) -> object:
    """Build the object that config ``key`` describes (``_target_``; ``_partial_`` is called).

    Every object built from config is built here, after the `_target_` guard above
    has checked each target in the node against its slot, and its result is checked again.
    A wrong class or argument, from conf/ or from `-S`, becomes an error naming the key.
    """
    from hydra.utils import instantiate

    tree: object = OmegaConf.to_container(node)
    for part in reversed(key.split(".")):
        tree = {part: tree}
    check_objects(tree, committed_allowed_targets(Path.cwd()), f"building `{key}`")
    try:
        if node.get("_partial_", False):
            built = instantiate(node)(*args, **kwargs)
        else:
            built = instantiate(node, *args, **kwargs)
    except Exception as error:  # Hydra and the constructors raise many types
        raise UserError(
            f"Could not build `{key}` ({node.get('_target_')}): {error}. "
            f"Fix `{key}` in conf/ or with `dvc exp run -S {key}...=...`."
        ) from error
    check_built(key, built)
    return built
