"""Figures of an experiment: learning curves, final scores with confidence intervals, offline vs online.

Figures are drawn on `matplotlib.figure.Figure` objects rendered by the Agg canvas, so no pyplot
state or interactive backend is involved. Bands and error bars are 95% Student t confidence
intervals of the mean over seeds.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from diffuser.reporting.aggregate import (
    NORMALIZED_RETURN,
    SUCCESS_RATE,
    collect_cells,
    improvement_pairs,
    label_variants,
    load_metrics,
    read_cell_config,
    score_kind,
    sort_key,
    summarize,
    variant_label,
    variant_variables,
)
from diffuser.reporting.robust_figures import plot_improvement, plot_iqm, plot_performance_profile
from diffuser.reporting.stats import CONFIDENCE, mean_confidence_interval

EVAL_SCORE = "eval_normalized_score"
ONLINE_VARIABLE = "online_training"
ENV_STEPS = "env_steps"
# What OnlineRLTrainer logs per PPO pass and per collection; with the evaluation score, these are also
# drawn against environment steps (the online cells' budget) as well as training steps.
ONLINE_TERMS = ("clip_fraction", "approx_kl", "explained_variance", "online_normalized_score", "online_success_rate")
# Known training terms first, in the order a reader expects; other `*_loss` metrics follow.
TRAINING_TERMS = (
    "loss", "diffusion_loss", "vae_loss", "vae_recon_loss", "vae_kl_loss",
    "value_loss", "q_loss", "policy_loss", "bc_loss", "actor_loss", "bc_flow_loss", "distill_loss", "actor_q_loss", "entropy",
)
METRIC_LABELS = {
    "loss": "Total loss",
    "diffusion_loss": "Diffusion loss",
    "vae_loss": "VAE loss",
    "vae_recon_loss": "VAE reconstruction loss",
    "vae_kl_loss": "VAE KL loss",
    "value_loss": "Value loss",
    "q_loss": "Q loss",
    "policy_loss": "Policy-gradient loss",
    "bc_loss": "BC loss",
    "actor_loss": "IQL actor (AWR) loss",
    "bc_flow_loss": "FQL flow-matching loss",
    "distill_loss": "FQL distillation loss",
    "actor_q_loss": "FQL policy -Q",
    "entropy": "Policy entropy",
    "clip_fraction": "PPO clip fraction",
    "approx_kl": "PPO approximate KL",
    "explained_variance": "Explained variance of the online value",
    "online_normalized_score": "Normalized score (online episodes)",
    "online_success_rate": "Success rate (online episodes)",
}
SCORE_NAMES = {NORMALIZED_RETURN: "Normalized score", SUCCESS_RATE: "Success rate, %"}
MODE_LABELS = {False: "offline", True: "online + offline"}
MODE_COLORS = {False: "tab:blue", True: "tab:orange"}
LINE_STYLES = ("-", "--", ":", "-.")
MAX_CURVE_POINTS = 400
# Loss terms that fall over orders of magnitude (a KL term) are unreadable on a linear axis.
LOG_SCALE_MIN_RATIO = 100.0
FIGSIZE = (7.5, 4.5)
SEED_JITTER = 0.05  # spread of the single-seed dots around their category, in category widths
DPI = 150
BAND_NOTE = f"lines: mean over seeds; shaded: {CONFIDENCE:.0%} CI of the mean (Student t)"
ERRORBAR_NOTE = f"error bars: {CONFIDENCE:.0%} CI of the mean over seeds (Student t); dots: single seeds"


# --- data ---------------------------------------------------------------------------------------

def curve_metrics(names) -> list[str]:
    """The metrics that get a learning curve, in display order: training terms, then the eval score."""
    present = set(names)
    ordered = [name for name in TRAINING_TERMS if name in present]
    ordered += sorted(name for name in present if name.endswith("_loss") and name not in ordered)
    ordered += [name for name in ONLINE_TERMS if name in present]
    if EVAL_SCORE in present:
        ordered.append(EVAL_SCORE)
    return ordered


def mean_curve(series: list[tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """Mean and CI over seeds of curves logged at possibly different steps.

    The common grid is the union of logged steps inside the range every seed covers (no
    extrapolation), thinned to MAX_CURVE_POINTS; each seed is linearly interpolated onto it, so
    at a step every seed logged the mean is exactly the mean of the logged values.
    """
    columns = ["step", "mean", "ci_low", "ci_high", "n_seeds"]
    if not series:
        return pd.DataFrame(columns=columns)
    start = max(steps[0] for steps, _ in series)
    end = min(steps[-1] for steps, _ in series)
    grid = np.unique(np.concatenate([steps for steps, _ in series]))
    grid = grid[(grid >= start) & (grid <= end)]
    if grid.size > MAX_CURVE_POINTS:
        grid = grid[np.unique(np.linspace(0, grid.size - 1, MAX_CURVE_POINTS).round().astype(int))]
    values = np.stack([np.interp(grid, steps, vals) for steps, vals in series])  # [seeds, grid]
    stats = [mean_confidence_interval(values[:, i]) for i in range(grid.size)]
    means = np.array([m for m, _ in stats])
    halves = np.array([h for _, h in stats])
    return pd.DataFrame(
        {"step": grid, "mean": means, "ci_low": means - halves, "ci_high": means + halves, "n_seeds": len(series)},
        columns=columns,
    )


def _seed_series(metrics: pd.DataFrame, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    rows = metrics[metrics["metric"] == metric]
    if rows.empty:
        return None
    by_step = rows.groupby("step")["value"].mean().sort_index()
    return by_step.index.to_numpy(dtype=float), by_step.to_numpy(dtype=float)


def learning_curves(
    exp_dir: str | os.PathLike, variables: list[str], replicate: str = "seed", cells_df: pd.DataFrame | None = None
) -> dict[str, pd.DataFrame]:
    """{metric: table with columns variant, step, mean, ci_low, ci_high, n_seeds} for each curve metric."""
    return _variant_curves(exp_dir, variables, replicate, cells_df, curve_metrics, _seed_series)


def _variant_curves(exp_dir, variables: list[str], replicate: str, cells_df: pd.DataFrame | None, metrics_of,
                    series_of) -> dict[str, pd.DataFrame]:
    """{metric: mean curve over seeds per variant} for the metrics `metrics_of(names logged)` picks, each
    cell's series read by `series_of(its metrics table, metric)` (None where it has none)."""
    cells = label_variants(collect_cells(exp_dir, variables) if cells_df is None else cells_df, variables, replicate)
    metrics = {cell: load_metrics(exp_dir, cell) for cell in cells["cell"]}
    names = set().union(*(set(table["metric"]) for table in metrics.values()))
    curves = {}
    for metric in metrics_of(names):
        parts = []
        for label, group in cells.groupby("variant", sort=False):
            series = [s for s in (series_of(metrics[cell], metric) for cell in group["cell"]) if s is not None]
            curve = mean_curve(series)
            if not curve.empty:
                parts.append(curve.assign(variant=label))
        if parts:
            curves[metric] = pd.concat(parts, ignore_index=True)[["variant", "step", "mean", "ci_low", "ci_high", "n_seeds"]]
    return curves


def _env_step_series(metrics: pd.DataFrame, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(environment steps, values) of `metric` in one online cell: each value at the environment steps of
    its training step (logged every row). Rows that share an environment-step count (every row before the
    first collection, and the rows between two collections) are averaged, except the evaluation score,
    which takes the last: at 0 environment steps that is the warm-up's last evaluation, not the mean of
    all of them. (An evaluation at the first collection's own step comes after that collection.)"""
    series, env = _seed_series(metrics, metric), _seed_series(metrics, ENV_STEPS)
    if series is None or env is None:
        return None
    steps, values = series
    groups = pd.Series(values).groupby(np.interp(steps, *env))
    by_env = (groups.last() if metric == EVAL_SCORE else groups.mean()).sort_index()
    return by_env.index.to_numpy(dtype=float), by_env.to_numpy(dtype=float)


def env_step_curves(
    exp_dir: str | os.PathLike, variables: list[str], replicate: str = "seed", cells_df: pd.DataFrame | None = None
) -> dict[str, pd.DataFrame]:
    """Like `learning_curves`, with environment steps in the `step` column, for the cells that log
    `env_steps` (online ones): the evaluation score and ONLINE_TERMS."""
    return _variant_curves(exp_dir, variables, replicate, cells_df, lambda names: (EVAL_SCORE, *ONLINE_TERMS),
                           _env_step_series)


# --- drawing ------------------------------------------------------------------------------------

def _new_figure(figsize=FIGSIZE) -> Figure:
    return Figure(figsize=figsize, dpi=DPI, layout="constrained")


def variant_colors(labels: list[str]) -> dict:
    """One color per variant, the same in every figure."""
    if len(labels) <= 10:
        return {label: f"C{i}" for i, label in enumerate(labels)}
    tab20 = colormaps["tab20"]
    return {label: tab20(i % 20) for i, label in enumerate(labels)}


def metric_label(metric: str, score: str = NORMALIZED_RETURN) -> str:
    if metric == EVAL_SCORE:
        return f"{SCORE_NAMES[score]} (evaluation)"
    return METRIC_LABELS.get(metric, metric.replace("_", " ").capitalize())


def final_score_label(cells: pd.DataFrame) -> str:
    return f"{SCORE_NAMES[score_kind(cells)]} (final evaluation)"


def _draw_curve(ax, curve: pd.DataFrame, label: str, color, linestyle="-") -> None:
    n = int(curve["n_seeds"].iloc[0])
    ax.plot(curve["step"], curve["mean"], color=color, linestyle=linestyle, linewidth=1.6,
            label=f"{label} ({n} seed{'s' if n != 1 else ''}{', no band' if n < 2 else ''})")
    if n >= 2:
        ax.fill_between(curve["step"], curve["ci_low"], curve["ci_high"], color=color, alpha=0.2, linewidth=0)


def _use_log_scale_if_spread(ax, values: np.ndarray) -> None:
    values = values[np.isfinite(values)]
    if values.size and (values > 0).all() and values.max() / values.min() > LOG_SCALE_MIN_RATIO:
        ax.set_yscale("log")


def _note(fig: Figure, text: str) -> None:
    fig.text(0.01, 0.005, text, fontsize=7, color="0.35", ha="left", va="bottom")


def plot_learning_curve(curves: pd.DataFrame, metric: str, colors: dict, score: str = NORMALIZED_RETURN,
                        x_label: str = "Training step", references: dict[str, float] | None = None) -> Figure:
    """One metric's learning curves: a line (mean over seeds) and 95% band per variant; `score`
    names what the evaluation score measures; `references` (variant -> value) are drawn as dashed
    horizontal lines (variants without a curve on this axis, e.g. offline cells against environment steps)."""
    fig = _new_figure()
    ax = fig.add_subplot()
    for label, curve in curves.groupby("variant", sort=False):
        _draw_curve(ax, curve, label, colors[label])
    for label, value in (references or {}).items():
        ax.axhline(value, color=colors[label], linestyle="--", linewidth=1.2, label=f"{label} (final, no env steps)")
    _use_log_scale_if_spread(ax, curves["mean"].to_numpy(dtype=float))
    ax.set_xlabel(x_label)
    ax.set_ylabel(metric_label(metric, score))
    ax.set_title(f"{metric_label(metric, score)} during training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.get_layout_engine().set(rect=(0, 0.04, 1, 0.96))
    _note(fig, BAND_NOTE)
    return fig


def _draw_scores(ax, x: float, scores: np.ndarray, color, label: str | None, horizontal: bool = False) -> None:
    """A mean with its CI error bar at position x, plus the single seeds as faint dots."""
    mean, half = mean_confidence_interval(scores)
    err = None if math.isnan(half) else half
    jitter = np.linspace(-SEED_JITTER, SEED_JITTER, len(scores)) if len(scores) > 1 else np.zeros(1)
    if horizontal:
        ax.scatter(scores, x + jitter, color=color, alpha=0.45, s=14, linewidths=0)
        ax.errorbar(mean, x, xerr=err, fmt="o", color=color, capsize=4, markersize=7, label=label)
    else:
        ax.scatter(x + jitter, scores, color=color, alpha=0.45, s=14, linewidths=0)
        ax.errorbar(x, mean, yerr=err, fmt="o", color=color, capsize=4, markersize=7, label=label)


def plot_final_scores(cells: pd.DataFrame, colors: dict) -> Figure:
    """Every variant's final score, one row each (mean, 95% CI, seeds)."""
    labels = list(dict.fromkeys(cells["variant"]))
    fig = _new_figure((7.5, max(2.5, 1.0 + 0.45 * len(labels))))
    ax = fig.add_subplot()
    for i, label in enumerate(labels):
        scores = cells.loc[cells["variant"] == label, "normalized_score"].to_numpy(dtype=float)
        _draw_scores(ax, i, scores, colors[label], None, horizontal=True)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.set_xlabel(final_score_label(cells))
    ax.set_title("Final score per variant")
    ax.grid(axis="x", alpha=0.3)
    fig.get_layout_engine().set(rect=(0, 0.05, 1, 0.95))
    _note(fig, ERRORBAR_NOTE)
    return fig


def _setting_labels(cells: pd.DataFrame, names: list[str]) -> pd.Series:
    """Each cell's label over `names` only (the swept variables other than the one a figure compares)."""
    return pd.Series([variant_label({n: row[n] for n in names}) for _, row in cells.iterrows()], index=cells.index)


def plot_score_by_variable(cells: pd.DataFrame, variable: str, others: list[str]) -> Figure:
    """Final score against one swept variable; one series per setting of the other swept variables."""
    values = sorted(cells[variable].unique(), key=sort_key)
    setting_of = _setting_labels(cells, others)
    series = list(dict.fromkeys(setting_of))
    fig = _new_figure()
    ax = fig.add_subplot()
    width = 0.6 / max(len(series), 1)
    for s, series_label in enumerate(series):
        offset = (s - (len(series) - 1) / 2) * width
        for i, value in enumerate(values):
            in_cell = (setting_of == series_label) & (cells[variable] == value)
            scores = cells.loc[in_cell, "normalized_score"].to_numpy(dtype=float)
            if scores.size:
                _draw_scores(ax, i + offset, scores, f"C{s % 10}", series_label if i == 0 and others else None)
    ax.set_xticks(range(len(values)), [str(v) for v in values])
    ax.set_xlim(-0.5, len(values) - 0.5)
    ax.set_xlabel(variable)
    ax.set_ylabel(final_score_label(cells))
    ax.set_title(f"Final score by {variable}")
    ax.grid(axis="y", alpha=0.3)
    if others:
        ax.legend(fontsize=8, loc="best")
    fig.get_layout_engine().set(rect=(0, 0.04, 1, 0.96))
    _note(fig, ERRORBAR_NOTE)
    return fig


def _paired_difference(offline: pd.DataFrame, online: pd.DataFrame, replicate: str) -> str:
    """'Δ +12.3 ± 4.5' (online minus offline, paired by seed) or the plain difference of means."""
    if replicate in offline.columns:
        paired = offline.merge(online, on=replicate, suffixes=("_off", "_on"))
        if not paired.empty:
            diff = (paired["normalized_score_on"] - paired["normalized_score_off"]).to_numpy(dtype=float)
            mean, half = mean_confidence_interval(diff)
            spread = f" ± {half:.1f}" if math.isfinite(half) else " (1 seed)"
            return f"Δ {mean:+.1f}{spread}"
    diff = online["normalized_score"].mean() - offline["normalized_score"].mean()
    return f"Δ {diff:+.1f} (unpaired)"


def plot_offline_vs_online(
    cells: pd.DataFrame, eval_curves: pd.DataFrame | None, others: list[str], replicate: str, warmup_step: float | None
) -> Figure:
    """Left: evaluation score during training per mode; right: final score per mode with the paired Δ."""
    with_curves = eval_curves is not None and not eval_curves.empty
    fig = _new_figure((12.0, 4.5) if with_curves else FIGSIZE)
    axes = fig.subplots(1, 2) if with_curves else [None, fig.add_subplot()]
    setting_of = _setting_labels(cells, others)
    settings = list(dict.fromkeys(setting_of))

    if with_curves:
        ax = axes[0]
        for s, setting in enumerate(settings):
            for mode in (False, True):
                labels = cells.loc[(setting_of == setting) & (cells[ONLINE_VARIABLE] == mode), "variant"].unique()
                for label in labels:
                    curve = eval_curves[eval_curves["variant"] == label]
                    if not curve.empty:
                        name = MODE_LABELS[mode] + (f" [{setting}]" if others else "")
                        _draw_curve(ax, curve, name, MODE_COLORS[mode], LINE_STYLES[s % len(LINE_STYLES)])
        if warmup_step is not None:
            ax.axvline(warmup_step, color="0.4", linestyle=":", linewidth=1.2, label="online phase starts")
        ax.set_xlabel("Training step")
        ax.set_ylabel(metric_label(EVAL_SCORE, score_kind(cells)))
        ax.set_title("Evaluation score during training")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")

    ax = axes[1]
    for s, setting in enumerate(settings):
        in_setting = cells[setting_of == setting]
        by_mode = {mode: in_setting[in_setting[ONLINE_VARIABLE] == mode] for mode in (False, True)}
        for mode, offset in ((False, -0.15), (True, 0.15)):
            scores = by_mode[mode]["normalized_score"].to_numpy(dtype=float)
            if scores.size:
                _draw_scores(ax, s + offset, scores, MODE_COLORS[mode], MODE_LABELS[mode] if s == 0 else None)
        if not by_mode[False].empty and not by_mode[True].empty:
            top = in_setting["normalized_score"].max()
            ax.annotate(_paired_difference(by_mode[False], by_mode[True], replicate), (s, top),
                        xytext=(0, 8), textcoords="offset points", ha="center", fontsize=8)
    ax.set_xticks(range(len(settings)), settings if others else [""], fontsize=8)
    ax.set_xlim(-0.5, len(settings) - 0.5)
    ax.set_ylabel(final_score_label(cells))
    ax.set_title("Final score: offline vs online + offline")
    ax.margins(y=0.15)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.get_layout_engine().set(rect=(0, 0.05, 1, 0.95))
    _note(fig, ERRORBAR_NOTE + "; Δ: online minus offline, paired by seed, ± its CI half-width")
    return fig


def _save(fig: Figure, out_dir: Path, stem: str, svg: bool) -> list[Path]:
    paths = [out_dir / f"{stem}.png"] + ([out_dir / f"{stem}.svg"] if svg else [])
    for path in paths:
        fig.savefig(path)
    return paths


def _warmup_step(exp_dir, cells: pd.DataFrame) -> float | None:
    """The step the online phase starts at, when every online cell agrees on it."""
    online = cells.loc[cells[ONLINE_VARIABLE].astype(bool), "cell"]
    steps = {read_cell_config(exp_dir, cell).get("rl_warmup_steps") for cell in online}
    return float(steps.pop()) if len(steps) == 1 and None not in steps else None


def make_figures(
    exp_dir: str | os.PathLike, variables: list[str], out_dir: str | os.PathLike, replicate: str = "seed",
    cells: list[str] | None = None,
) -> list[Path]:
    """Writes every figure of the experiment to `out_dir` and returns their paths.

    Files: curve_<metric>.png per training term, online term and the evaluation score;
    curve_<metric>_vs_env_steps.png for the evaluation score (offline cells' final scores as dashed lines)
    and the online terms of the cells that interact; final_scores.{png,svg};
    iqm_scores.png (final and best periodic evaluation); performance_profile.png;
    probability_of_improvement.png when variants differ in one variable;
    final_score_by_<variable>.{png,svg} per swept variable other than the replicate; and
    offline_vs_online.{png,svg} when online_training is swept. `cells`: the cell paths to draw
    (see collect_cells; None: every cell under `exp_dir/cells`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    group_by = variant_variables(variables, replicate)
    cells = label_variants(collect_cells(exp_dir, variables, cells), variables, replicate)
    colors = variant_colors(list(dict.fromkeys(cells["variant"])))
    written = []

    curves = learning_curves(exp_dir, variables, replicate, cells_df=cells.drop(columns="variant"))
    for metric, table in curves.items():
        fig = plot_learning_curve(table, metric, colors, score_kind(cells))
        written += _save(fig, out_dir, f"curve_{metric}", svg=False)
    offline = cells[~cells[ONLINE_VARIABLE].astype(bool)] if ONLINE_VARIABLE in cells else cells.iloc[:0]
    offline_finals = offline.groupby("variant", sort=False)["normalized_score"].mean().to_dict()
    for metric, table in env_step_curves(exp_dir, variables, replicate, cells_df=cells.drop(columns="variant")).items():
        fig = plot_learning_curve(table, metric, colors, score_kind(cells), x_label="Environment steps",
                                  references=offline_finals if metric == EVAL_SCORE else None)
        written += _save(fig, out_dir, f"curve_{metric}_vs_env_steps", svg=False)

    written += _save(plot_final_scores(cells, colors), out_dir, "final_scores", svg=True)
    plain_cells, score_name = cells.drop(columns="variant"), SCORE_NAMES[score_kind(cells)]
    fig = plot_iqm(summarize(plain_cells, variables, replicate), colors, score_name)
    written += _save(fig, out_dir, "iqm_scores", svg=False)
    written += _save(plot_performance_profile(cells, colors, score_name), out_dir, "performance_profile", svg=False)
    pairs = improvement_pairs(plain_cells, variables, replicate)
    if not pairs.empty:
        written += _save(plot_improvement(pairs), out_dir, "probability_of_improvement", svg=False)
    for variable in group_by:
        others = [name for name in group_by if name != variable]
        fig = plot_score_by_variable(cells, variable, others)
        written += _save(fig, out_dir, f"final_score_by_{variable}", svg=True)

    if ONLINE_VARIABLE in group_by and cells[ONLINE_VARIABLE].nunique() > 1:
        others = [name for name in group_by if name != ONLINE_VARIABLE]
        fig = plot_offline_vs_online(cells, curves.get(EVAL_SCORE), others, replicate, _warmup_step(exp_dir, cells))
        written += _save(fig, out_dir, "offline_vs_online", svg=True)
    return written

