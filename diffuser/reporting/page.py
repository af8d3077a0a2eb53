"""One self-contained HTML page per experiment: `results/<exp>/summary.html`.

It holds, with nothing to fetch (figures are embedded as base64 PNG): the score table (per variant:
seeds, mean and Student t CI of the final score, its IQM with the bootstrap CI, the best periodic
evaluation's IQM, return, success rate), the IQM over tasks when several are swept, the
probability of improvement between variants that differ in one variable, every figure of
`figures/` (scores, comparisons such as offline vs online and per model, learning curves), one row
per cell (scores, device, wall clock), the environment (package versions, devices, hosts) and the
resolved spec. Written by the aggregate step after the summary tables and the figures.
"""

from __future__ import annotations

import base64
import datetime
import html
import importlib.metadata
import json
import math
import os
import platform
from pathlib import Path

import pandas as pd

from diffuser.reporting.aggregate import (
    NORMALIZED_RETURN,
    SUCCESS_RATE,
    SUMMARY_FILES,
    cell_dir,
    collect_cells,
    score_kind,
)
from diffuser.reporting.stats import BOOTSTRAP_REPS, CONFIDENCE

PAGE_NAME = "summary.html"
SPEC_NAME = "spec.yaml"
# what a score means, by diffuser.reporting.aggregate.score_kind
SCORE_NOTES = {SUCCESS_RATE: "Scores are success rates in percent (an episode scores 100 if it solves the task).",
               NORMALIZED_RETURN: "Scores are normalized: 0 = a random policy, 100 = the reference expert."}
# Packages whose versions decide the numbers on the page.
PACKAGES = ("diffuser", "torch", "numpy", "scipy", "pandas", "matplotlib", "gymnasium",
            "gymnasium-robotics", "snakemake", "dvc")
# Figure sections, in page order: (title, which figure stems belong to it).
SECTIONS = (
    ("Scores", lambda stem: stem in ("final_scores", "iqm_scores", "performance_profile", "probability_of_improvement")),
    ("Comparisons", lambda stem: stem == "offline_vs_online" or stem.startswith("final_score_by_")),
    ("Learning curves", lambda stem: stem.startswith("curve_")),
)
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f0f0f0; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 560px; border: 1px solid #eee; }
figcaption { font-size: 0.8em; color: #555; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 0.85em; }
.note { color: #555; font-size: 0.9em; }
"""


def _fmt(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _interval(low, high) -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return "(1 seed: none)"
    return f"[{low:.1f}, {high:.1f}]"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def score_table(summary: pd.DataFrame) -> str:
    header = ["variant", "seeds", "final: mean", f"final: mean {CONFIDENCE:.0%} CI (t)", "final: IQM",
              f"final: IQM {CONFIDENCE:.0%} CI (bootstrap)", "best periodic eval: mean", "best periodic eval: IQM",
              f"best periodic eval: IQM {CONFIDENCE:.0%} CI", "final: return", "final: success rate"]
    rows = [[html.escape(str(r.variant)), f"{r.n_seeds} ({html.escape(str(r.seeds))})", _fmt(r.mean),
             _interval(r.ci95_low, r.ci95_high), _fmt(r.iqm), _interval(r.iqm_ci95_low, r.iqm_ci95_high),
             _fmt(r.best_eval_mean), _fmt(r.best_eval_iqm), _interval(r.best_eval_iqm_ci95_low, r.best_eval_iqm_ci95_high),
             _fmt(r.return_mean), _fmt(r.success_rate_mean, 2)]
            for r in summary.itertuples()]
    return f'<div id="score-table">{_table(header, rows)}</div>'


def tasks_table(over_tasks: pd.DataFrame) -> str:
    header = ["variant", "tasks", "seeds", "final: IQM", f"final: IQM {CONFIDENCE:.0%} CI", "best periodic eval: IQM",
              f"best periodic eval: IQM {CONFIDENCE:.0%} CI"]
    rows = [[html.escape(str(r.variant)), str(r.n_tasks), str(r.n_seeds), _fmt(r.iqm), _interval(r.iqm_ci95_low, r.iqm_ci95_high),
             _fmt(r.best_eval_iqm), _interval(r.best_eval_iqm_ci95_low, r.best_eval_iqm_ci95_high)]
            for r in over_tasks.itertuples()]
    return _table(header, rows)


def improvement_table(pairs: pd.DataFrame) -> str:
    header = ["X vs Y", "P(X > Y)", f"{CONFIDENCE:.0%} CI", "seeds of X", "seeds of Y"]
    rows = [[html.escape(str(r.label)), _fmt(r.probability, 2),
             "(1 seed: none)" if not math.isfinite(r.ci95_low) else f"[{r.ci95_low:.2f}, {r.ci95_high:.2f}]",
             str(r.n_x), str(r.n_y)] for r in pairs.itertuples()]
    return _table(header, rows)


def _run_info(exp_dir: Path, cell: str) -> dict:
    path = cell_dir(exp_dir, cell) / "run.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def wall_clock_seconds(info: dict) -> float:
    """Seconds from the (last) start of training to its last update in run.json; NaN if unknown."""
    started, updated = info.get("started"), info.get("updated")
    return float(updated - started) if isinstance(started, (int, float)) and isinstance(updated, (int, float)) else math.nan


def _device(info: dict) -> str:
    device = info.get("device")
    if isinstance(device, dict):
        gpu = f" (GPU {device['gpu']})" if device.get("gpu") else ""
        return f"{device.get('device', '?')}{gpu}"
    return str(device) if device else "–"


def cells_table(exp_dir: Path, cells: pd.DataFrame) -> tuple[str, list[dict]]:
    infos = [_run_info(exp_dir, cell) for cell in cells["cell"]]
    header = ["cell", "final score", "final success rate", "first success step", "share solved after it",
              "best periodic eval (step)", "last periodic eval (step)",
              "training steps", "device", "wall clock (s)", "status"]
    rows = []
    for (_, row), info in zip(cells.iterrows(), infos, strict=True):
        best = f"{_fmt(row['best_eval_score'])} ({_fmt(row['best_eval_step'], 0)})"
        last = f"{_fmt(row['last_eval_score'])} ({_fmt(row['last_eval_step'], 0)})"
        rows.append([html.escape(row["cell"]), _fmt(row["normalized_score"]), _fmt(row["success_rate"], 2),
                     _fmt(row["first_success_step"], 0), _fmt(row["success_hold_share"], 2), best, last,
                     _fmt(info.get("steps", info.get("step"))), html.escape(_device(info)), _fmt(wall_clock_seconds(info)),
                     _fmt(info.get("status"))])
    return _table(header, rows), infos


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _values_of(infos: list[dict], key: str) -> str:
    return ", ".join(sorted({str(info[key]) for info in infos if info.get(key)})) or "–"


def environment_section(infos: list[dict]) -> str:
    versions = package_versions()
    rows = [[html.escape(k), html.escape(v)] for k, v in versions.items()]
    devices = ", ".join(sorted({_device(i) for i in infos if i})) or "–"
    total = sum(s for s in (wall_clock_seconds(i) for i in infos) if math.isfinite(s))
    rows += [["training hosts", html.escape(_values_of(infos, "host"))], ["training devices", html.escape(devices)],
             ["torch in training jobs", html.escape(_values_of(infos, "torch"))],
             ["training wall clock, all cells (s)", _fmt(total)],
             ["this page written on", html.escape(f"{platform.node()} ({platform.platform()})")]]
    return _table(["what", "value"], rows)


def _figure_html(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure data-figure="{html.escape(path.stem)}"><img alt="{html.escape(path.stem)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{html.escape(path.name)}</figcaption></figure>')


def figures_html(figures_dir: Path) -> str:
    pngs = sorted(figures_dir.glob("*.png")) if figures_dir.is_dir() else []
    parts, placed = [], set()
    for title, belongs in SECTIONS:
        chosen = [p for p in pngs if belongs(p.stem)]
        placed.update(chosen)
        if chosen:
            parts.append(f"<h3>{html.escape(title)}</h3>" + "".join(_figure_html(p) for p in chosen))
    rest = [p for p in pngs if p not in placed]
    if rest:
        parts.append("<h3>Other figures</h3>" + "".join(_figure_html(p) for p in rest))
    return "\n".join(parts)


def write_page(exp_dir: str | os.PathLike, variables: list[str], replicate: str = "seed",
               cells: list[str] | None = None, figures_dir: str | os.PathLike | None = None) -> Path:
    """Writes `exp_dir/summary.html` from summary.csv, improvement.csv, summary_tasks.csv, the figures,
    the cells' run.json and `exp_dir/spec.yaml` (written before by write_summary and make_figures)."""
    exp_dir = Path(exp_dir)
    figures_dir = Path(figures_dir) if figures_dir else exp_dir / "figures"
    summary = pd.read_csv(exp_dir / SUMMARY_FILES["summary"])
    pairs = pd.read_csv(exp_dir / SUMMARY_FILES["improvement"])
    tasks_path = exp_dir / SUMMARY_FILES["over_tasks"]
    cells_df = collect_cells(exp_dir, variables, cells)
    cells_html, infos = cells_table(exp_dir, cells_df)
    spec_path = exp_dir / SPEC_NAME
    spec_text = spec_path.read_text() if spec_path.exists() else "(no spec.yaml beside the results)"
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    name = html.escape(exp_dir.name)
    sections = [
        f"<h1>Experiment {name}</h1>",
        f'<p class="note">{len(cells_df)} cells; written {now}. {SCORE_NOTES[score_kind(cells_df)]} '
        "<b>Final</b>: the evaluation of the final (EMA) policy; <b>best periodic "
        "eval</b>: the highest of the evaluations during training, picked after the fact (optimistic). "
        f"IQM: the mean of the middle 50% of seeds; its {CONFIDENCE:.0%} CI is a stratified percentile bootstrap "
        f"({BOOTSTRAP_REPS} resamples, rliable's method, computed with scipy); the mean's CI is Student t.</p>",
        "<h2>Score table</h2>", score_table(summary),
    ]
    if tasks_path.exists():
        sections += ["<h2>Over tasks</h2>", '<p class="note">IQM over seeds x tasks; seeds resampled within each task.</p>',
                     tasks_table(pd.read_csv(tasks_path))]
    if not pairs.empty:
        sections += ["<h2>Probability of improvement</h2>",
                     '<p class="note">P(X &gt; Y): the chance that a run of X ends above a run of Y (final score; '
                     "ties count half); 0.5 means no difference.</p>", improvement_table(pairs)]
    sections += ["<h2>Figures</h2>", figures_html(figures_dir), "<h2>Cells</h2>", cells_html,
                 "<h2>Environment</h2>", environment_section(infos),
                 "<h2>Resolved spec</h2>", f'<pre id="spec">{html.escape(spec_text)}</pre>']
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{name}: results</title>'
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(sections) + "\n</body></html>\n")
    out = exp_dir / PAGE_NAME
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out
