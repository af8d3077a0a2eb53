"""What the benchmarks share: the cell config they time, the dataset they use, medians and tables.

Every benchmark is a script with `main(argv) -> list[dict]`: it prints a table and returns its rows,
so `run_all.py` can run it and tests/test_benchmarks.py can check it at a tiny size.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python benchmarks/X.py` from anywhere
    sys.path.insert(0, str(ROOT))

from diffuser.config import cell_defaults, validate_cell_config  # noqa: E402
from diffuser.datasets.prepare import prepare_dataset  # noqa: E402
from diffuser.launch import parse_key_values  # noqa: E402

DEFAULT_DATASET = "gen-maze2d-umaze"
DEFAULT_DATASET_STEPS = cell_defaults()["dataset_steps"]
QUICK_DATASET_STEPS = 5_000  # --quick: a small generated dataset in a temporary directory


def add_common_arguments(parser: argparse.ArgumentParser, repeats: int) -> None:
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed repeats; tables show medians")
    parser.add_argument("--dataset", default=DEFAULT_DATASET)
    parser.add_argument("--dataset-steps", type=int, default=None,
                        help=f"steps of a generated dataset (default: the one in the data directory as it is, "
                             f"else {DEFAULT_DATASET_STEPS}; --quick {QUICK_DATASET_STEPS})")
    parser.add_argument("--data-dir", default=None,
                        help="data directory (default: data/ of the checkout; --quick: a temporary one)")
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override cell config keys, e.g. --set hidden_dim=128 batch_size=64 (repeatable)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for `make bench` and smoke runs")


def cell_config(args, **fixed) -> dict:
    """The default cell config (schema defaults) on CPU with `args.threads`, then `fixed`, then --set."""
    values = {"dataset": args.dataset, "device": "cpu", "num_threads": args.threads, **fixed}
    if getattr(args, "dataset_steps", None):
        values["dataset_steps"] = args.dataset_steps
    values.update(parse_key_values(args.overrides, "--set"))
    return validate_cell_config(values, "benchmark config")


def ensure_dataset(args, stack) -> Path:
    """The data directory holding the dataset of `args.dataset_steps` steps (generated when missing).

    With --quick (and no --data-dir) a small dataset goes into a temporary directory, so a quick
    run never replaces the full-size one in data/. Sets `args.dataset_steps` to the size used.
    """
    steps = args.dataset_steps or (QUICK_DATASET_STEPS if args.quick else DEFAULT_DATASET_STEPS)
    if args.data_dir is not None:
        data_dir = Path(args.data_dir)
    elif args.quick or steps != DEFAULT_DATASET_STEPS:
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-data-")))
    else:
        data_dir = ROOT / "data"
    defaults = cell_defaults()
    prepare_dataset(args.dataset, data_dir, steps=steps, action_noise=defaults["dataset_action_noise"],
                    seed=defaults["dataset_seed"])
    args.dataset_steps = steps
    return data_dir


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def median(values) -> float:
    return float(statistics.median(values))


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def print_table(columns: list[tuple[str, str, str]], rows: list[dict]) -> None:
    """Columns are (row key, header, format spec); the width is the header's or the widest value's."""
    cells = [[format(row[key], spec) for key, _, spec in columns] for row in rows]
    widths = [max([len(header)] + [len(line[i]) for line in cells]) for i, (_, header, _) in enumerate(columns)]
    print("  ".join(header.rjust(w) if i else header.ljust(w) for i, ((_, header, _), w) in enumerate(zip(columns, widths, strict=True))))
    for line in cells:
        print("  ".join(value.rjust(w) if i else value.ljust(w) for i, (value, w) in enumerate(zip(line, widths, strict=True))))
