"""The lab's plumbing: tracking, provenance, registry, sinks, and the tools (verify, reproduce,
compare, cv, ensemble, sync, search, doctor, server, offline plots).

Stages reach it only through the names below: the seam. Each records what a stage did (a run,
its metrics, its model, a registered version) and hands nothing back that the stage computes
with; ``inputs_sha256`` only decides whether a stopped run is resumed, and a resumed run equals
an uninterrupted one bit for bit. ``search_trial`` can only end training early, inside a
search, and a run so ended is marked pruned: never registered, refused by `reproduce`. So no
edit in here can change a result that is kept, and lab/ is neither a dependency of a stage in
dvc.yaml nor part of a run's code identity (README, Layout).
"""

import importlib

# Each name and the module that defines it, imported on first use, so that the command line
# reaches `lab.commands` without loading MLflow.
_SEAM = {
    "cv_group": "provenance",
    "inputs_sha256": "provenance",
    "log_metrics": "tracking",
    "log_model": "tracking",
    "register": "registry",
    "search_trial": "trial",
    "start_run": "tracking",
    "write_run_metrics": "tracking",
}
__all__ = sorted(_SEAM)


def __getattr__(name: str) -> object:
    if name not in _SEAM:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_SEAM[name]}", __name__), name)
