"""Stage fingerprint: summarise the selected dataset; preprocess derives its `auto` choices from it."""

from __future__ import annotations

import json
import logging
import time
from functools import partial
from pathlib import Path

from omegaconf import DictConfig

from ..data.fingerprint import fingerprint_case, summarise
from ..data.msd import read_msd
from ..data.parallel import map_cases
from ..paths import FINGERPRINT, write_atomically

log = logging.getLogger(__name__)


def run(params: DictConfig, workdir: Path) -> None:
    started = time.perf_counter()
    dataset = read_msd(workdir / params.data.dir)
    cases = map_cases(
        partial(fingerprint_case, dataset=dataset, seed=params.data.seed),
        dataset.cases,
        params.data.num_workers,
        "fingerprint",
    )
    fingerprint = summarise(dataset, cases)
    summary = json.dumps(fingerprint, indent=2) + "\n"
    write_atomically(workdir / FINGERPRINT, lambda temporary: temporary.write_text(summary))
    log.info(
        "Fingerprinted %d cases of %s in %.2f s with %d worker(s): modality %s (data.dir, data.num_workers)",
        len(cases),
        params.data.dir,
        time.perf_counter() - started,
        params.data.num_workers,
        ", ".join(fingerprint["modality"]),
    )
