"""Training steps/s of the default cell on one GPU with 1, 2 and 4 cells sharing it (what `jobs_per_gpu` buys).

Each cell is one worker process (_step_worker.py: the default DiffusionRL cell, schema defaults, on
`--device`). For every cell count k, k workers are built and warmed up, then all k are asked for
`--steps` steps at the same moment; per-cell and total steps/s are medians over `--repeats`. The
first table row per mode (k = 1) is the baseline of the "total vs 1 cell" column. Modes: `eager`,
`per-step-sync` (every loss term read back each step, as before the device-side sums) and `compiled`.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_gpu_cells.py --data-dir data [--cells 1 2 4] \
        [--modes eager per-step-sync compiled]

Needs a CUDA build of torch and a GPU; paste its table into benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

from _common import ROOT, add_common_arguments, ensure_dataset, median, print_table

WORKER = Path(__file__).resolve().parent / "_step_worker.py"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, repeats=5)
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--cells", type=int, nargs="+", default=[1, 2, 4], help="cells sharing the GPU")
    parser.add_argument("--modes", nargs="+", default=["eager", "per-step-sync", "compiled"],
                        choices=["eager", "per-step-sync", "compiled"])
    parser.add_argument("--steps", type=int, default=None, help="timed steps per repeat (default 200, --quick 5)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 20, --quick 2)")
    args = parser.parse_args(argv)
    args.steps = args.steps or (5 if args.quick else 200)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.quick else 20)
    return args


def start_worker(args, mode: str, data_dir: Path) -> subprocess.Popen:
    command = [sys.executable, str(WORKER), "--root", str(ROOT), "--data-dir", str(data_dir), "--mode", mode,
               "--device", args.device, "--threads", str(args.threads), "--warmup", str(args.warmup),
               "--set", f"dataset_steps={args.dataset_steps}", f"dataset={args.dataset}", *args.overrides]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


def read(process: subprocess.Popen) -> dict:
    line = process.stdout.readline()
    if not line:
        raise SystemExit(f"a benchmark worker stopped (exit code {process.wait()}); see its error above.")
    return json.loads(line)


def measure(args, mode: str, cells: int, data_dir: Path) -> dict:
    workers = [start_worker(args, mode, data_dir) for _ in range(cells)]
    try:
        for worker in workers:
            read(worker)  # built and warmed up
        per_cell, total = [], []
        for _ in range(args.repeats):
            for worker in workers:  # all start together: the GPU is shared while they run
                worker.stdin.write(f"{args.steps}\n")
                worker.stdin.flush()
            rates = [args.steps / read(worker)["seconds"] for worker in workers]
            per_cell.append(median(rates))
            total.append(sum(rates))
    finally:
        for worker in workers:
            with contextlib.suppress(BrokenPipeError):
                worker.stdin.write("\n")
                worker.stdin.close()
            worker.wait(timeout=120)
    return {"mode": mode, "cells": cells, "per_cell": median(per_cell), "total": median(total)}


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    rows = []
    with contextlib.ExitStack() as stack:
        data_dir = ensure_dataset(args, stack)
        for mode in args.modes:
            for cells in args.cells:
                rows.append(measure(args, mode, cells, data_dir))
                rows[-1]["total_vs_one"] = rows[-1]["total"] / next(r["total"] for r in rows if r["mode"] == mode)
    print(f"training steps/s on {args.device}, cells sharing it: {args.dataset} ({args.dataset_steps} steps), "
          f"{args.steps} steps x median of {args.repeats} repeats after {args.warmup} warm-up, "
          f"{args.threads} torch thread(s) per cell")
    print_table([("mode", "mode", "s"), ("cells", "cells", "d"), ("per_cell", "steps/s per cell", ".1f"),
                 ("total", "steps/s total", ".1f"), ("total_vs_one", "total vs 1 cell", ".2f")], rows)
    return rows


if __name__ == "__main__":
    main()
