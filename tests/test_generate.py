"""Generated datasets: D4RL's HDF5 layout, goal labels, episode boundaries, and where their
behaviour lies between the reference scores.

Why the return checks look the way they do: in the generated maze data the goal moves as soon as
it is reached, so an episode of the data earns about one reward per goal reached, far less than
the evaluation task pays for reaching a goal and staying there (per-episode data returns even fall
below the random policy's ref_min). Comparing the data's own returns to ref_min/ref_max would
therefore say nothing; instead the data's behaviour policy, the noisy controller, is run on the
evaluation task. Its noise is mostly absorbed by clipping (the controller's raw actions lie far
outside [-1, 1]), so it scores close to the noiseless controller, ref_max: the test allows for
the sampling error of a finite number of episodes on both bounds. For random locomotion data,
D4RL's ref_min *is* a random policy's return, so the data's mean episode return sits at a
normalized score near 0 (measured on either side of it: halfcheetah -0.1, walker2d 0.0,
hopper 1.2), and the test checks it stays within a few points of 0.
"""

import h5py
import numpy as np
import pytest

from diffuser.datasets.generate import generate_locomotion_hdf5, generate_maze2d_hdf5
from diffuser.envs.compute_reference_scores import maze_controller_policy, run_episodes
from diffuser.envs.make import make_env, make_vector_env
from diffuser.envs.scores import normalized_score, reference_scores
from diffuser.envs.specs import env_spec_for_dataset

MAZE_STEPS = 1500
D4RL_KEYS = {"observations", "actions", "rewards", "terminals", "timeouts", "next_observations"}


@pytest.fixture(scope="module")
def umaze_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("generated") / "gen-maze2d-umaze.hdf5"
    settings = generate_maze2d_hdf5(path, "umaze", n_steps=MAZE_STEPS, action_noise=0.5, seed=3)
    return path, settings


def _read(path) -> dict:
    with h5py.File(path, "r") as file:
        arrays = {key: file[key][()] for key in D4RL_KEYS}
        for key in ("goal", "qpos", "qvel"):
            if key in file["infos"]:
                arrays[f"infos/{key}"] = file["infos"][key][()]
    return arrays


def test_maze_hdf5_has_d4rl_layout(umaze_file):
    path, settings = umaze_file
    data = _read(path)
    assert D4RL_KEYS | {"infos/goal", "infos/qpos", "infos/qvel"} <= set(data)
    n = MAZE_STEPS
    assert data["observations"].shape == data["next_observations"].shape == (n, 6)
    assert data["actions"].shape == (n, 2) and data["infos/goal"].shape == (n, 2)
    assert data["rewards"].shape == data["terminals"].shape == data["timeouts"].shape == (n,)
    assert data["observations"].dtype == np.float32 and data["terminals"].dtype == bool
    assert np.abs(data["actions"]).max() <= 1.0
    assert np.abs(data["actions"]).max() == 1.0, "noisy controller actions reach the clip"
    assert not data["terminals"].any()
    np.testing.assert_array_equal(np.nonzero(data["timeouts"])[0], [299, 599, 899, 1199, 1499])
    np.testing.assert_array_equal(data["infos/qpos"], data["observations"][:, :2])
    assert set(np.unique(data["rewards"])) <= {0.0, 1.0}
    assert settings["steps"] == n and settings["goals_reached"] == int(data["rewards"].sum()) > 0
    assert list(path.parent.iterdir()) == [path], "no temporary file is left behind"


def test_maze_goal_labels_are_the_goal_active_when_the_action_was_chosen(umaze_file):
    path, settings = umaze_file
    data = _read(path)
    # Replaying the stored actions from the same seed reproduces the stream exactly.
    env = make_env(
        {**env_spec_for_dataset("gen-maze2d-umaze"), "env_kwargs": settings["env_kwargs"]}
    ).unwrapped
    env.reset(seed=settings["seed"])
    for t in range(MAZE_STEPS):
        np.testing.assert_array_equal(data["infos/goal"][t], env.goal.astype(np.float32))
        env.step(data["actions"][t])
    env.close()
    np.testing.assert_array_equal(data["observations"][:, 4:], data["infos/goal"])
    np.testing.assert_array_equal(data["next_observations"][:, 4:], data["infos/goal"])

    # Where a goal was reached, the step earned the reward for it and the next step has a new goal.
    goal_changes = np.nonzero(np.any(data["infos/goal"][1:] != data["infos/goal"][:-1], axis=1))[0]
    assert len(goal_changes) == settings["goals_reached"] > 0
    np.testing.assert_array_equal(data["rewards"][goal_changes], 1.0)
    reached = np.linalg.norm(
        data["next_observations"][goal_changes, :2] - data["infos/goal"][goal_changes], axis=1
    )
    assert (reached <= 0.45).all()


def test_maze_generation_is_reproducible(umaze_file, tmp_path):
    path, settings = umaze_file
    again = tmp_path / "again.hdf5"
    generate_maze2d_hdf5(again, "umaze", n_steps=MAZE_STEPS, action_noise=0.5, seed=settings["seed"])
    first, second = _read(path), _read(again)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])


@pytest.mark.parametrize("maze", ["umaze", "medium", "large"])
def test_maze_behaviour_policy_scores_between_the_reference_scores(maze):
    name = f"gen-maze2d-{maze}"
    ref_min, ref_max, _ = reference_scores(name)
    envs = make_vector_env(env_spec_for_dataset(name), 16)
    returns, _ = run_episodes(envs, maze_controller_policy(envs, action_noise=0.5, seed=0), seed=2000)
    envs.close()
    scores = normalized_score(returns, ref_min, ref_max)
    sampling_error = 3 * scores.std(ddof=1) / np.sqrt(len(scores))
    assert 0.0 + sampling_error < scores.mean() < 100.0 + sampling_error


@pytest.mark.parametrize(
    ("env_name", "n_steps"), [("hopper", 2000), ("walker2d", 2000), ("halfcheetah", 3000)]
)
def test_random_locomotion_data(env_name, n_steps, tmp_path):
    path = tmp_path / f"gen-{env_name}-random.hdf5"
    settings = generate_locomotion_hdf5(path, env_name, n_steps=n_steps, seed=0)
    data = _read(path)
    obs_dim = make_env(env_spec_for_dataset(f"gen-{env_name}-random")).observation_space.shape[0]
    assert data["observations"].shape == data["next_observations"].shape == (n_steps, obs_dim)
    assert np.abs(data["actions"]).max() <= 1.0

    # D4RL's rules: a fall is a terminal, the 1000-step limit a timeout, never both at once.
    ends = np.nonzero(data["terminals"] | data["timeouts"])[0]
    assert not (data["terminals"] & data["timeouts"]).any()
    assert len(ends) == settings["completed_episodes"] > 0
    lengths = np.diff(np.concatenate([[-1], ends]))
    np.testing.assert_array_equal(lengths[data["timeouts"][ends]], 1000)
    assert (lengths[data["terminals"][ends]] < 1000).all()
    if env_name == "halfcheetah":
        assert not data["terminals"].any(), "HalfCheetah never terminates"
    within = np.setdiff1d(np.arange(n_steps - 1), ends)
    np.testing.assert_array_equal(data["next_observations"][within], data["observations"][within + 1])

    returns = np.array([r.sum() for r in np.split(data["rewards"], ends + 1)[:-1]])
    ref_min, ref_max, _ = reference_scores(f"gen-{env_name}-random")
    assert abs(normalized_score(returns.mean(), ref_min, ref_max)) < 3.0
