"""A training-step timing worker: builds the default cell's trainer from one checkout, then times steps on request.

Run by bench_fast_step.py and bench_gpu_cells.py, one process per variant, so two checkouts of the
package (today's and an older commit) can be timed in one run without sharing an interpreter:

    python benchmarks/_step_worker.py --root CHECKOUT --data-dir DATA [--mode MODE] [--device DEVICE]

It prints one JSON line when ready ({"setup_s", "first_step_s", "ops_per_step", "parameters"}), then
answers each line "N" on stdin with one JSON line {"seconds": wall-clock time of N steps, "cpu_seconds": this
process's CPU time for them}; an empty line ends it. On a shared CPU the CPU time is the steadier
measure: it does not count the time the process waited for a core.

Modes (what one step is):
- eager: the checkout's own training loop body (`Trainer.advance()`, or `train_step()` + `_accumulate()`
  in checkouts before it existed);
- compiled: the same with `compile: true`;
- per-step-sync: `train_step()`, then the accumulation this project used before its metrics stayed on
  the device (every loss term read with `.item()` and checked with `isfinite().all()` every step);
- matmul-floor: only the step's matrix products (every mm/addmm/bmm/baddbmm of one eager step, at its
  shapes, on fresh tensors): the compute floor of the step on this machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="the checkout whose `diffuser` package is timed")
    parser.add_argument("--data-dir", required=True, help="data directory holding the processed dataset")
    parser.add_argument("--mode", default="eager", choices=["eager", "compiled", "per-step-sync", "matmul-floor"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE")
    return parser.parse_args(argv)


def build_trainer(args, run_dir):
    import torch

    from diffuser import steps
    from diffuser.config import validate_cell_config
    from diffuser.registry import trainer_for

    values = {"dataset": "gen-maze2d-umaze", "device": args.device, "num_threads": args.threads}
    values.update(pair.split("=", 1) for pair in args.overrides)
    if args.mode == "compiled":
        values["compile"] = True
    config = validate_cell_config(values, "benchmark config")
    torch.manual_seed(config["seed"])
    dataset = steps.load_dataset(config, args.data_dir, device=args.device)
    model = steps.build_model(config, dataset.obs_dim, dataset.action_dim)
    return trainer_for(config)(config, dataset, model, run_dir, device=args.device)


def loop_body(trainer):
    """The checkout's own per-step work in its training loop."""
    if hasattr(trainer, "advance"):
        return trainer.advance
    return lambda: trainer._accumulate(trainer.train_step())  # checkouts before the device-side sums


def per_step_sync_body(trainer):
    sums: dict[str, float] = {}

    def step():
        terms = trainer.train_step()
        bad = [name for name, value in terms.items() if not bool(value.isfinite().all())]
        if bad:
            raise RuntimeError(f"non-finite {bad}")
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + value.detach().item()

    return step


class _Recorder:
    """Records the matrix products of one step (op, argument shapes)."""

    OPS = ("mm", "addmm", "bmm", "baddbmm")

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        calls = self.calls = []

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = func.overloadpacket.__name__
                if name in _Recorder.OPS:
                    calls.append((name, [tuple(a.shape) for a in args[:3] if hasattr(a, "shape")]))
                return func(*args, **(kwargs or {}))

        self.mode = Mode()


def matmul_floor_body(trainer, device):
    import torch

    recorder = _Recorder()
    with recorder.mode:
        trainer.train_step()
    products = []
    for name, shapes in recorder.calls:
        tensors = [torch.randn(shape, device=device) for shape in shapes]
        products.append((getattr(torch, name), tensors))

    def step():
        for op, tensors in products:
            op(*tensors)

    return step, len(products)


def count_ops(step) -> int:
    """aten ops dispatched by one call of `step` (a machine-independent measure of per-step overhead)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    count = [0]

    class Counter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            count[0] += 1
            return func(*args, **(kwargs or {}))

    with Counter():
        step()
    return count[0]


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None) -> None:
    args = parse_args(argv)
    sys.path.insert(0, args.root)
    import torch

    torch.set_num_threads(args.threads)
    begin = time.perf_counter()
    trainer = build_trainer(args, tempfile.mkdtemp(prefix="bench-step-"))
    info = {"parameters": sum(p.numel() for p in trainer.model.parameters())}
    if args.mode == "matmul-floor":
        loop_body(trainer)()  # lazy state first
        step, info["matmuls_per_step"] = matmul_floor_body(trainer, args.device)
    elif args.mode == "per-step-sync":
        step = per_step_sync_body(trainer)
    else:
        step = loop_body(trainer)
    info["setup_s"] = time.perf_counter() - begin
    begin = time.perf_counter()
    step()  # the compiled mode compiles here
    synchronize(args.device)
    info["first_step_s"] = time.perf_counter() - begin
    for _ in range(args.warmup):
        step()
    if args.mode != "compiled":  # dispatch counting would see the compiled graph's internals differently
        info["ops_per_step"] = count_ops(step)
    synchronize(args.device)
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        n = int(line)
        begin, cpu_begin = time.perf_counter(), time.process_time()
        for _ in range(n):
            step()
        synchronize(args.device)
        print(json.dumps({"seconds": time.perf_counter() - begin, "cpu_seconds": time.process_time() - cpu_begin}),
              flush=True)


if __name__ == "__main__":
    main()
