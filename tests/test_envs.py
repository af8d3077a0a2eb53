"""Evaluation environments from metadata, dataset-name specs, and reference scores."""

import sys

import numpy as np
import pytest

from diffuser.envs.make import EnvironmentUnavailable, make_env, make_vector_env
from diffuser.envs.scores import D4RL_LOCOMOTION_SCORES, normalized_score, reference_scores
from diffuser.envs.specs import env_spec_for_dataset


def test_make_env_flattens_dict_observations_in_the_listed_order():
    metadata = env_spec_for_dataset("gen-maze2d-umaze")
    assert metadata["observation_keys"] == ["observation", "desired_goal"]
    env = make_env(metadata, seed=3)
    obs, _ = env.reset(seed=3)
    inner = env.unwrapped
    assert obs.shape == (6,) and env.observation_space.shape == (6,)
    np.testing.assert_allclose(obs[:2], inner.data.qpos)
    np.testing.assert_allclose(obs[2:4], inner.data.qvel)
    np.testing.assert_allclose(obs[4:], inner.goal)
    env.close()

    # The listed order wins over the Dict space's own (sorted) order.
    reversed_env = make_env({**metadata, "observation_keys": ["desired_goal", "observation"]})
    obs, _ = reversed_env.reset(seed=3)
    np.testing.assert_allclose(obs[:2], reversed_env.unwrapped.goal)
    np.testing.assert_allclose(obs[2:4], reversed_env.unwrapped.data.qpos)
    reversed_env.close()


def test_make_env_truncates_at_the_metadata_episode_length():
    metadata = {**env_spec_for_dataset("gen-maze2d-medium"), "max_episode_steps": 25}
    env = make_env(metadata)
    env.reset(seed=0)
    steps, truncated = 0, False
    while not truncated:
        _, _, terminated, truncated, _ = env.step(np.zeros(2))
        assert not terminated, "the evaluation maze task is continuing"
        steps += 1
    assert steps == 25
    assert make_env(env_spec_for_dataset("gen-maze2d-medium")).spec.max_episode_steps == 600


def test_make_env_seed_makes_starts_reproducible():
    metadata = env_spec_for_dataset("gen-maze2d-large")
    first = [make_env(metadata, seed=7).reset()[0] for _ in range(2)]
    np.testing.assert_array_equal(first[0], first[1])
    other = make_env(metadata, seed=8).reset()[0]
    assert not np.array_equal(first[0], other)


def test_make_vector_env_steps_every_copy():
    metadata = env_spec_for_dataset("gen-maze2d-umaze")
    envs = make_vector_env(metadata, 3)
    obs, _ = envs.reset(seed=[0, 1, 2])
    assert obs.shape == (3, 6)
    actions = np.array([[1.0, 0.0], [0.0, -1.0], [-0.5, 0.5]])
    next_obs, rewards, terminated, truncated, _ = envs.step(actions)
    assert next_obs.shape == (3, 6) and rewards.shape == (3,)
    assert len({tuple(o[4:]) for o in obs}) > 1, "each copy draws its own goal"
    # copy i is the environment reset with seed i and given action i
    for i in range(3):
        single = make_env(metadata)
        start, _ = single.reset(seed=i)
        np.testing.assert_array_equal(obs[i], start)
        after, reward, single_terminated, single_truncated, _ = single.step(actions[i])
        np.testing.assert_allclose(next_obs[i], after)
        assert (rewards[i], terminated[i], truncated[i]) == (reward, single_terminated, single_truncated)
        assert not np.array_equal(after[:4], start[:4]), "the action moved the point mass"
        single.close()
    envs.close()


def test_locomotion_env_has_box_observations_of_d4rl_size():
    env = make_env(env_spec_for_dataset("hopper-medium-v2"))
    obs, _ = env.reset(seed=0)
    assert obs.shape == (11,) and env.spec.max_episode_steps == 1000
    assert env.action_space.shape == (3,)
    # D4RL's hopper observation: joint positions without the x coordinate, then velocities
    data = env.unwrapped.data
    np.testing.assert_allclose(obs, np.concatenate([data.qpos[1:], data.qvel]))
    env.close()


def test_unknown_env_id_names_the_id_and_what_to_do():
    with pytest.raises(EnvironmentUnavailable, match="Nowhere-v0"):
        make_env({"env_id": "Nowhere-v0", "max_episode_steps": 10})


def test_missing_gymnasium_robotics_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gymnasium_robotics", None)  # makes `import gymnasium_robotics` fail
    with pytest.raises(EnvironmentUnavailable, match="pip install gymnasium-robotics"):
        make_env({"env_id": "PointMaze_Nowhere-v3", "max_episode_steps": 10})


@pytest.mark.parametrize(
    ("name", "env_id", "steps", "keys"),
    [
        ("gen-maze2d-umaze", "PointMaze_UMaze-v3", 300, ["observation", "desired_goal"]),
        ("gen-maze2d-medium", "PointMaze_Medium-v3", 600, ["observation", "desired_goal"]),
        ("gen-maze2d-large", "PointMaze_Large-v3", 800, ["observation", "desired_goal"]),
        ("gen-hopper-random", "Hopper-v5", 1000, None),
        ("gen-halfcheetah-random", "HalfCheetah-v5", 1000, None),
        ("gen-walker2d-random", "Walker2d-v5", 1000, None),
        ("walker2d-medium-replay-v2", "Walker2d-v5", 1000, None),
        ("maze2d-large-v1", "PointMaze_Large-v3", 800, ["observation"]),
    ],
)
def test_env_spec_for_dataset(name, env_id, steps, keys):
    spec = env_spec_for_dataset(name)
    assert spec["env_id"] == env_id
    assert spec["max_episode_steps"] == steps
    assert spec["observation_keys"] == keys
    assert spec["goal_conditioned"] == name.startswith("gen-maze2d")
    if env_id.startswith("PointMaze"):
        assert spec["env_kwargs"] == {"continuing_task": True, "reset_target": False}


def test_unknown_dataset_name_is_a_clear_error():
    with pytest.raises(EnvironmentUnavailable, match="antmaze-umaze-v2"):
        env_spec_for_dataset("antmaze-umaze-v2")
    with pytest.raises(EnvironmentUnavailable, match="antmaze-umaze-v2"):
        reference_scores("antmaze-umaze-v2")


def test_normalized_score_maps_references_to_0_and_100():
    ref_min, ref_max, _ = reference_scores("gen-maze2d-umaze")
    assert normalized_score(ref_min, ref_min, ref_max) == pytest.approx(0.0)
    assert normalized_score(ref_max, ref_min, ref_max) == pytest.approx(100.0)
    scores = normalized_score(np.array([ref_min, (ref_min + ref_max) / 2, ref_max]), ref_min, ref_max)
    np.testing.assert_allclose(scores, [0.0, 50.0, 100.0])


@pytest.mark.parametrize(
    "name",
    ["gen-maze2d-umaze", "gen-maze2d-medium", "gen-maze2d-large", "maze2d-umaze-v1", "hopper-expert-v2"],
)
def test_every_known_dataset_has_ordered_reference_scores(name):
    ref_min, ref_max, source = reference_scores(name)
    assert ref_min < ref_max and source


def test_generated_locomotion_uses_d4rl_reference_scores():
    for env_name, scores in D4RL_LOCOMOTION_SCORES.items():
        assert reference_scores(f"gen-{env_name}-random")[:2] == scores
        assert reference_scores(f"{env_name}-medium-v2")[:2] == scores
