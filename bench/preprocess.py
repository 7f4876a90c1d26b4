"""Fingerprint and preprocess with 1 and with N worker processes, side by side (`data.num_workers`).

Bakes a project, generates synthetic cases of the given size and resamples them to a finer
spacing (the heavy part of real preprocessing), then runs each stage with each worker count,
interleaved, keeping the best of --repeats. Prints the stage times and the speed-up.

    python bench/preprocess.py                  # 16 cases of 128^3, 1 vs 2 workers, best of 3
    python bench/preprocess.py --quick          # a check that it runs (CI)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from baking import bake, tool_env

PACKAGE = "organ_segmentation"
STAGE_SECONDS = re.compile(r" in ([0-9.]+) s with ")


def run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        sys.exit(
            f"`{' '.join(args)}` failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    return result.stdout + result.stderr


def set_workers(project: Path, workers: int) -> None:
    params_file = project / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["data"]["num_workers"] = workers
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=16)
    parser.add_argument(
        "--size", type=int, default=128, help="edge of each synthetic volume, voxels"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="6 cases of 32^3 (the fewest the default 5 folds and a test case take), once: checks that it runs",
    )
    args = parser.parse_args()
    if args.quick:
        args.cases, args.size, args.repeats = 6, 32, 1

    with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as scratch:
        env = tool_env()
        project = bake(scratch, env)
        overrides = [
            f"synthetic.num_cases={args.cases}",
            f"synthetic.size={args.size}",
            "data.pixdim=[0.8,0.8,0.8]",
        ]
        sets = [arg for override in overrides for arg in ("-S", override)]
        run(
            ["dvc", "exp", "run", *sets, "preprocess"], project, env
        )  # data, fingerprint, params.yaml

        best: dict[tuple[str, int], tuple[float, float]] = {}
        for _ in range(args.repeats):
            for workers in (1, args.workers):
                set_workers(project, workers)
                for stage in ("fingerprint", "preprocess"):
                    started = time.perf_counter()
                    output = run([sys.executable, "-m", PACKAGE, stage], project, env)
                    wall = time.perf_counter() - started
                    inside = float(STAGE_SECONDS.search(output).group(1))
                    previous = best.get((stage, workers), (float("inf"), float("inf")))
                    best[(stage, workers)] = min(previous, (inside, wall))

    print(
        f"{args.cases} synthetic cases of {args.size}^3 voxels resampled to 0.8 mm, best of {args.repeats}"
    )
    print(
        f"machine: {os.cpu_count()} CPUs; stage time (process wall time, imports included)"
    )
    for stage in ("fingerprint", "preprocess"):
        one, many = best[(stage, 1)], best[(stage, args.workers)]
        print(
            f"  {stage:<12} 1 worker {one[0]:6.2f} s ({one[1]:5.1f} s)   {args.workers} workers {many[0]:6.2f} s "
            f"({many[1]:5.1f} s)   speed-up {one[0] / max(many[0], 0.01):.2f}x"
        )


if __name__ == "__main__":
    main()
