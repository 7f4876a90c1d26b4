"""The GPU proof: the default path of a baked project, run and measured on a real GPU in one go.

A GPU is lent now and then, for minutes, so this script spends them on measuring. Each step has
a time budget; a step that overruns is stopped and reported, and the rest still run. Steps:

1. `bench/train.py` like for like against the bare MONAI loop: train ratio (>= 0.97), tracking
   overhead per epoch (<= 2 %), start-up against `import torch, monai`, the fast path; it runs
   the default `dvc exp run` (trainer=auto) first, in the project the later steps go on in;
2. that default run: test Dice >= 0.95, the `resolved.*` choices it logged (GPU cache,
   bfloat16), GPU utilisation and peak memory from MLflow's system metrics;
3. the GPU-sized experiment (64 volumes of 96^3, patch 96^3, 100 epochs): Dice >= 0.94, wall
   time, GPU >= 60 % busy while training;
4. `trainer.compile=true` and `trainer.channels_last=true`, each once on that size for a few
   epochs, against the same epochs without;
5. `reproduce` of the default run, and `predict` with the champion.

It ends with one table, printed and written to --out (on the device machine: $OUT).

    python bench/gpu.py --project DIR              # on the GPU (bench/gpu.sh prepares DIR)
    python bench/gpu.py --device cpu --quick       # tiny, on the CPU, all but compile: checks that it runs (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow
from baking import bake, tool_env

BENCH = Path(__file__).resolve().parent
PACKAGE = "organ_segmentation"
# Seconds each step may take on the GPU: 8.5 minutes in all (9 with the install), leaving a
# re-run in the 15 minutes a GPU is lent for.
BUDGETS = {
    "bench": 270,  # the default run included
    "default": 10,
    "gpu-size": 120,
    "compile": 40,
    "channels-last": 30,
    "reproduce": 40,
}
QUICK = [
    "epochs=2",
    "synthetic.num_cases=6",
    "synthetic.size=32",
    "patch_size=[32,32,32]",
]
GPU_SIZE = [
    "synthetic.num_cases=64",
    "synthetic.size=96",
    "patch_size=[96,96,96]",
    "epochs=100",
]
SHORT = "epochs=10"  # the compile and channels-last comparisons: a few epochs each way
UTILISATION, MEMORY = (
    "system/gpu_0_utilization_percentage",
    "system/gpu_0_memory_usage_megabytes",
)


@dataclass
class Row:
    step: str
    status: str  # ok, MISSED (a target not met), FAILED, stopped after N s, skipped
    figures: str
    target: str


class Budget:
    """The seconds a step has left; each command it runs gets what remains."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.seconds = seconds

    def left(self) -> float:
        return max(1.0, self.deadline - time.monotonic())


class Bench:
    def __init__(
        self, project: Path, env: dict[str, str], quick: bool, device: str
    ) -> None:
        self.project, self.env, self.quick, self.device = project, env, quick, device
        self.budget = Budget(0)
        # What bench/train.py printed of the default run: its wall time and its train run.
        self.default_wall: float | None = None
        self.default_run_id: str | None = None

    @property
    def client(self) -> mlflow.MlflowClient:
        """The project's store, opened after the pipeline has made it."""
        return mlflow.MlflowClient(f"sqlite:///{self.project / 'mlflow.db'}")

    def run(self, *args: str, cwd: Path | None = None) -> str:
        """Run a command within the step's budget, in the project (default) or ``cwd``. On
        overrun its whole process group is killed: DVC's stage processes too, which would
        otherwise keep the GPU and DVC's lock."""
        process = subprocess.Popen(
            args, cwd=cwd or self.project, env=self.env, text=True, start_new_session=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            stdout, stderr = process.communicate(timeout=self.budget.left())
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
        if process.returncode != 0:
            raise RuntimeError(
                f"`{' '.join(args)}` exited {process.returncode}: {stderr[-1500:]}"
            )
        return stdout + stderr

    def experiment(self, *overrides: str) -> tuple[float, dict, mlflow.entities.Run]:
        """One `dvc exp run` with ``overrides``: its wall time, test metrics and train run."""
        base = QUICK if self.quick else []
        device = ["trainer.accelerator=cpu"] if self.device == "cpu" else []
        sets = [arg for value in (*base, *device, *overrides) for arg in ("-S", value)]
        started = time.perf_counter()
        self.run(sys.executable, "-m", "dvc", "exp", "run", *sets)
        wall = time.perf_counter() - started
        evaluate = json.loads((self.project / "metrics/evaluate.json").read_text())
        train_id = json.loads((self.project / "metrics/train.json").read_text())[
            "mlflow_run_id"
        ]
        return wall, evaluate, self.client.get_run(train_id)

    def gpu_use(self, run_id: str) -> str:
        """Mean GPU utilisation and peak GPU memory that MLflow's system metrics sampled."""
        busy = [m.value for m in self.client.get_metric_history(run_id, UTILISATION)]
        memory = [m.value for m in self.client.get_metric_history(run_id, MEMORY)]
        if not busy:
            return "no GPU sampled"
        return f"GPU {sum(busy) / len(busy):.0f} % busy (mean), {max(memory, default=0) / 1024:.1f} GiB peak"

    def busy_enough(self, run_id: str, share: float) -> bool:
        busy = [m.value for m in self.client.get_metric_history(run_id, UTILISATION)]
        return self.device == "cpu" or (bool(busy) and sum(busy) / len(busy) >= share)


def default_run(bench: Bench) -> tuple[str, bool]:
    """The default `dvc exp run` that bench/train.py ran first, read from its project."""
    if bench.default_run_id is None:
        raise RuntimeError("the bench step left no default run to read")
    train = bench.client.get_run(bench.default_run_id)
    evaluate = json.loads((bench.project / "metrics/evaluate.json").read_text())
    dice = evaluate["dice_mean"]
    resolved = {
        k.removeprefix("resolved."): v
        for k, v in train.data.params.items()
        if k.startswith("resolved.")
    }
    choices = ", ".join(
        f"{key} {resolved.get(key)}"
        for key in ("cache", "precision", "compile", "channels_last")
    )
    train_seconds = train.data.metrics["train_seconds"]
    figures = (
        f"Dice {dice:.3f}; {bench.default_wall:.0f} s wall for {train_seconds:.0f} s of training; {choices}; "
        f"{bench.gpu_use(train.info.run_id)}"
    )
    on_gpu = bench.device == "cpu" or (
        resolved.get("cache") == "gpu" and resolved.get("precision") == "bfloat16"
    )
    return figures, on_gpu and (bench.quick or dice >= 0.95)


def like_for_like(bench: Bench, pristine: Path) -> tuple[str, bool]:
    """bench/train.py on a copy of the pristine project, kept as the project of the later steps."""
    args = [sys.executable, str(BENCH / "train.py"), "--project", str(pristine)]
    args += ["--workdir", str(bench.project.parent)]
    args += ["--quick"] if bench.quick else ["--repeats", "1"]
    args += ["-S", "trainer.accelerator=cpu"] if bench.device == "cpu" else []
    printed = bench.run(*args, cwd=bench.project.parent)  # the project is not there yet
    wanted = (
        "train throughput",
        "stage start-up",
        "tracking overhead",
        "no-op dvc exp run",
        "default dvc exp run",
        "stage imports",
        "GPU fast path",
    )
    lines = [
        " ".join(line.split())
        for line in printed.splitlines()
        if line.strip().startswith(wanted)
    ]
    flat = " ".join(printed.split())
    ratio = re.search(r"train throughput .*? = ([\d.]+)", printed)
    overhead = re.search(r"tracking overhead (-?[\d.]+) %", flat)
    default = re.search(r"default dvc exp run ([\d.]+) s", flat)
    run_id = re.search(r"default train run (\w+)", flat)
    if not (lines and ratio and overhead and default and run_id):
        raise RuntimeError(f"bench/train.py printed no figures: {printed[-1500:]}")
    bench.default_wall, bench.default_run_id = float(default.group(1)), run_id.group(1)
    met = bench.quick or (
        float(ratio.group(1)) >= 0.97 and float(overhead.group(1)) <= 2.0
    )
    return "; ".join(lines), met


def gpu_sized(bench: Bench) -> tuple[str, bool]:
    wall, evaluate, train = bench.experiment(*([] if bench.quick else GPU_SIZE))
    figures = (
        f"Dice {evaluate['dice_mean']:.3f}; {wall:.0f} s wall, {train.data.metrics['train_seconds']:.0f} s "
        f"of training; {bench.gpu_use(train.info.run_id)}"
    )
    good = bench.quick or evaluate["dice_mean"] >= 0.94
    return figures, good and bench.busy_enough(train.info.run_id, 60)


def option(name: str) -> Callable[[Bench], tuple[str, bool]]:
    """``trainer.<name>=true`` against the same few epochs without it, on the GPU size."""

    def measure(bench: Bench) -> tuple[str, bool]:
        size = [] if bench.quick else [*GPU_SIZE[:3], SHORT]
        _, _, without = bench.experiment(*size)
        _, _, with_it = bench.experiment(*size, f"trainer.{name}=true")
        off, on = (run.data.metrics["train_seconds"] for run in (without, with_it))
        return f"{on:.1f} s with, {off:.1f} s without ({off / on:.2f}x)", True

    return measure


def reproduce_and_predict(bench: Bench) -> tuple[str, bool]:
    bench.experiment()  # the default run again (DVC restores it from its run cache)
    evaluate_id = json.loads((bench.project / "metrics/evaluate.json").read_text())[
        "mlflow_run_id"
    ]
    reproduced = bench.run(sys.executable, "-m", PACKAGE, "reproduce", evaluate_id)
    case = next((bench.project / "data/synthetic/imagesTr").glob("*.nii.gz"))
    output = bench.project.parent / "predictions"
    bench.run(
        sys.executable, "-m", PACKAGE, "predict", str(case), "--output", str(output)
    )
    agreed = "metrics agree" in reproduced
    masks = len(list(output.glob("*.nii.gz")))
    return (
        f"reproduce: {'metrics agree' if agreed else 'metrics differ'}; predict wrote {masks} mask(s)",
        agreed,
    )


STEPS: dict[str, tuple[str, Callable]] = {
    # bench needs the pristine project (main passes it); it leaves the project for the rest.
    "bench": ("train ratio >= 0.97; overhead <= 2 %", None),
    "default": ("Dice >= 0.95; cache gpu, bfloat16", default_run),
    "gpu-size": ("Dice >= 0.94; GPU >= 60 % busy", gpu_sized),
    "compile": ("faster per epoch, or off", option("compile")),
    "channels-last": ("faster per epoch, or off", option("channels_last")),
    "reproduce": ("metrics agree; a mask per input", reproduce_and_predict),
}

# The CPU check runs every step's code but this one: the same `option()` runs for channels-last,
# and inductor's C++ build of the network takes minutes on a CPU. torch.compile on a CPU is
# tested with a cheaper backend (the baked tests/test_acceleration.py).
SKIPPED_ON_CPU = {"compile": "not on a CPU (inductor's C++ build takes minutes there)"}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--project", type=Path, help="a freshly baked project (default: bake one here)"
    )
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument(
        "--quick", action="store_true", help="tiny data, 2 epochs: checks that it runs"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "gpu-summary.md"
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every step's time budget"
    )
    args = parser.parse_args()

    import torch  # after argparse, so that --help answers at once

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("No CUDA device is visible; run with --device cpu for the CPU check.")
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as scratch:
        env = tool_env()
        (Path(scratch) / "pristine").mkdir()
        pristine = bake(str(Path(scratch) / "pristine"), dict(env), args.project)
        # bench/train.py copies the pristine project here and runs the default experiment.
        project = Path(scratch) / "measured" / pristine.name
        project.parent.mkdir()
        env["PYTHONPATH"] = str(project / "src")
        bench = Bench(project, env, args.quick, args.device)
        for name, (target, measure) in STEPS.items():
            seconds = BUDGETS[name] * args.scale * (10 if args.device == "cpu" else 1)
            bench.budget = Budget(seconds)
            begun = time.perf_counter()
            if name in SKIPPED_ON_CPU and args.device == "cpu":
                rows.append(Row(name, "skipped", SKIPPED_ON_CPU[name], target))
                print(f"{name}: skipped: {SKIPPED_ON_CPU[name]}", flush=True)
                continue
            try:
                figures, met = (
                    like_for_like(bench, pristine)
                    if name == "bench"
                    else measure(bench)
                )
                status = "ok" if met else "MISSED"
            except subprocess.TimeoutExpired:
                figures, status = "", f"stopped after {seconds:.0f} s"
            except (RuntimeError, KeyError, ValueError) as error:
                figures, status = str(error).replace("\n", " ")[-600:], "FAILED"
            rows.append(
                Row(
                    name,
                    status,
                    f"{figures} ({time.perf_counter() - begun:.0f} s)",
                    target,
                )
            )
            print(f"{name}: {status}: {rows[-1].figures}", flush=True)
    table = summary(rows, args, torch, time.perf_counter() - started)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    sys.exit(0 if all(row.status in ("ok", "MISSED", "skipped") for row in rows) else 1)


def summary(rows: list[Row], args: argparse.Namespace, torch, seconds: float) -> str:
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU"
    quick = ", --quick" if args.quick else ""
    lines = [
        f"GPU proof, {time.strftime('%Y-%m-%d')}, {device}, torch {torch.__version__}{quick}: {seconds:.0f} s in all",
        "",
        "| step | status | figures | target |",
        "|---|---|---|---|",
        *(
            f"| {row.step} | {row.status} | {row.figures} | {row.target} |"
            for row in rows
        ),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
