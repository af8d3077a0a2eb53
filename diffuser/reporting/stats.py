"""Statistics of scores over seeds: Student t intervals and the robust aggregates of rliable, on scipy.

Scores are arrays [runs, tasks] (one column per task; a spec with one dataset has one column). The
aggregates are those of Agarwal et al. (2021), "Deep RL at the edge of the statistical precipice"
(the rliable package): the interquartile mean (the mean of the middle 50% of all runs x tasks,
`scipy.stats.trim_mean` at 0.25, which is what rliable calls), its stratified bootstrap confidence
interval (runs resampled with replacement within each task: each task is a separate sample of
`scipy.stats.bootstrap`), performance profiles (the share of runs scoring above tau) and the
probability of improvement P(X > Y) (Mann-Whitney U / (m n), ties counting half, averaged over
tasks). All intervals are percentile intervals, as rliable's, of BOOTSTRAP_REPS resamples drawn
from a fixed seed, so a summary is reproducible.

rliable itself is not used: rliable 1.2.0 needs arch < 8, and arch 7.2 fails to import beside
pandas 3 (this project's pandas>=2.1 resolves to 3.x), so its bootstrap module cannot load here.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
BOOTSTRAP_REPS = 10_000
BOOTSTRAP_SEED = 0
IQM_CUT = 0.25  # trimmed from each end: the interquartile mean


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


def _pooled_iqm(*tasks, axis=-1):
    """IQM over all runs of all task samples (each [..., runs]); vectorized for scipy.stats.bootstrap."""
    return stats.trim_mean(np.concatenate(tasks, axis=axis), IQM_CUT, axis=axis)


def iqm(scores) -> float:
    """The interquartile mean of all runs x tasks."""
    return float(stats.trim_mean(as_runs_by_tasks(scores), IQM_CUT, axis=None))


def _percentile_interval(samples: tuple, statistic, reps: int, level: float, seed: int):
    result = stats.bootstrap(samples, statistic, n_resamples=reps, confidence_level=level, method="percentile",
                             vectorized=True, rng=np.random.default_rng(seed))
    return result.confidence_interval.low, result.confidence_interval.high


def iqm_interval(scores, reps: int = BOOTSTRAP_REPS, level: float = CONFIDENCE,
                 seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """(IQM, low, high): the stratified bootstrap interval over runs; (IQM, NaN, NaN) with one run."""
    scores = as_runs_by_tasks(scores)
    point = iqm(scores)
    if scores.shape[0] < 2:
        return point, math.nan, math.nan
    low, high = _percentile_interval(tuple(scores.T), _pooled_iqm, reps, level, seed)
    return point, float(low), float(high)


def _improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) per task from runs x [..., m] and y [..., n], ties counting half (U / (m n))."""
    wins = (x[..., :, None] > y[..., None, :]).mean(axis=(-2, -1))
    ties = (x[..., :, None] == y[..., None, :]).mean(axis=(-2, -1))
    return wins + 0.5 * ties


def probability_of_improvement(scores_x, scores_y, reps: int = BOOTSTRAP_REPS, level: float = CONFIDENCE,
                               seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """(P(X > Y), low, high) over runs of X and Y, averaged over tasks.

    The interval resamples the runs of X and of Y independently within each task; NaN with fewer
    than two runs on either side.
    """
    x, y = as_runs_by_tasks(scores_x), as_runs_by_tasks(scores_y)
    n_tasks = x.shape[1]

    def statistic(*samples, axis=-1):
        return np.mean([_improvement(samples[t], samples[n_tasks + t]) for t in range(n_tasks)], axis=0)

    point = float(statistic(*x.T, *y.T))
    if min(x.shape[0], y.shape[0]) < 2:
        return point, math.nan, math.nan
    low, high = _percentile_interval((*x.T, *y.T), statistic, reps, level, seed)
    return point, float(low), float(high)


def performance_profiles(score_dict: dict[str, np.ndarray], taus: np.ndarray, reps: int = BOOTSTRAP_REPS,
                         level: float = CONFIDENCE, seed: int = BOOTSTRAP_SEED) -> dict[str, tuple]:
    """{name: (profile, low, high)}: the share of runs x tasks scoring above each tau, with its
    stratified bootstrap interval (NaN for a variant with one run)."""
    taus = np.asarray(taus, dtype=float)

    def statistic(*tasks, axis=-1):
        runs = np.concatenate(tasks, axis=axis)  # [..., runs x tasks]
        return np.stack([(runs > tau).mean(axis=axis) for tau in taus])

    profiles = {}
    for name, scores in score_dict.items():
        scores = as_runs_by_tasks(scores)
        profile = statistic(*scores.T)
        if scores.shape[0] < 2:
            nan = np.full_like(profile, math.nan)
            profiles[name] = (profile, nan, nan)
        else:
            low, high = _percentile_interval(tuple(scores.T), statistic, reps, level, seed)
            profiles[name] = (profile, low, high)
    return profiles
