"""rliable's figures: IQM with bootstrap CIs, performance profiles, probability of improvement.

Each takes the tables of diffuser.reporting.aggregate (summary, cells, improvement pairs) and
returns a `matplotlib.figure.Figure`; the intervals are the stratified bootstrap 95% CIs of
diffuser.reporting.stats.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from diffuser.reporting.stats import CONFIDENCE, performance_profiles

FIGSIZE = (7.5, 4.5)
DPI = 150
PROFILE_POINTS = 101
FINAL_LABEL = "final evaluation"
BEST_LABEL = "best periodic evaluation (picked after the fact: optimistic)"
IQM_NOTE = (f"IQM: mean of the middle 50% of seeds; bars: {CONFIDENCE:.0%} stratified bootstrap CI (rliable's method); "
            "no bar with one seed")


def _new_figure(figsize=FIGSIZE) -> Figure:
    return Figure(figsize=figsize, dpi=DPI, layout="constrained")


def _note(fig: Figure, text: str) -> None:
    fig.get_layout_engine().set(rect=(0, 0.05, 1, 0.95))
    fig.text(0.01, 0.005, text, fontsize=7, color="0.35", ha="left", va="bottom")


def _error(point: float, low: float, high: float):
    """matplotlib's asymmetric error [[below], [above]], or None without an interval."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    return [[point - low], [high - point]]


def plot_iqm(summary: pd.DataFrame, colors: dict, score_name: str) -> Figure:
    """Per variant: the IQM of the final score and of the best periodic evaluation, with CIs;
    `score_name` says what the score is ("Normalized score", "Success rate, %")."""
    labels = list(summary["variant"])
    fig = _new_figure((7.5, max(2.5, 1.2 + 0.55 * len(labels))))
    ax = fig.add_subplot()
    has_best = summary["best_eval_iqm"].notna().any()
    for i, row in enumerate(summary.itertuples()):
        color = colors[row.variant]
        ax.errorbar(row.iqm, i - (0.12 if has_best else 0), xerr=_error(row.iqm, row.iqm_ci95_low, row.iqm_ci95_high),
                    fmt="o", color=color, capsize=4, markersize=7, label=FINAL_LABEL if i == 0 else None)
        if has_best and math.isfinite(row.best_eval_iqm):
            ax.errorbar(row.best_eval_iqm, i + 0.12,
                        xerr=_error(row.best_eval_iqm, row.best_eval_iqm_ci95_low, row.best_eval_iqm_ci95_high),
                        fmt="D", color=color, mfc="white", capsize=4, markersize=6,
                        label=BEST_LABEL if i == 0 else None)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.set_xlabel(f"{score_name}, interquartile mean over seeds")
    ax.set_title("IQM per variant: final vs best periodic evaluation")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    _note(fig, IQM_NOTE)
    return fig


def profile_taus(cells: pd.DataFrame) -> np.ndarray:
    """The thresholds of a performance profile: from just below the lowest score to the highest."""
    scores = cells["normalized_score"].to_numpy(dtype=float)
    scores = scores[np.isfinite(scores)]
    low, high = float(scores.min()), float(scores.max())
    margin = max(1.0, 0.05 * (high - low))
    return np.linspace(low - margin, high + margin, PROFILE_POINTS)


def plot_performance_profile(cells: pd.DataFrame, colors: dict, score_name: str) -> Figure:
    """The share of runs whose final score exceeds tau, per variant, with bootstrap bands."""
    score_dict = {label: group["normalized_score"].to_numpy(dtype=float)
                  for label, group in cells.groupby("variant", sort=False)}
    taus = profile_taus(cells)
    fig = _new_figure()
    ax = fig.add_subplot()
    for label, (profile, low, high) in performance_profiles(score_dict, taus).items():
        ax.plot(taus, profile, color=colors[label], linewidth=1.6, label=label)
        if np.isfinite(low).all():
            ax.fill_between(taus, low, high, color=colors[label], alpha=0.2, linewidth=0)
    ax.set_xlabel(score_name + r" $\tau$ (final evaluation)")
    ax.set_ylabel(r"Fraction of runs with score $> \tau$")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Performance profile")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    _note(fig, f"bands: {CONFIDENCE:.0%} stratified bootstrap CI (rliable's method); no band for a variant with one seed")
    return fig


def plot_improvement(pairs: pd.DataFrame) -> Figure:
    """P(X > Y) of the final score with its CI, one row per compared pair."""
    fig = _new_figure((7.5, max(2.5, 1.2 + 0.5 * len(pairs))))
    ax = fig.add_subplot()
    for i, row in enumerate(pairs.itertuples()):
        ax.errorbar(row.probability, i, xerr=_error(row.probability, row.ci95_low, row.ci95_high),
                    fmt="o", color="C0", capsize=4, markersize=7)
    ax.axvline(0.5, color="0.4", linestyle=":", linewidth=1.2)
    ax.set_yticks(range(len(pairs)), list(pairs["label"]), fontsize=8)
    ax.set_ylim(len(pairs) - 0.5, -0.5)
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("P(X > Y): probability that a run of X scores above a run of Y (final evaluation)")
    ax.set_title("Probability of improvement (X vs Y)")
    ax.grid(axis="x", alpha=0.3)
    _note(fig, f"bars: {CONFIDENCE:.0%} bootstrap CI, runs of X and Y resampled independently; 0.5: no difference")
    return fig
