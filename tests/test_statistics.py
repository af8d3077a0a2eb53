"""Statistics over seeds: Student t interval (scipy), IQM, stratified bootstrap CI, P(X > Y), profiles, best vs last."""

import math

import numpy as np
import pandas as pd
import pytest

from diffuser.reporting.aggregate import best_and_last
from diffuser.reporting.stats import (
    iqm,
    iqm_interval,
    mean_confidence_interval,
    performance_profiles,
    probability_of_improvement,
)


def test_t_interval_matches_the_t_table():
    table = {2: 12.706, 3: 4.303, 4: 3.182, 11: 2.228, 31: 2.042}  # n -> t(0.975, n - 1)
    for n, t in table.items():
        values = np.arange(n, dtype=float) ** 1.5
        mean, half = mean_confidence_interval(values)
        assert mean == pytest.approx(values.mean())
        assert half / (values.std(ddof=1) / math.sqrt(n)) == pytest.approx(t, abs=5e-4)  # the table's 3 decimals
    assert math.isnan(mean_confidence_interval([3.0])[1])


def test_iqm_is_the_mean_of_the_middle_half():
    assert iqm([8, 1, 7, 2, 6, 3, 5, 4]) == 4.5  # (3 + 4 + 5 + 6) / 4
    assert iqm([10.0, 0.0, 7.0, 3.0]) == 5.0  # (3 + 7) / 2
    # [runs, tasks]: the middle half of all 8 scores together
    assert iqm(np.array([[0.0, 100.0], [10.0, 20.0], [30.0, 40.0], [50.0, 60.0]])) == 35.0  # sorted 0 10 [20 30 40 50] 60 100


def independent_stratified_bootstrap(scores: np.ndarray, reps: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of the IQM, runs resampled with replacement within each task."""
    rng = np.random.default_rng(seed)
    runs, tasks = scores.shape
    estimates = np.empty(reps)
    for r in range(reps):
        idx = rng.integers(0, runs, size=(runs, tasks))
        sample = np.sort(np.take_along_axis(scores, idx, axis=0).ravel())
        cut = int(0.25 * sample.size)  # scipy.stats.trim_mean's rule
        estimates[r] = sample[cut:sample.size - cut].mean()
    return float(np.percentile(estimates, 2.5)), float(np.percentile(estimates, 97.5))


@pytest.mark.parametrize("shape", [(8, 1), (5, 3)])
def test_iqm_bootstrap_interval_agrees_with_an_independent_computation(shape):
    scores = np.random.default_rng(7).normal(50.0, 15.0, size=shape)
    point, low, high = iqm_interval(scores, reps=20000)
    assert point == pytest.approx(iqm(scores))
    expected_low, expected_high = independent_stratified_bootstrap(scores, reps=20000, seed=1)
    width = expected_high - expected_low
    assert low < point < high
    assert low == pytest.approx(expected_low, abs=0.05 * width)
    assert high == pytest.approx(expected_high, abs=0.05 * width)


def test_iqm_bootstrap_interval_of_two_runs_is_their_range():
    # by hand: resampling 2 runs gives (a, a), (a, b), (b, a), (b, b), IQM a, (a+b)/2, (a+b)/2, b (2 runs
    # trim nothing); a and b each have probability 1/4 > 2.5%, so the 95% percentile interval is [a, b]
    assert iqm_interval([10.0, 30.0], reps=4000) == (20.0, 10.0, 30.0)
    # equal runs: every resample has the same IQM, the interval is that point
    assert iqm_interval([7.0, 7.0, 7.0], reps=500) == (7.0, 7.0, 7.0)


def test_iqm_interval_of_one_seed_is_undefined():
    point, low, high = iqm_interval([42.0])
    assert point == 42.0 and math.isnan(low) and math.isnan(high)


def test_probability_of_improvement_counts_pairs_and_ties_half():
    x, y = [3.0, 4.0, 5.0], [1.0, 2.0, 3.0]
    point, low, high = probability_of_improvement(x, y, reps=2000)
    assert point == pytest.approx(8.5 / 9)  # 3 beats 1 and 2 and ties 3; 4 and 5 beat all three
    assert low <= point <= high <= 1.0
    assert probability_of_improvement(y, x)[0] == pytest.approx(0.5 / 9)


def test_performance_profile_is_the_share_of_runs_above_tau():
    taus = np.array([0.0, 15.0, 25.0, 50.0])
    profiles = performance_profiles({"a": np.array([10.0, 20.0, 30.0, 40.0]), "b": np.array([5.0])}, taus, reps=200)
    profile, low, high = profiles["a"]
    assert list(profile) == [1.0, 0.75, 0.5, 0.0]
    assert (low <= profile + 1e-12).all() and (profile <= high + 1e-12).all()
    assert list(profiles["b"][0]) == [1.0, 0.0, 0.0, 0.0] and np.isnan(profiles["b"][1]).all()


def test_best_and_last_periodic_evaluation_are_picked_right():
    rows = [(400, "eval_normalized_score", 60.0), (100, "eval_normalized_score", 50.0), (200, "loss", 99.0),
            (200, "eval_normalized_score", 80.0), (300, "eval_normalized_score", 80.0)]
    metrics = pd.DataFrame(rows, columns=["step", "metric", "value"])
    assert best_and_last(metrics) == {"best_eval_score": 80.0, "best_eval_step": 200,
                                      "last_eval_score": 60.0, "last_eval_step": 400}
    none = best_and_last(metrics[metrics["metric"] == "loss"])
    assert all(math.isnan(v) for v in none.values())
