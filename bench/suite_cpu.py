"""Where the test suite's CPU goes: `bash .ci/test` with every Python process of the venv
accounted, then the CPU seconds by kind of process and by test.

The suite is CPU-bound on a 2-core machine, so its wall time is its CPU time over the cores; this
says which processes that CPU is spent in (each stage of each `dvc exp run`, each DVC and
project command) and under which test. A `.pth` file in the venv's site-packages, there only
while the suite runs, makes each of the venv's Python processes append one line at exit: its
command, its CPU seconds, and the test it ran under (pytest's ``PYTEST_CURRENT_TEST``,
which subprocesses inherit; a process of the baked suite names the baked test).

Not counted: processes of other interpreters (the layered venvs of the README install and the
demo's), processes that are not Python (git, PostgreSQL), and processes killed by a signal.

    python bench/suite_cpu.py                     # the whole suite, as CI runs it
    python bench/suite_cpu.py -m "not slow"       # the quick checks; arguments go to pytest
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parents[1]
HOOK_NAME = "_suite_cpu_account"
# Runs in every process of the venv, so it imports only the standard library and never raises.
HOOK = """
import atexit, json, os, resource, sys


def _account():
    log = os.environ.get("SUITE_CPU_LOG")
    if not log:
        return
    try:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        line = json.dumps({
            "argv": getattr(sys, "orig_argv", sys.argv)[:8],
            "test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" (")[0],
            "cpu": usage.ru_utime + usage.ru_stime,
        })
        # One write of one line with O_APPEND: lines of processes that exit together stay whole.
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, (line + "\\n").encode())
        os.close(fd)
    except Exception:
        pass


atexit.register(_account)
"""


def kind(argv: list[str]) -> str:
    """A process's kind: the module or script and its command (`organ_segmentation train`,
    `dvc exp run`); ``python -c`` for code given inline (pytest-xdist's workers)."""
    args = argv[1:]
    if "-c" in args:
        return "python -c"
    if "-m" in args[:-1]:
        name, *rest = args[args.index("-m") + 1 :]
    else:
        start = next(
            (index for index, arg in enumerate(args) if not arg.startswith("-")), None
        )
        if start is None:
            return "python"
        script = Path(args[start])
        if script.parent == Path(tempfile.gettempdir()):
            return "a script in the temporary folder (cookiecutter's hooks)"
        name, rest = script.name, args[start + 1 :]
    # Its command: the first words that are names (`exp run`), not options, paths or values.
    words = [
        word
        for word in rest
        if not word.startswith("-") and word.replace("-", "_").isidentifier()
    ]
    return " ".join([name, *words[: 2 if name == "dvc" else 1]])


def report(lines: list[dict], cores: int) -> str:
    by_kind: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    by_test: dict[str, list] = collections.defaultdict(
        lambda: [0.0, collections.Counter()]
    )
    for line in lines:
        name = kind(line["argv"])
        by_kind[name][0] += 1
        by_kind[name][1] += line["cpu"]
        test = by_test[line["test"] or "(outside any test)"]
        test[0] += line["cpu"]
        test[1][name] += 1
    total = sum(cpu for _, cpu in by_kind.values())
    out = [
        f"{len(lines)} processes, {total:.0f} CPU s ({total / cores:.0f} s on {cores} cores)",
        "",
        "| process | count | CPU s | CPU s each | share |",
        "|---|---|---|---|---|",
    ]
    for name, (count, cpu) in sorted(by_kind.items(), key=lambda item: -item[1][1])[
        :25
    ]:
        out.append(
            f"| {name} | {count:.0f} | {cpu:.0f} | {cpu / count:.1f} | {cpu / total:.0%} |"
        )
    out += [
        "",
        "| test | CPU s | processes | stage runs of train |",
        "|---|---|---|---|",
    ]
    for test, (cpu, kinds) in sorted(by_test.items(), key=lambda item: -item[1][0])[
        :25
    ]:
        trains = sum(count for name, count in kinds.items() if name.endswith(" train"))
        out.append(f"| {test} | {cpu:.0f} | {sum(kinds.values())} | {trains} |")
    return "\n".join(out)


def install(hook: Path, pth: Path) -> None:
    hook.write_text(HOOK)
    # Written aside and renamed: a process starting now reads no .pth or a whole one. One that
    # starts as the run ends may read the .pth after the module is gone, hence the try (site.py
    # runs only .pth lines that start with `import`, hence `import sys;`).
    partial = pth.with_suffix(".partial")
    partial.write_text(
        f'import sys; exec("try: import {HOOK_NAME}\\nexcept ImportError: pass")\n'
    )
    partial.replace(pth)


def main() -> None:
    venv = Path(os.environ.get("VENV", TEMPLATE / ".venv")).resolve()
    if Path(sys.prefix).resolve() != venv:
        sys.exit(
            f"Run this with the suite's venv, {venv}: {venv}/bin/python bench/suite_cpu.py"
        )
    site_packages = Path(sysconfig.get_paths()["purelib"])
    hook, pth = site_packages / f"{HOOK_NAME}.py", site_packages / f"{HOOK_NAME}.pth"
    with tempfile.TemporaryDirectory(prefix="suite-cpu-") as scratch:
        log = Path(scratch) / "processes.jsonl"
        env = {**os.environ, "SUITE_CPU_LOG": str(log)}
        # A run inside a run (this script's own test, under this script) finds the hook there:
        # it leaves it to the outer run, which is still counting.
        installs = not pth.exists()
        if installs:
            install(hook, pth)
        try:
            result = subprocess.run(
                ["bash", TEMPLATE / ".ci" / "test", *sys.argv[1:]], env=env, check=False
            )
        finally:
            if installs:
                pth.unlink(missing_ok=True)
                hook.unlink(missing_ok=True)
        lines = (
            [json.loads(line) for line in log.read_text().splitlines()]
            if log.exists()
            else []
        )
    print(report(lines, os.cpu_count() or 1))
    sys.exit(result.returncode)


if __name__ == "__main__":
    main()
