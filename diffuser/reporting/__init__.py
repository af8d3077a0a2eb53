"""Results of an experiment: the score table over seeds (summary.csv/json) and its figures."""

from __future__ import annotations

import os
from pathlib import Path

from diffuser.reporting.aggregate import (
    ReportError,
    collect_cells,
    mean_confidence_interval,
    student_t_quantile,
    summarize,
    write_summary,
)

FIGURES_DIRNAME = "figures"

__all__ = [
    "ReportError",
    "aggregate_experiment",
    "collect_cells",
    "make_figures",
    "mean_confidence_interval",
    "student_t_quantile",
    "summarize",
    "write_summary",
]


def make_figures(exp_dir: str | os.PathLike, variables: list[str], out_dir: str | os.PathLike,
                 replicate: str = "seed") -> list[Path]:
    """See diffuser.reporting.figures.make_figures (imported on use: matplotlib loads slowly)."""
    from diffuser.reporting.figures import make_figures as draw

    return draw(exp_dir, variables, out_dir, replicate)


def aggregate_experiment(exp_dir: str | os.PathLike, variables: list[str], replicate: str = "seed") -> dict[str, Path]:
    """Writes summary.csv, summary.json and figures/ under `exp_dir`.

    Returns {"summary_csv": path, "summary_json": path, <figure file name>: path, ...}.
    """
    exp_dir = Path(exp_dir)
    summary_csv = write_summary(exp_dir, variables, replicate)
    paths = {"summary_csv": summary_csv, "summary_json": summary_csv.with_suffix(".json")}
    for figure in make_figures(exp_dir, variables, exp_dir / FIGURES_DIRNAME, replicate):
        paths[figure.name] = figure
    return paths
