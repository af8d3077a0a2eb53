"""D4RL's HDF5 layout read with h5py alone: the arrays as stored, derived next observations, the
`infos/` group, and clear errors for missing, foreign or truncated files."""

import h5py
import numpy as np
import pytest

from diffuser.datasets.d4rl import read_d4rl_hdf5
from diffuser.datasets.episodes import load_processed
from diffuser.datasets.prepare import prepare_dataset
from diffuser.errors import DatasetError

HOPPER = "hopper-medium-v2"  # evaluated on Hopper-v5: 11-dim observations, 3-dim actions in [-1, 1]


def d4rl_steps(n=40, obs_dim=11, action_dim=3, terminal_at=(9,), timeout_at=(24,), seed=0) -> dict:
    """Random steps in D4RL's layout with consistent next_observations (each episode's own successor)."""
    rng = np.random.default_rng(seed)
    observations = rng.normal(size=(n, obs_dim)).astype(np.float32)
    terminals = np.zeros(n, dtype=bool)
    terminals[list(terminal_at)] = True
    timeouts = np.zeros(n, dtype=bool)
    timeouts[list(timeout_at)] = True
    next_observations = rng.normal(size=(n, obs_dim)).astype(np.float32)
    continuing = ~(terminals | timeouts)[:-1]
    next_observations[:-1][continuing] = observations[1:][continuing]
    return {
        "observations": observations,
        "actions": rng.uniform(-1, 1, size=(n, action_dim)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
        "next_observations": next_observations,
        "infos/qpos": rng.normal(size=(n, 6)).astype(np.float32),
    }


def write_d4rl_hdf5(path, arrays: dict, drop=()) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as file:
        for key, value in arrays.items():
            if key not in drop:
                file.create_dataset(key, data=value)


def test_read_returns_the_stored_arrays_and_infos(tmp_path):
    steps = d4rl_steps()
    write_d4rl_hdf5(tmp_path / "x.hdf5", steps)
    arrays = read_d4rl_hdf5(tmp_path / "x.hdf5")
    assert set(arrays) == set(steps)
    for key, value in steps.items():
        np.testing.assert_array_equal(arrays[key], value)
        assert arrays[key].dtype == value.dtype


def test_old_files_get_float_flags_cast_rewards_flattened_and_false_timeouts(tmp_path):
    steps = d4rl_steps()
    stored = {
        **steps,
        "terminals": steps["terminals"].astype(np.float32),
        "rewards": steps["rewards"][:, None],
    }
    write_d4rl_hdf5(tmp_path / "v0.hdf5", stored, drop=("timeouts",))
    arrays = read_d4rl_hdf5(tmp_path / "v0.hdf5")
    assert arrays["terminals"].dtype == bool and arrays["timeouts"].dtype == bool
    np.testing.assert_array_equal(arrays["terminals"], steps["terminals"])
    assert not arrays["timeouts"].any()
    np.testing.assert_array_equal(arrays["rewards"], steps["rewards"])


def test_next_observations_are_derived_within_episodes(tmp_path):
    steps = d4rl_steps(n=12, terminal_at=(3,), timeout_at=(7,))
    write_d4rl_hdf5(tmp_path / "x.hdf5", steps, drop=("next_observations",))
    derived = read_d4rl_hdf5(tmp_path / "x.hdf5")["next_observations"]
    observations = steps["observations"]
    for t in range(12):
        # Steps 3 and 7 end episodes and 11 ends the data: no successor, so their own observation.
        expected = observations[t] if t in (3, 7, 11) else observations[t + 1]
        np.testing.assert_array_equal(derived[t], expected)


def test_missing_file_says_where_to_put_it(tmp_path):
    path = tmp_path / "raw" / "d4rl" / "hopper-medium-v2.hdf5"
    with pytest.raises(DatasetError, match="D4RL") as caught:
        read_d4rl_hdf5(path)
    assert f"put it at {path}" in str(caught.value)


def test_a_file_that_is_not_hdf5_or_is_truncated_is_rejected(tmp_path):
    text = tmp_path / "text.hdf5"
    text.write_text("observations,actions\n1,2\n")
    write_d4rl_hdf5(tmp_path / "good.hdf5", d4rl_steps(n=2000))
    truncated = tmp_path / "truncated.hdf5"
    truncated.write_bytes((tmp_path / "good.hdf5").read_bytes()[:5000])
    for path in (text, truncated):
        with pytest.raises(DatasetError, match="not a readable HDF5 file") as caught:
            read_d4rl_hdf5(path)
        assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"drop": ("actions",)}, r"no dataset\(s\) actions"),
        ({"arrays": {"rewards": np.zeros(39, np.float32)}}, r"different lengths .*rewards=39"),
        ({"arrays": {"timeouts": np.full(40, 2.0, np.float32)}}, r"`timeouts` .* 0/1 flags"),
    ],
)
def test_malformed_files_name_the_field(tmp_path, change, message):
    path = tmp_path / "bad.hdf5"
    write_d4rl_hdf5(path, {**d4rl_steps(), **change.get("arrays", {})}, drop=change.get("drop", ()))
    with pytest.raises(DatasetError, match=message) as caught:
        read_d4rl_hdf5(path)
    assert str(path) in str(caught.value)


def test_prepare_round_trips_a_d4rl_file(tmp_path):
    steps = d4rl_steps(n=40, terminal_at=(9,), timeout_at=(24,))
    write_d4rl_hdf5(tmp_path / "raw" / "d4rl" / f"{HOPPER}.hdf5", steps)
    arrays, metadata = load_processed(prepare_dataset(HOPPER, tmp_path))
    for key in ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations"):
        np.testing.assert_array_equal(arrays[key], steps[key])
    np.testing.assert_array_equal(arrays["episode_starts"], [0, 10, 25])
    np.testing.assert_array_equal(arrays["episode_lengths"], [10, 15, 15])
    assert metadata["source"] == "d4rl" and metadata["env_id"] == "Hopper-v5"
    assert (metadata["obs_dim"], metadata["action_dim"], metadata["n_steps"]) == (11, 3, 40)
    assert metadata["partial_last_episode"] == "kept"
    assert metadata["ref_min_score"] == pytest.approx(-20.272305)
    assert metadata["generation"] is None
