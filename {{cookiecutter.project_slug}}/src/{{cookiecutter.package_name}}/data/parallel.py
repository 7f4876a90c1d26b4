"""Case-by-case work spread over worker processes (`data.num_workers`)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from ..progress import track

Case = TypeVar("Case")
Result = TypeVar("Result")


def map_cases(
    function: Callable[[Case], Result], cases: Sequence[Case], num_workers: int, description: str
) -> list[Result]:
    """``function`` applied to every case, results in the order of ``cases``, with progress.

    With ``num_workers`` <= 1 it runs in this process. Workers are forked, so that they start
    without re-importing torch and MONAI; each case must be independent of the others, which
    also keeps the results the same for any number of workers.
    """
    if num_workers <= 1 or len(cases) <= 1:
        return [function(case) for case in track(cases, description)]
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(min(num_workers, len(cases)), mp_context=context) as pool:
        return list(track(pool.map(function, cases), description, total=len(cases)))
