"""The processed format: episode splitting by D4RL's rules, validation of step arrays, statistics,
and atomic, checked writing and reading of data/processed/<name>/."""

import json
import re

import numpy as np
import pytest

from diffuser.datasets import episodes
from diffuser.datasets.episodes import (
    ACTION_BOUND_TOLERANCE,
    EPISODES_FILE,
    METADATA_FILE,
    compute_stats,
    load_processed,
    save_processed,
    split_episodes,
    validate_arrays,
)
from diffuser.errors import DatasetError

SOURCE = "data/raw/d4rl/toy.hdf5"


def _flags(n, indices):
    flags = np.zeros(n, dtype=bool)
    flags[list(indices)] = True
    return flags


@pytest.mark.parametrize(
    ("n", "terminal_at", "timeout_at", "keep", "starts", "lengths"),
    [
        # A terminal on the last step closes the last episode: nothing partial to keep or drop.
        (6, [2, 5], [], True, [0, 3], [3, 3]),
        (6, [2, 5], [], False, [0, 3], [3, 3]),
        # Terminal and timeout on the same step end one episode, not two.
        (6, [2], [2, 5], True, [0, 3], [3, 3]),
        # Consecutive ends make one-step episodes.
        (5, [1, 2], [3], True, [0, 2, 3, 4], [2, 1, 1, 1]),
        # No end at all: the whole stream is one partial episode, or nothing.
        (4, [], [], True, [0], [4]),
        (4, [], [], False, [], []),
        # Steps after the last end: kept as a partial episode, or dropped.
        (7, [], [2], True, [0, 3], [3, 4]),
        (7, [], [2], False, [0], [3]),
        # An end on the very first step.
        (3, [0], [], True, [0, 1], [1, 2]),
        (0, [], [], True, [], []),
    ],
)
def test_split_episodes_follows_d4rl_rules(n, terminal_at, timeout_at, keep, starts, lengths):
    got_starts, got_lengths = split_episodes(_flags(n, terminal_at), _flags(n, timeout_at), keep_partial=keep)
    assert got_starts.dtype == got_lengths.dtype == np.int64
    np.testing.assert_array_equal(got_starts, starts)
    np.testing.assert_array_equal(got_lengths, lengths)


def _steps(n=20, obs_dim=3, action_dim=2, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    observations = rng.normal(size=(n + 1, obs_dim)).astype(np.float32)
    return {
        "observations": observations[:-1],
        "next_observations": observations[1:],
        "actions": rng.uniform(-1, 1, size=(n, action_dim)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": _flags(n, [7]),
        "timeouts": _flags(n, [15]),
    }


def _validate(arrays, **kwargs):
    validate_arrays(arrays, path=SOURCE, action_low=[-1, -1], action_high=[1, 1], **kwargs)


def test_valid_arrays_pass_validation():
    arrays = _steps()
    arrays["actions"][0] = [1.0 + ACTION_BOUND_TOLERANCE / 2, -1.0]  # float32 rounding at the bound is fine
    before = {key: value.copy() for key, value in arrays.items()}
    _validate(arrays, obs_dim=3, action_dim=2)
    for key, value in before.items():
        np.testing.assert_array_equal(arrays[key], value, err_msg=f"validation changed `{key}`")
    # just past the tolerance the same arrays are rejected, so the pass above is not vacuous
    arrays["actions"][0, 0] = 1.0 + 2 * ACTION_BOUND_TOLERANCE
    with pytest.raises(DatasetError, match="1 value"):
        _validate(arrays, obs_dim=3, action_dim=2)


def _without(key):
    arrays = _steps()
    del arrays[key]
    return arrays


def _replace(key, value):
    arrays = _steps()
    arrays[key] = value(arrays[key])
    return arrays


def _set(key, index, value):
    arrays = _steps()
    arrays[key] = arrays[key].copy()
    arrays[key][index] = value
    return arrays


@pytest.mark.parametrize(
    ("arrays", "kwargs", "message"),
    [
        (_without("timeouts"), {}, r"no field\(s\) timeouts"),
        (_without("next_observations"), {}, r"no field\(s\) next_observations"),
        (_replace("rewards", lambda r: r[:-1]), {}, r"different lengths .*rewards=19"),
        ({k: v[:0] for k, v in _steps().items()}, {}, "contains no steps"),
        (_set("observations", (4, 1), np.nan), {}, r"`observations` .* NaN or inf, first at step 4"),
        (_set("next_observations", (9, 0), np.inf), {}, r"`next_observations` .* first at step 9"),
        (_set("rewards", 11, -np.inf), {}, r"`rewards` .* first at step 11"),
        (_set("actions", (3, 0), np.nan), {}, r"`actions` .* first at step 3"),
        (_replace("rewards", lambda r: r[:, None]), {}, r"`rewards` .* shape \(20, 1\)"),
        (_replace("next_observations", lambda o: o[:, :2]), {}, r"`next_observations` .* shape \(20, 2\)"),
        (_steps(), {"obs_dim": 4}, r"`observations` .* dimension 3 .* environment's is 4"),
        (_steps(), {"action_dim": 6}, r"`actions` .* dimension 2 .* environment's is 6"),
        (_replace("terminals", lambda t: t.astype(np.float32) * 0.5), {}, r"`terminals` .* 0/1 flags"),
    ],
)
def test_bad_arrays_raise_dataset_error_naming_file_and_field(arrays, kwargs, message):
    with pytest.raises(DatasetError, match=message) as caught:
        _validate(arrays, **kwargs)
    assert SOURCE in str(caught.value)


def test_actions_outside_bounds_report_count_and_worst():
    arrays = _steps()
    arrays["actions"][2, 1] = 1.5
    arrays["actions"][8, 0] = -3.25
    arrays["actions"][9, 0] = 1.0 + 10 * ACTION_BOUND_TOLERANCE
    with pytest.raises(DatasetError) as caught:
        _validate(arrays)
    message = str(caught.value)
    assert SOURCE in message and "`actions`" in message
    assert "3 value(s) outside" in message
    assert re.search(r"worst -3\.25 at step 8, dimension 0", message)


def test_compute_stats_per_dimension():
    arrays = _steps(n=50)
    stats = compute_stats(arrays)
    np.testing.assert_allclose(
        stats["observations"]["mean"], arrays["observations"].astype(np.float64).mean(0), rtol=1e-9
    )
    np.testing.assert_allclose(stats["actions"]["std"], arrays["actions"].std(0), rtol=1e-5)
    np.testing.assert_allclose(stats["observations"]["max"], arrays["observations"].max(0))
    assert stats["rewards"]["min"] == pytest.approx(float(arrays["rewards"].min()))
    assert isinstance(stats["rewards"]["mean"], float)
    json.dumps(stats)  # plain JSON, as metadata.json stores it


def _processed(n=20):
    arrays = _steps(n)
    starts, lengths = split_episodes(arrays["terminals"], arrays["timeouts"])
    arrays.update(episode_starts=starts, episode_lengths=lengths)
    metadata = {"name": "toy", "obs_dim": 3, "action_dim": 2, "n_steps": n, "n_episodes": len(starts)}
    return arrays, metadata


def test_save_then_load_round_trips(tmp_path):
    arrays, metadata = _processed()
    out = save_processed(str(tmp_path / "processed" / "toy"), arrays, metadata)  # a str path works too
    assert out == tmp_path / "processed" / "toy"
    loaded, loaded_metadata = load_processed(out)
    assert set(loaded) == set(arrays)
    for key, value in arrays.items():
        np.testing.assert_array_equal(loaded[key], value)
    assert loaded_metadata == {"format_version": 1, **metadata}
    assert sorted(p.name for p in (tmp_path / "processed").iterdir()) == ["toy"], (
        "no temporary directory is left"
    )


def test_save_replaces_an_existing_dataset_and_a_failed_save_keeps_the_old(tmp_path, monkeypatch):
    out = tmp_path / "toy"
    arrays, metadata = _processed()
    save_processed(out, arrays, metadata)
    newer, newer_metadata = _processed(n=30)
    save_processed(out, newer, newer_metadata)
    assert load_processed(out)[1]["n_steps"] == 30

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(episodes.np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        save_processed(out, arrays, metadata)
    monkeypatch.undo()
    assert load_processed(out)[1]["n_steps"] == 30, "the previous dataset survives a failed write"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda d: (d / EPISODES_FILE).write_bytes((d / EPISODES_FILE).read_bytes()[:300]),
            "episodes.npz is truncated or corrupt",
        ),
        (
            lambda d: (d / EPISODES_FILE).write_bytes(b"not a zip file"),
            "episodes.npz is truncated or corrupt",
        ),
        (
            lambda d: (d / METADATA_FILE).write_text('{"format_version": 1, "n_st'),
            "metadata.json is truncated or corrupt",
        ),
        (lambda d: (d / EPISODES_FILE).unlink(), "episodes.npz is missing"),
        (
            lambda d: (d / METADATA_FILE).write_text(
                json.dumps({**json.loads((d / METADATA_FILE).read_text()), "format_version": 0})
            ),
            "format_version 0",
        ),
        (
            lambda d: (d / METADATA_FILE).write_text(
                json.dumps({**json.loads((d / METADATA_FILE).read_text()), "n_steps": 99})
            ),
            "n_steps=99",
        ),
    ],
)
def test_damaged_processed_dataset_says_to_re_run_prepare(tmp_path, damage, message):
    arrays, metadata = _processed()
    out = save_processed(tmp_path / "toy", arrays, metadata)
    damage(out)
    with pytest.raises(DatasetError, match=message) as caught:
        load_processed(out)
    assert "python -m diffuser prepare --dataset toy" in str(caught.value)


def test_inconsistent_episode_arrays_are_rejected(tmp_path):
    arrays, metadata = _processed()
    arrays["episode_lengths"] = arrays["episode_lengths"] + np.array([1, -1, 0])
    with pytest.raises(DatasetError, match="do not tile"):
        save_processed(tmp_path / "toy", arrays, metadata)
    assert not (tmp_path / "toy").exists()


def test_missing_processed_dataset_says_how_to_build_it(tmp_path):
    with pytest.raises(DatasetError, match=r"No processed dataset at .*prepare --dataset nothing"):
        load_processed(tmp_path / "nothing")
