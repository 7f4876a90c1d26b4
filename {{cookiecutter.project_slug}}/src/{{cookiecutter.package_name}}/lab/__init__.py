"""The lab's plumbing: tracking, provenance, registry, sinks, and the tools (verify, reproduce,
sync, search, doctor, server, offline plots).

Stages reach it only through the names below: the seam. Each records what a stage did (a run,
its metrics, its model, a registered version) and hands nothing back that the stage computes
with; ``inputs_sha256`` only decides whether a stopped run is resumed, and a resumed run equals
an uninterrupted one bit for bit. So no edit in here can change a result, and lab/ is neither a
dependency of a stage in dvc.yaml nor part of a run's code identity (README, Layout).
"""

from .provenance import inputs_sha256
from .registry import register
from .tracking import log_metrics, log_model, start_run, write_run_metrics

__all__ = ["inputs_sha256", "log_metrics", "log_model", "register", "start_run", "write_run_metrics"]
