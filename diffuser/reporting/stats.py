"""Statistics of scores over seeds: Student t intervals (scipy) and rliable's robust aggregates.

Scores are arrays [runs, tasks] (one column per task; a spec with one dataset has one column).
rliable (Agarwal et al., 2021, "Deep RL at the edge of the statistical precipice") computes the
interquartile mean (the mean of the middle 50% of all runs x tasks, `scipy.stats.trim_mean` at
0.25), its stratified bootstrap confidence interval (runs are resampled with replacement within
each task), performance profiles (the share of runs scoring above tau) and the probability of
improvement P(X > Y) (Mann-Whitney U / (m n), averaged over tasks). All intervals are percentile
intervals of BOOTSTRAP_REPS resamples drawn from a fixed seed, so a summary is reproducible.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
BOOTSTRAP_REPS = 2000
BOOTSTRAP_SEED = 0


def mean_confidence_interval(values, level: float = CONFIDENCE) -> tuple[float, float]:
    """(mean, half-width of the Student t confidence interval of the mean); half-width NaN for n < 2."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    mean = float(values.mean())
    if values.size < 2:
        return mean, math.nan
    sem = float(values.std(ddof=1)) / math.sqrt(values.size)
    return mean, float(stats.t.ppf(0.5 + level / 2.0, values.size - 1)) * sem


def as_runs_by_tasks(scores) -> np.ndarray:
    """A 1-D array of runs becomes one task column; a 2-D array is [runs, tasks] already."""
    scores = np.asarray(scores, dtype=float)
    return scores[:, None] if scores.ndim == 1 else scores


def iqm(scores) -> float:
    """The interquartile mean of all runs x tasks (rliable's aggregate_iqm)."""
    from rliable import metrics

    return float(metrics.aggregate_iqm(as_runs_by_tasks(scores)))


def iqm_interval(scores, reps: int = BOOTSTRAP_REPS, level: float = CONFIDENCE,
                 seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """(IQM, low, high): the stratified bootstrap interval over runs; (IQM, NaN, NaN) with one run."""
    from rliable import library, metrics

    scores = as_runs_by_tasks(scores)
    point = iqm(scores)
    if scores.shape[0] < 2:
        return point, math.nan, math.nan
    _, intervals = library.get_interval_estimates(
        {"x": scores}, lambda s: np.array([metrics.aggregate_iqm(s)]), reps=reps,
        confidence_interval_size=level, random_state=np.random.RandomState(seed),
    )
    low, high = intervals["x"][:, 0]
    return point, float(low), float(high)


def probability_of_improvement(scores_x, scores_y, reps: int = BOOTSTRAP_REPS, level: float = CONFIDENCE,
                               seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """(P(X > Y), low, high) over runs of X and Y (ties count half), averaged over tasks.

    The interval resamples the runs of X and of Y independently within each task; NaN with fewer
    than two runs on either side.
    """
    from rliable import library, metrics

    x, y = as_runs_by_tasks(scores_x), as_runs_by_tasks(scores_y)
    point = float(metrics.probability_of_improvement(x, y))
    if min(x.shape[0], y.shape[0]) < 2:
        return point, math.nan, math.nan
    _, intervals = library.get_interval_estimates(
        {"pair": (x, y)}, lambda a, b: np.array([metrics.probability_of_improvement(a, b)]), reps=reps,
        confidence_interval_size=level, random_state=np.random.RandomState(seed),
    )
    low, high = intervals["pair"][:, 0]
    return point, float(low), float(high)


def performance_profiles(score_dict: dict[str, np.ndarray], taus: np.ndarray, reps: int = BOOTSTRAP_REPS,
                         level: float = CONFIDENCE, seed: int = BOOTSTRAP_SEED) -> dict[str, tuple]:
    """{name: (profile, low, high)}: the share of runs x tasks scoring above each tau, with its interval.

    The interval is NaN for a variant with one run.
    """
    from rliable import library

    np.random.seed(seed)  # create_performance_profile takes no random state; its bootstrap draws from numpy's
    profiles = {}
    with_runs = {name: as_runs_by_tasks(s) for name, s in score_dict.items()}
    several = {name: s for name, s in with_runs.items() if s.shape[0] >= 2}
    points, intervals = (library.create_performance_profile(several, taus, reps=reps, confidence_interval_size=level)
                         if several else ({}, {}))
    for name, scores in with_runs.items():
        if name in several:
            profiles[name] = (np.asarray(points[name]), intervals[name][0], intervals[name][1])
        else:
            profile = (scores.reshape(-1)[:, None] > taus[None, :]).mean(axis=0)
            nan = np.full_like(profile, math.nan)
            profiles[name] = (profile, nan, nan)
    return profiles
