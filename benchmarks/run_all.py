"""Run every benchmark, one after another, and print their tables (`make bench`).

By default each runs with `--quick` (small sizes; a few minutes in all on a 2-core CPU); `--full`
runs them at the sizes benchmarks/README.md reports. Each runs in its own process, so one's thread
setting or imports cannot change another's timings.

    .venv/bin/python benchmarks/run_all.py [--full] [--only training sampling]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Cheapest first, so a broken setup shows early.
BENCHMARKS = ("sampler", "training", "evaluation", "online_collection", "sampling")
# Scripts run_all leaves out, and why (each bench_*.py is in one of the two lists; a test checks it).
NOT_RUN = {
    "policy_quality": "trains and evaluates full runs for minutes per seed; run it by hand",
    "fast_step": "times against a checkout of an older commit (--baseline-root) and compiles for minutes; run it by hand",
    "gpu_cells": "needs a CUDA GPU; run it by hand there",
}


def script(name: str) -> Path:
    return HERE / f"bench_{name}.py"


def run(name: str, full: bool) -> int:
    command = [sys.executable, str(script(name))] + ([] if full else ["--quick"])
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    print(f"\n=== {script(name).name} {'' if full else '--quick'}".rstrip(), flush=True)
    begin = time.perf_counter()
    returncode = subprocess.run(command, cwd=ROOT, env=env).returncode
    print(f"=== {script(name).name}: {'ok' if returncode == 0 else f'FAILED (exit {returncode})'} "
          f"in {time.perf_counter() - begin:.0f} s", flush=True)
    return returncode


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="full sizes instead of --quick")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS), help="run only these")
    args = parser.parse_args(argv)
    failed = [name for name in BENCHMARKS if name in args.only and run(name, args.full) != 0]
    for name, reason in NOT_RUN.items():
        print(f"\n(not run: {script(name).name}: {reason})")
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
