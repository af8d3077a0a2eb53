"""Results of an experiment: the score table over seeds (summary.csv/json) and its figures."""

from __future__ import annotations

import os
from pathlib import Path

from diffuser.reporting.aggregate import (
    ReportError,
    collect_cells,
    summarize,
    write_summary,
)
from diffuser.reporting.stats import iqm, iqm_interval, mean_confidence_interval, probability_of_improvement

FIGURES_DIRNAME = "figures"

__all__ = [
    "ReportError",
    "aggregate_experiment",
    "collect_cells",
    "iqm",
    "iqm_interval",
    "make_figures",
    "mean_confidence_interval",
    "probability_of_improvement",
    "summarize",
    "write_summary",
]


FIGURE_SUFFIXES = (".png", ".svg")


def make_figures(exp_dir: str | os.PathLike, variables: list[str], out_dir: str | os.PathLike,
                 replicate: str = "seed", cells: list[str] | None = None) -> list[Path]:
    """See diffuser.reporting.figures.make_figures (imported on use: matplotlib loads slowly)."""
    from diffuser.reporting.figures import make_figures as draw

    return draw(exp_dir, variables, out_dir, replicate, cells)


def aggregate_experiment(exp_dir: str | os.PathLike, variables: list[str], replicate: str = "seed",
                         cells: list[str] | None = None) -> dict[str, Path]:
    """Writes summary.csv, summary.json and figures/ under `exp_dir`.

    `cells`: the cell paths of the experiment's spec (`[cell.name for cell in spec.cells()]`), so
    cell folders left from an earlier spec are not counted; None summarizes every cell found under
    `exp_dir/cells`. Figures of an earlier run that this one did not draw are removed.
    Also writes summary.html, the self-contained report page (diffuser.reporting.page).
    Returns {"summary_csv": path, "summary_json": path, "page": path, <figure file name>: path, ...}.
    """
    exp_dir = Path(exp_dir)
    summary_csv = write_summary(exp_dir, variables, replicate, cells)
    paths = {"summary_csv": summary_csv, "summary_json": summary_csv.with_suffix(".json")}
    figures_dir = exp_dir / FIGURES_DIRNAME
    written = make_figures(exp_dir, variables, figures_dir, replicate, cells)
    for figure in written:
        paths[figure.name] = figure
    for old in figures_dir.iterdir():
        if old.suffix in FIGURE_SUFFIXES and old not in written:
            old.unlink()
    from diffuser.reporting.page import write_page

    paths["page"] = write_page(exp_dir, variables, replicate, cells, figures_dir)
    return paths
