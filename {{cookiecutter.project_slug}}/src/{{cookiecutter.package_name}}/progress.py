"""Progress of long loops: a bar with rate and ETA on a terminal, plain periodic lines elsewhere.

CI logs and `dvc queue logs` are files: a redrawn bar would fill them with carriage returns,
so there a line every ``PLAIN_EVERY_SECONDS`` says the same thing.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

Item = TypeVar("Item")
log = logging.getLogger(__name__)

PLAIN_EVERY_SECONDS = 30.0


def on_terminal() -> bool:
    return sys.stderr.isatty()


def track(
    items: Iterable[Item], description: str, total: int | None = None, unit: str = "case", leave: bool = True
) -> Iterator[Item]:
    """``items``, reporting progress as they are consumed."""
    total = total if total is not None else _length(items)
    if on_terminal():
        yield from tqdm(items, desc=description, total=total, unit=unit, leave=leave, dynamic_ncols=True)
        return
    started = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= PLAIN_EVERY_SECONDS:
            last = now
            log.info("%s", _plain_line(description, done, total, now - started, unit))


def logs_above_bars() -> contextlib.AbstractContextManager:
    """Log lines printed above the bars instead of through them (terminal only)."""
    return logging_redirect_tqdm() if on_terminal() else contextlib.nullcontext()


def _plain_line(description: str, done: int, total: int | None, seconds: float, unit: str) -> str:
    rate = done / seconds if seconds > 0 else 0.0
    line = f"{description}: {done}" + (f"/{total}" if total else "") + f" {unit}s, {rate:.2f} {unit}/s"
    if total and rate > 0:
        line += f", ETA {tqdm.format_interval((total - done) / rate)}"
    return line


def _length(items: Iterable) -> int | None:
    try:
        return len(items)  # type: ignore[arg-type]
    except TypeError:
        return None
