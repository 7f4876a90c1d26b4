"""A sweep through DVC's queue with two workers against one worker, measured side by side.

Bakes a project and commits the results of its first experiment, so that every queued
experiment restores the unchanged stages (data, fingerprint, preprocess) from DVC's run-cache
and trains and evaluates for itself. Then queues --experiments learning rates and times
`dvc queue start -j 2` until the queue is empty; then queues as many others (new values, so
that nothing comes from the run-cache) and times `dvc queue start -j 1`. Prints the wall
times and the speed-up.

    python bench/sweep.py                # 4 experiments per side, on the tiny config
    python bench/sweep.py --quick        # 1 per side, no first experiment: checks that it runs (CI)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from baking import bake, tool_env

# Small enough that several experiments take minutes on a laptop CPU.
TINY = [
    "epochs=2",
    "synthetic.num_cases=6",
    "synthetic.size=32",
    "patch_size=[32,32,32]",
]
POLL_SECONDS = 2


def dvc(args: list[str], project: Path, env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        sys.exit(
            f"`dvc {' '.join(args)}` failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result.stdout


def sweep(project: Path, env: dict[str, str], rates: list[float], jobs: int) -> float:
    """Queue one experiment per rate, start ``jobs`` workers, and wait until all have run."""
    for rate in rates:
        dvc(["exp", "run", "--queue", *sets(TINY), "-S", f"lr={rate}"], project, env)
    started = time.perf_counter()
    dvc(["queue", "start", "-j", str(jobs)], project, env)
    while True:
        rows = [
            line.split()
            for line in dvc(["queue", "status"], project, env).splitlines()[1:]
        ]
        if not any(status in row for row in rows for status in ("Queued", "Running")):
            break
        time.sleep(POLL_SECONDS)
    seconds = time.perf_counter() - started
    failed = [row for row in rows if "Failed" in row]
    if failed:
        sys.exit(f"queued experiments failed: {failed}; see `dvc queue logs <name>`")
    return seconds


def sets(overrides: list[str]) -> list[str]:
    return [arg for override in overrides for arg in ("-S", override)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--experiments", type=int, default=4, help="experiments per side"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 experiment per side: checks that it runs",
    )
    args = parser.parse_args()
    count = 1 if args.quick else args.experiments

    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as scratch:
        env = tool_env()
        project = bake(scratch, env)
        if not args.quick:  # a smoke test need not make the two sides comparable
            dvc(["exp", "run", *sets(TINY)], project, env)
            identity = ["-c", "user.name=bench", "-c", "user.email=bench@example.org"]
            for command in (
                ["add", "-A"],
                [*identity, "commit", "-qm", "first experiment"],
            ):
                subprocess.run(["git", *command], cwd=project, env=env, check=True)
        parallel = sweep(project, env, [1e-3 * (k + 1) for k in range(count)], jobs=2)
        serial = sweep(project, env, [1e-4 * (k + 1) for k in range(count)], jobs=1)

    print(f"sweep of {count} tiny experiments through `dvc queue start`")
    caveat = (
        " (--quick: the -j 1 side reuses the first side's data stages)"
        if args.quick
        else ""
    )
    print(
        f"  -j 2 {parallel:.1f} s / -j 1 {serial:.1f} s: speed-up {serial / parallel:.2f}x{caveat}"
    )


if __name__ == "__main__":
    main()
