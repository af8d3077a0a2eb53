"""The default cell's CPU training step: this checkout against an older commit, eager against compiled,
per-step host reads against device-side sums, and the step against its own matrix products (the floor).

Each variant is one worker process (_step_worker.py) that builds the default DiffusionRL cell (schema
defaults: batch 256, hidden 128, critic on) on gen-maze2d-umaze with one torch thread and warms up.
Then, in every repeat, the workers time `--steps` steps one after another (never two at once), so a
change in the machine's load hits all of them within seconds of each other. A step's time is the
worker's CPU time (`--clock cpu`, the default: on a shared machine it leaves out the time spent
waiting for a core, which wall-clock time counts) or its wall-clock time (`--clock wall`). The table
shows each variant's median ms/step and its median per-repeat ratio to the baseline (the older
commit, or this checkout's eager step when no `--baseline-root` is given).

    git worktree add /tmp/base15 e638283
    PYTHONPATH=. .venv/bin/python benchmarks/bench_fast_step.py --baseline-root /tmp/base15 [--quick]
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
    add_common_arguments(parser, repeats=7)
    parser.add_argument("--baseline-root", default=None,
                        help="a checkout of an older commit (git worktree add DIR COMMIT), timed as the baseline")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per repeat (default 30, --quick 5)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps after building (default 10, --quick 2)")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="CPU time (default) or wall-clock time")
    parser.add_argument("--no-compile", action="store_true", help="leave out the compiled variant (compiling takes minutes)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = min(args.repeats, 3)
    args.steps = args.steps or (5 if args.quick else 30)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.quick else 10)
    return args


class Worker:
    def __init__(self, label: str, root: Path, mode: str, args, data_dir: Path):
        command = [sys.executable, str(WORKER), "--root", str(root), "--data-dir", str(data_dir), "--mode", mode,
                   "--threads", str(args.threads), "--warmup", str(args.warmup), "--set", "dataset_steps="
                   f"{args.dataset_steps}", "dataset=" + args.dataset, *args.overrides]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        env.pop("PYTHONPATH", None)  # the worker imports the package of its own --root only
        self.label, self.mode = label, mode
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.info = self._read()
        self.times: list[float] = []

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"benchmark worker '{self.label}' stopped (exit code {self.process.wait()}); see its error above.")
        return json.loads(line)

    def time(self, steps: int, clock: str) -> float:
        self.process.stdin.write(f"{steps}\n")
        self.process.stdin.flush()
        seconds = self._read()["cpu_seconds" if clock == "cpu" else "seconds"] / steps
        self.times.append(seconds)
        return seconds

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.write("\n")
            self.process.stdin.close()
        self.process.wait(timeout=60)


def variants(args) -> list[tuple[str, Path, str]]:
    """(label, checkout, mode); the first is the baseline of the ratios."""
    rows = []
    if args.baseline_root:
        commit = subprocess.run(["git", "-C", args.baseline_root, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip() or "?"
        rows.append((f"baseline {commit}, eager", Path(args.baseline_root).resolve(), "eager"))
    rows.append(("this checkout, eager", ROOT, "eager"))
    if not args.no_compile:
        rows.append(("this checkout, compiled", ROOT, "compiled"))
    rows.append(("this checkout, per-step host reads", ROOT, "per-step-sync"))
    rows.append(("matrix products alone (floor)", ROOT, "matmul-floor"))
    return rows


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    load_before = os.getloadavg()
    with contextlib.ExitStack() as stack:
        data_dir = ensure_dataset(args, stack)
        workers = []
        try:
            for label, root, mode in variants(args):  # built one at a time: a compile does not overlap timing
                workers.append(Worker(label, root, mode, args, data_dir))
            for _ in range(args.repeats):
                for worker in workers:
                    worker.time(args.steps, args.clock)
        finally:
            for worker in workers:
                worker.close()
    load_after = os.getloadavg()

    baseline = workers[0]
    rows = []
    for worker in workers:
        ratios = [b / t for b, t in zip(baseline.times, worker.times, strict=True)]
        rows.append({
            "variant": worker.label,
            "ms_per_step": 1000 * median(worker.times),
            "speedup": median(ratios),
            "ops_per_step": worker.info.get("ops_per_step", -1),
            "first_step_s": worker.info["first_step_s"],
        })
    floor = 1000 * median(workers[-1].times)
    for row in rows:
        row["vs_floor"] = row["ms_per_step"] / floor
    print(f"training step of the default cell: {args.dataset} ({args.dataset_steps} steps), {args.steps} steps x "
          f"median of {args.repeats} repeats after {args.warmup} warm-up, {args.threads} torch thread(s), "
          f"{args.clock} time; "
          f"load average {load_before[0]:.2f} -> {load_after[0]:.2f} on {os.cpu_count()} CPUs")
    print_table(
        [("variant", "variant", "s"), ("ms_per_step", "ms/step", ".2f"), ("speedup", f"x vs {baseline.label}", ".2f"),
         ("vs_floor", "x floor", ".2f"), ("ops_per_step", "aten ops/step", "d"), ("first_step_s", "first step s", ".1f")],
        rows,
    )
    return rows


if __name__ == "__main__":
    main()
