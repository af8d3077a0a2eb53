"""Minari datasets from the local store only: dict observations flattened in the documented order,
episodes concatenated with their ends kept, env spec and reference scores from the metadata."""

import warnings

import gymnasium as gym
import gymnasium_robotics
import numpy as np
import pytest

minari = pytest.importorskip("minari")
from minari.data_collector import EpisodeBuffer  # noqa: E402

from diffuser.datasets.episodes import load_processed  # noqa: E402
from diffuser.datasets.minari_source import read_minari  # noqa: E402
from diffuser.datasets.prepare import prepare_dataset  # noqa: E402
from diffuser.errors import DatasetError  # noqa: E402

gym.register_envs(gymnasium_robotics)

DATASET_ID = "diffuser-test/umaze-tiny-v0"
# (steps, terminated at the end, truncated at the end); the last episode's recording just stopped.
EPISODES = ((5, True, False), (7, False, True), (4, False, False))


def _episode(index: int, n_steps: int, terminated: bool, truncated: bool, rng) -> EpisodeBuffer:
    # Distinct value ranges per entry, so the flattening order is visible in the result.
    observations = {
        "observation": rng.uniform(0, 1, size=(n_steps + 1, 4)),
        "achieved_goal": rng.uniform(10, 11, size=(n_steps + 1, 2)),
        "desired_goal": rng.uniform(20, 21, size=(n_steps + 1, 2)),
    }
    terminations = np.zeros(n_steps, dtype=bool)
    truncations = np.zeros(n_steps, dtype=bool)
    terminations[-1], truncations[-1] = terminated, truncated
    return EpisodeBuffer(
        id=index,
        observations=observations,
        actions=rng.uniform(-1, 1, size=(n_steps, 2)),
        rewards=rng.normal(size=n_steps),
        terminations=terminations,
        truncations=truncations,
    )


@pytest.fixture
def minari_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    rng = np.random.default_rng(0)
    buffers = [_episode(i, *spec, rng) for i, spec in enumerate(EPISODES)]
    box = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float64)
    observation_space = gym.spaces.Dict(
        {
            "observation": gym.spaces.Box(-np.inf, np.inf, shape=(4,), dtype=np.float64),
            "achieved_goal": box,
            "desired_goal": box,
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # minari warns about every optional field left out
        minari.create_dataset_from_buffers(
            DATASET_ID,
            buffers,
            eval_env="PointMaze_UMaze-v3",
            observation_space=observation_space,
            action_space=gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32),
            ref_min_score=1.5,
            ref_max_score=30.0,
        )
    return buffers


def _expected(buffers, keys):
    flat = [np.concatenate([b.observations[k] for k in keys], axis=1).astype(np.float32) for b in buffers]
    return np.concatenate([f[:-1] for f in flat]), np.concatenate([f[1:] for f in flat])


def test_read_minari_flattens_and_concatenates_episodes(minari_store):
    arrays, info = read_minari(DATASET_ID)
    observations, next_observations = _expected(minari_store, ["observation", "desired_goal"])
    np.testing.assert_array_equal(arrays["observations"], observations)
    np.testing.assert_array_equal(arrays["next_observations"], next_observations)
    np.testing.assert_allclose(
        arrays["actions"], np.concatenate([b.actions for b in minari_store]), rtol=1e-6
    )
    np.testing.assert_allclose(
        arrays["rewards"], np.concatenate([b.rewards for b in minari_store]), rtol=1e-6
    )
    ends = np.cumsum([n for n, _, _ in EPISODES]) - 1  # [4, 11, 15]
    np.testing.assert_array_equal(np.flatnonzero(arrays["terminals"]), [ends[0]])
    # The truncated episode and the one whose recording stopped both end in a cut.
    np.testing.assert_array_equal(np.flatnonzero(arrays["timeouts"]), ends[1:])

    assert info["env_id"] == "PointMaze_UMaze-v3" and info["max_episode_steps"] == 300
    assert info["observation_keys"] == ["observation", "desired_goal"] and info["goal_conditioned"]
    assert (info["ref_min_score"], info["ref_max_score"]) == (1.5, 30.0)
    assert info["action_low"] == [-1.0, -1.0] and info["action_high"] == [1.0, 1.0]


def test_achieved_goal_comes_last_when_asked_for(minari_store):
    arrays, info = read_minari(DATASET_ID, include_achieved_goal=True)
    assert info["observation_keys"] == ["observation", "desired_goal", "achieved_goal"]
    observations, _ = _expected(minari_store, info["observation_keys"])
    np.testing.assert_array_equal(arrays["observations"], observations)


def test_prepare_minari_round_trips(minari_store, tmp_path):
    arrays, metadata = load_processed(prepare_dataset(f"minari:{DATASET_ID}", tmp_path / "data"))
    observations, next_observations = _expected(minari_store, ["observation", "desired_goal"])
    np.testing.assert_array_equal(arrays["observations"], observations)
    np.testing.assert_array_equal(arrays["next_observations"], next_observations)
    np.testing.assert_array_equal(arrays["episode_lengths"], [n for n, _, _ in EPISODES])
    assert metadata["source"] == "minari" and metadata["name"] == f"minari:{DATASET_ID}"
    assert metadata["obs_dim"] == 6 and metadata["env_id"] == "PointMaze_UMaze-v3"
    assert metadata["partial_last_episode"] == "none"
    assert metadata["reference_source"].startswith("Minari dataset metadata")


def test_a_missing_dataset_is_never_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "empty"))

    def no_download(*args, **kwargs):
        pytest.fail("read_minari must not download")

    monkeypatch.setattr(minari.storage.hosting, "download_dataset", no_download)
    with pytest.raises(DatasetError, match="never downloads") as caught:
        read_minari("D4RL/door/human-v2")
    assert "MINARI_DATASETS_PATH" in str(caught.value) and "minari download D4RL/door/human-v2" in str(
        caught.value
    )


def test_a_dataset_without_environment_cannot_be_prepared(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    rng = np.random.default_rng(1)
    buffer = EpisodeBuffer(
        id=0,
        observations=rng.normal(size=(4, 3)),
        actions=rng.uniform(-1, 1, size=(3, 1)),
        rewards=np.ones(3),
        terminations=np.array([False, False, True]),
        truncations=np.zeros(3, dtype=bool),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers(
            "box-tiny-v0",
            [buffer],
            observation_space=gym.spaces.Box(-np.inf, np.inf, shape=(3,)),
            action_space=gym.spaces.Box(-1.0, 1.0, shape=(1,)),
        )
    arrays, info = read_minari("box-tiny-v0")
    assert info["observation_keys"] is None and info["env_id"] is None
    np.testing.assert_array_equal(arrays["observations"], buffer.observations[:-1].astype(np.float32))
    with pytest.raises(DatasetError, match="records no environment"):
        prepare_dataset("minari:box-tiny-v0", tmp_path / "data")
