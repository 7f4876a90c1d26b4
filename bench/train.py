"""The train stage against a bare MONAI loop, and the pipeline's fixed costs, measured side by side.

Bakes a project, runs its default experiment once (data, fingerprint, preprocess), then,
interleaved and best of --repeats:
- train throughput: the bare loop's seconds (bench/bare_loop.py) over the stage's own
  ``train_seconds`` (same data, network, loss, optimizer, crops, batch, epochs, validation
  cadence and device); target >= 0.97;
- stage start-up: process start to the first batch (the stage's ``startup_seconds``) over a
  bare ``python -c "import torch, monai"``; target <= 1.3;
- tracking overhead: what the stage's loop costs beyond the bare loop, per epoch, as a share
  of the bare epoch; target <= 2 %;
- a no-op `dvc exp run` (nothing changed): seconds, and whether any stage ran; target <= 3 s;
- the default `dvc exp run` (all stages, once): its wall time over its train stage's
  ``train_seconds``, and its test Dice; targets <= 1.6 and <= 50 s at Dice >= 0.95 (CPU);
- each stage's imports (a process that imports the CLI and the stage module) against a bare
  ``import torch, monai``: the stages that need neither should cost a fraction of it.

On a GPU the like-for-like runs turn the fast path off (cases cached in host memory, float16
autocast, as the bare loop does), and one more line gives the stage with its default fast path
(cases cached on the GPU, bfloat16 where supported) against that, with its peak GPU memory and
the GPU utilisation that MLflow's system metrics sampled.

    python bench/train.py                # the template's default experiment, best of 3
    python bench/train.py --quick        # 2 epochs on tiny data, once: checks that it runs (CI)
    python bench/train.py --workdir DIR  # keeps the project in DIR (bench/gpu.py goes on there)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import mlflow
import torch
import yaml
from baking import bake, tool_env

BENCH = Path(__file__).resolve().parent
PACKAGE = "organ_segmentation"
# What the bare loop does on a GPU: cases in host memory, float16 autocast.
LIKE_FOR_LIKE = {"data.cache": "memory", "trainer.amp_dtype": "float16"}
# The module each stage's process imports besides the CLI (a project baked before the
# package was grouped by role has config.py where config/params.py is now).
STAGE_MODULES = {
    "check-params": "config.params|config",
    "synthesize": "stages.synthesize",
    "fingerprint": "stages.fingerprint",
    "preprocess": "stages.preprocess",
    "train": "stages.train",
    "evaluate": "stages.evaluate",
}
QUICK = [
    "epochs=2",
    "synthetic.num_cases=6",
    "synthetic.size=32",
    "patch_size=[32,32,32]",
]


def run(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[str, float]:
    started = time.perf_counter()
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        sys.exit(
            f"`{' '.join(args)}` failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result.stdout + result.stderr, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny data, 2 epochs, once: checks that it runs",
    )
    parser.add_argument(
        "--project", type=Path, help="a freshly baked project to copy instead of baking"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="bake into this folder and keep it (default: a temporary one)",
    )
    parser.add_argument(
        "-S",
        dest="overrides",
        action="append",
        default=[],
        help="extra `dvc exp run -S` override",
    )
    args = parser.parse_args()
    overrides = (QUICK if args.quick else []) + args.overrides
    repeats = 1 if args.quick else args.repeats

    workdir = (
        nullcontext(str(args.workdir))
        if args.workdir
        else tempfile.TemporaryDirectory(prefix="bench-train-")
    )
    with workdir as scratch:
        env = tool_env()
        project = bake(scratch, env, args.project)
        sets = [arg for override in overrides for arg in ("-S", override)]
        _, first_seconds = run(
            [sys.executable, "-m", "dvc", "exp", "run", *sets], project, env
        )
        client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
        params = json.loads((project / "metrics" / "train.json").read_text())
        first_train = client.get_run(params["mlflow_run_id"]).data.metrics[
            "train_seconds"
        ]
        first_dice = json.loads((project / "metrics" / "evaluate.json").read_text())[
            "dice_mean"
        ]
        epochs = int(yaml.safe_load((project / "params.yaml").read_text())["epochs"])
        # The experiment committed, a second `dvc exp run` has nothing to do.
        run(["git", "add", "-A"], project, env)
        run(
            [
                "git",
                "-c",
                "user.name=bench",
                "-c",
                "user.email=bench@example.org",
                "commit",
                "-qm",
                "bench",
            ],
            project,
            env,
        )
        noop, noop_seconds = run(
            [sys.executable, "-m", "dvc", "exp", "run", *sets], project, env
        )

        best = {
            "stage_loop": float("inf"),
            "stage_startup": float("inf"),
            "bare_loop": float("inf"),
            "imports": float("inf"),
        }
        device = "?"
        cuda = torch.cuda.is_available()
        if cuda:
            best |= {"fast_loop": float("inf"), "fast_gpu_mb": 0.0, "fast_util": 0.0}
        for _ in range(repeats):
            stage = train_stage(project, env, client, LIKE_FOR_LIKE if cuda else {})
            if cuda:
                fast = train_stage(project, env, client, {})
                if fast.data.metrics["train_seconds"] < best["fast_loop"]:
                    best["fast_loop"] = fast.data.metrics["train_seconds"]
                    best["fast_gpu_mb"] = fast.data.metrics["peak_gpu_memory_mb"]
                    best["fast_util"] = gpu_utilisation(client, fast.info.run_id)
            metrics = stage.data.metrics
            best["stage_loop"] = min(best["stage_loop"], metrics["train_seconds"])
            best["stage_startup"] = min(
                best["stage_startup"], metrics["startup_seconds"]
            )
            output, _ = run(
                [sys.executable, str(BENCH / "bare_loop.py"), str(project)],
                project,
                env,
            )
            bare = json.loads(output.strip().splitlines()[-1])
            best["bare_loop"], device = (
                min(best["bare_loop"], bare["loop_seconds"]),
                bare["device"],
            )
            _, seconds = run(
                [sys.executable, "-c", "import torch, monai"], project, env
            )
            best["imports"] = min(best["imports"], seconds)
            for stage, candidates in STAGE_MODULES.items():
                source = project / "src" / PACKAGE
                module = next(
                    name
                    for name in candidates.split("|")
                    if (source / f"{name.replace('.', '/')}.py").is_file()
                )
                code = f"import {PACKAGE}.cli, {PACKAGE}.{module}"
                _, seconds = run([sys.executable, "-c", code], project, env)
                best[f"import {stage}"] = min(
                    best.get(f"import {stage}", float("inf")), seconds
                )

    ran = [line for line in noop.splitlines() if line.startswith("Running stage")]
    overhead = (
        (best["stage_loop"] - best["bare_loop"]) / epochs / (best["bare_loop"] / epochs)
    )
    print(
        f"device {device}; {epochs} epochs; patch {params['patch_size']}; best of {repeats}"
    )
    print(
        f"  train throughput   bare loop {best['bare_loop']:.2f} s / stage loop {best['stage_loop']:.2f} s = {best['bare_loop'] / best['stage_loop']:.3f}   (target >= 0.97)"
    )
    print(
        f"  stage start-up     {best['stage_startup']:.2f} s to the first batch / `import torch, monai` {best['imports']:.2f} s = {best['stage_startup'] / best['imports']:.2f}x   (target <= 1.3)"
    )
    print(
        f"  tracking overhead  {100 * overhead:.1f} % of a bare epoch   (target <= 2 %)"
    )
    print(
        f"  no-op dvc exp run  {noop_seconds:.1f} s, stages run: {len(ran)}   (target <= 3 s, none)"
    )
    print(
        f"  default dvc exp run  {first_seconds:.1f} s for {first_train:.1f} s of training = {first_seconds / first_train:.2f}, test Dice {first_dice:.3f}   (targets <= 1.6, <= 50 s at Dice >= 0.95 on a CPU)"
    )
    print(f"  default train run    {params['mlflow_run_id']}")
    imports = ", ".join(
        f"{stage} {best[f'import {stage}']:.2f} s" for stage in STAGE_MODULES
    )
    print(
        f"  stage imports        {imports} / `import torch, monai` {best['imports']:.2f} s"
    )
    if "fast_loop" in best:
        print(
            f"  GPU fast path      stage without {best['stage_loop']:.2f} s / with {best['fast_loop']:.2f} s = {best['stage_loop'] / best['fast_loop']:.2f}x; peak GPU memory {best['fast_gpu_mb']:.0f} MB; GPU utilisation {best['fast_util']:.0f} % (mean of samples)"
        )


def train_stage(
    project: Path, env: dict[str, str], client: mlflow.MlflowClient, overrides: dict
) -> mlflow.entities.Run:
    """The train stage as `dvc exp run` starts it, with ``overrides`` written into params.yaml."""
    path = project / "params.yaml"
    original = path.read_text()
    params = yaml.safe_load(original)
    for key, value in overrides.items():
        group, name = key.split(".")
        params[group][name] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        run([sys.executable, "-m", PACKAGE, "train"], project, env)
    finally:
        path.write_text(original)
    run_id = json.loads((project / "metrics" / "train.json").read_text())[
        "mlflow_run_id"
    ]
    return client.get_run(run_id)


def gpu_utilisation(client: mlflow.MlflowClient, run_id: str) -> float:
    history = client.get_metric_history(run_id, "system/gpu_0_utilization_percentage")
    return sum(m.value for m in history) / len(history) if history else float("nan")


if __name__ == "__main__":
    main()
