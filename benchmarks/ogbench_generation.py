"""Time to generate OGBench data on this machine, per supported task, as seconds per 100k transitions.

Each task's dataset is generated with `generate_ogbench_dataset` (OGBench's recipe, 1000-step
episodes, plus the validation tenth) at `--steps` transitions into a temporary directory. The
collection loop is timed apart from building the environment and its oracles (seconds, printed
apart), in wall-clock and in CPU seconds of this process (the CPU figure holds on a busy machine,
the wall figure does not), and scaled to 100k transitions (110k rows with the validation file).

    PYTHONPATH=. .venv/bin/python benchmarks/ogbench_generation.py --steps 5000 [--tasks cube-single scene]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from diffuser.datasets import ogbench_generate
from diffuser.envs.ogbench_tasks import SUPPORTED, parse_task

PER = 100_000


def measure(family: str, steps: int, out_dir: Path) -> dict:
    task = parse_task(f"{family}-{SUPPORTED[family]}-singletask-v0")
    build = {"wall": 0.0, "cpu": 0.0}
    collectors = {"play": ogbench_generate._PlayCollector, "navigate": ogbench_generate._NavigateCollector}
    original = collectors[task.kind]

    def timed_collector(*args):
        wall, cpu = time.perf_counter(), time.process_time()
        collector = original(*args)
        build["wall"], build["cpu"] = time.perf_counter() - wall, time.process_time() - cpu
        return collector

    setattr(ogbench_generate, original.__name__, timed_collector)
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        settings = ogbench_generate.generate_ogbench_dataset(out_dir / task.dataset_file, task, steps, seed=0)
        wall, cpu = time.perf_counter() - wall - build["wall"], time.process_time() - cpu - build["cpu"]
    finally:
        setattr(ogbench_generate, original.__name__, original)
    rows = steps + settings["train_episodes"] + settings["val_episodes"] * (settings["episode_length"] + 1)
    scale = PER * 1.1 / rows  # 100k transitions: ~100k training rows + the validation tenth
    return {"task": f"{family}-{task.kind}", "rows": rows, "build_s": build["wall"],
            "wall_s_per_100k": wall * scale, "cpu_s_per_100k": cpu * scale}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000, help="transitions generated per task")
    parser.add_argument("--tasks", nargs="+", default=list(SUPPORTED), choices=list(SUPPORTED))
    args = parser.parse_args()
    print("| task | rows timed | env + oracle build, s | wall s / 100k | CPU s / 100k |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.tasks:
            row = measure(family, args.steps, Path(tmp))
            print(f"| {row['task']} | {row['rows']} | {row['build_s']:.1f} | {row['wall_s_per_100k']:.0f} | "
                  f"{row['cpu_s_per_100k']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
