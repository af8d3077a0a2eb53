"""`make demo` / `python -m diffuser demo`: the default pipeline end to end, then where its results are.

1. `snakemake --workflow-profile workflow/profiles/default --cores N` runs config/config.yaml
   (with `--resources gpu=G*K` when the GPU pool lists G GPUs, K = meta_data.jobs_per_gpu jobs each);
2. `snakemake --report results/<exp>/report.html` writes the HTML report (figures, score table,
   resolved spec);
3. prints where the summary, the figures and the report are, and the final score table.

Safe to run again: Snakemake finds nothing to redo, the report is rewritten, the paths and the
table are printed again. Run from anywhere; it works in the checkout that holds this package.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from pathlib import Path

from diffuser.launch import ROOT, run_snakemake, snakemake_command

DEFAULT_SPEC = "config/config.yaml"
REPORT_NAME = "report.html"


def _shown(path: Path) -> str:
    """`path` relative to the working directory when it lies below it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _gpu_count() -> int:
    from diffuser.runtime.gpu_pool import pool_ids

    try:
        return len(pool_ids())
    except Exception:  # noqa: BLE001 - no usable nvidia-smi: run on the CPU
        return 0


def snakemake_commands(exp_dir: Path, cores: int, gpus: int, root: Path = ROOT) -> tuple[list[str], list[str]]:
    """(the run, the report) commands, both run in the checkout `root`."""
    run = snakemake_command(cores=cores, gpus=gpus, root=root)
    report = snakemake_command(cores=1, extra=["--report", str(exp_dir.relative_to(root) / REPORT_NAME)], root=root)
    return run, report


def _number(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def _interval(low, high) -> str:
    return "(1 seed)" if math.isnan(low) else f"[{_number(low)}, {_number(high)}]"


def score_table(summary_csv: Path) -> str:
    """The summary as a small text table: variant, seeds, mean and 95% CI (t) of the final normalized
    score, then, where summary.csv has them, its IQM with the 95% bootstrap CI and the IQM of the
    best periodic evaluation."""
    import pandas as pd

    summary = pd.read_csv(summary_csv)
    if not {"variant", "mean", "ci95_low", "ci95_high"} <= set(summary.columns):
        return summary.to_string(index=False)
    robust = {"iqm", "iqm_ci95_low", "iqm_ci95_high", "best_eval_iqm"} <= set(summary.columns)
    width = max(len("variant"), *(len(str(v)) for v in summary["variant"]))
    header = f"  {'variant':<{width}}  seeds   mean   95% CI (t)    "
    lines = [(header + ("    IQM   95% CI (bootstrap)  best-eval IQM" if robust else "")).rstrip()]
    for row in summary.itertuples():
        seeds = getattr(row, "n_seeds", "")
        line = f"  {row.variant:<{width}}  {seeds!s:>5}  {_number(row.mean):>5}   {_interval(row.ci95_low, row.ci95_high):<14}"
        if robust:
            line += (f" {_number(row.iqm):>5}   {_interval(row.iqm_ci95_low, row.iqm_ci95_high):<18}  "
                     f"{_number(row.best_eval_iqm):>5}")
        lines.append(line.rstrip())
    return "\n".join(lines)


def run_demo(cores: int | None = None, root: Path = ROOT) -> int:
    """Runs the pipeline and the report in `root`; returns the exit status (0: everything done)."""
    from diffuser.config import load_spec

    spec = load_spec(root / DEFAULT_SPEC)
    exp_dir = root / "results" / spec.exp_name
    cores = cores or os.cpu_count() or 1
    gpus = _gpu_count()
    slots = gpus * spec.meta_data["jobs_per_gpu"]  # the `gpu` resource counts job slots
    run, report = snakemake_commands(exp_dir, cores, slots, root)
    env = dict(os.environ)
    env.setdefault("MPLBACKEND", "Agg")
    device = f"{gpus} GPU(s), {spec.meta_data['jobs_per_gpu']} job(s) each" if gpus else "CPU"
    print(f"demo: experiment {spec.exp_name} ({len(spec.cells())} cells, {DEFAULT_SPEC}) on {device}, {cores} cores: "
          f"snakemake --cores {cores}{f' --resources gpu={slots}' if gpus else ''}", flush=True)
    code = run_snakemake(run, cwd=root, env=env)
    if code != 0:
        print(f"\ndemo: snakemake stopped with exit status {code}; the logs of the failed jobs are under "
              f"{_shown(root / 'logs' / spec.exp_name)}/. Run `make demo` again to continue where it stopped.",
              file=sys.stderr)
        return code
    code = subprocess.run(report, cwd=root, env=env, capture_output=True, text=True).returncode
    if code != 0:
        print(f"\ndemo: the pipeline finished but `snakemake --report` failed (exit status {code}); "
              f"run it by hand to see why: snakemake --report {exp_dir.relative_to(root) / REPORT_NAME}", file=sys.stderr)
        return code

    from diffuser.reporting.page import PAGE_NAME  # written by the aggregate step

    summary, figures = exp_dir / "summary.csv", exp_dir / "figures"
    count = len([p for p in figures.iterdir() if p.suffix in (".png", ".svg")]) if figures.is_dir() else 0
    print(f"\ndemo finished: experiment {spec.exp_name}")
    print(f"  summary: {_shown(summary)}   (one row per variant: mean, IQM and 95% CIs over seeds)")
    print(f"  figures: {_shown(figures)}/   ({count} files: learning curves, final scores, offline vs online)")
    print(f"  page:    {_shown(exp_dir / PAGE_NAME)}   (one self-contained page: scores, figures, environment, spec)")
    print(f"  report:  {_shown(exp_dir / REPORT_NAME)}   (Snakemake's report: open it in a browser)")
    print(f"  cells:   {_shown(exp_dir / 'cells')}/<cell>/   (config.yaml, metrics.csv, run.json, eval.json)")
    print(f"  logs:    {_shown(root / 'logs' / spec.exp_name)}/")
    print("  again:   make report   (summary, figures and report from the finished cells)")
    print("\nFinal normalized score, mean over seeds (0 = a random policy, 100 = the reference expert):")
    print(score_table(summary))
    return 0


def regenerate_report(spec_path: str | os.PathLike = DEFAULT_SPEC, root: Path = ROOT) -> int:
    """Summary, figures and report of an experiment again, from its finished cells (`make report`)."""
    from diffuser.config import ConfigError, load_spec
    from diffuser.reporting import aggregate_experiment
    from diffuser.reporting.page import PAGE_NAME

    try:
        spec = load_spec(root / spec_path)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    exp_dir = root / "results" / spec.exp_name
    cells = [cell.name for cell in spec.cells()]
    missing = [name for name in cells if not (exp_dir / "cells" / name / "eval.json").is_file()]
    if missing:
        print(f"error: {len(missing)} of the {len(cells)} cells of {spec.exp_name} have no evaluation yet "
              f"(first: {missing[0]}); run the experiment first (make demo, or run_experiment.py -e {spec_path}).",
              file=sys.stderr)
        return 2
    aggregate_experiment(exp_dir, spec.swept_variables, cells=cells)
    report = snakemake_command(cores=1, spec=root / spec_path,
                               extra=["--report", str(exp_dir.relative_to(root) / REPORT_NAME)], root=root)
    code = subprocess.run(report, cwd=root, capture_output=True, text=True).returncode
    if code != 0:
        print(f"error: `snakemake --report` failed (exit status {code})", file=sys.stderr)
        return code
    print(f"summary: {_shown(exp_dir / 'summary.csv')}\nfigures: {_shown(exp_dir / 'figures')}/\n"
          f"page:    {_shown(exp_dir / PAGE_NAME)}\nreport:  {_shown(exp_dir / REPORT_NAME)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffuser.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", type=int, default=None, help="CPU cores for all jobs together (default: all)")
    args = parser.parse_args(argv)
    return run_demo(cores=args.cores)


if __name__ == "__main__":
    sys.exit(main())
