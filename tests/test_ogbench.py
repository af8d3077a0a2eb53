"""OGBench single-task datasets: names, generation by OGBench's recipe in OGBench's file layout, reading
with the package's own loader and relabelling, a user's official file preferred, success-rate scores."""

import json
import shutil

import numpy as np
import pytest

ogbench = pytest.importorskip("ogbench")

from diffuser.datasets.episodes import load_processed  # noqa: E402
from diffuser.datasets.ogbench_generate import (  # noqa: E402
    GENERATION_KEY,
    generate_ogbench_dataset,
    seeded_global_numpy,
    validation_path,
)
from diffuser.datasets.ogbench_source import USER_DIR_VARIABLE, read_ogbench  # noqa: E402
from diffuser.datasets.prepare import dataset_key, dataset_name_problem, prepare_dataset  # noqa: E402
from diffuser.envs.make import EnvironmentUnavailable, import_ogbench, make_env  # noqa: E402
from diffuser.envs.ogbench_tasks import OGBenchNameError, parse_task  # noqa: E402
from diffuser.envs.scores import episode_scores  # noqa: E402
from diffuser.envs.specs import env_spec_for_dataset  # noqa: E402
from diffuser.errors import DatasetError  # noqa: E402
from diffuser.evaluation.evaluator import MADEvaluator  # noqa: E402

MAZE = "ogbench:pointmaze-medium-navigate-singletask-v0"
CUBE = "ogbench:cube-single-play-singletask-task1-v0"


@pytest.fixture(autouse=True)
def no_user_ogbench_files(tmp_path, monkeypatch):
    """OGBench's default directory (~/.ogbench/data) and $OGBENCH_DATASET_DIR point into the test's
    tmp dir, so files on the machine never change what a test reads."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(USER_DIR_VARIABLE, raising=False)


def _package_dataset(name: str, path):
    """What OGBench's own entry point makes of the file at `path` for the single-task `name`."""
    _, train, _ = ogbench.make_env_and_datasets(name.removeprefix("ogbench:"), dataset_path=str(path))
    return train


def test_names_map_to_ogbench_environment_and_dataset_file():
    task = parse_task("ogbench:cube-double-play-singletask-task3-v0")
    assert task.env_id == "cube-double-singletask-task3-v0"
    assert task.collection_env_id == "cube-double-v0"
    assert task.dataset_file == "cube-double-play-v0.npz"
    default = parse_task("ogbench:pointmaze-large-navigate-singletask-v0")
    assert (default.env_id, default.task_id, default.kind) == ("pointmaze-large-singletask-v0", None, "navigate")


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("ogbench:antmaze-large-navigate-singletask-v0", "expert policies"),
        ("ogbench:humanoidmaze-medium-navigate-singletask-task2-v0", "expert policies"),
        ("ogbench:cube-single-noisy-singletask-v0", "not a supported"),
        ("ogbench:cube-single-play-singletask-task6-v0", "not a supported"),
    ],
)
def test_unsupported_or_expert_policy_names_fail_with_one_line(name, words):
    with pytest.raises(OGBenchNameError) as error:
        env_spec_for_dataset(name)
    message = str(error.value)
    assert words in message and "\n" not in message and name in message
    assert isinstance(error.value, DatasetError)  # shown by the CLI as one line


def test_names_are_checked_before_any_job_and_keyed_by_generation_settings():
    assert dataset_name_problem(MAZE) is None
    problem = dataset_name_problem("ogbench:humanoidmaze-large-navigate-singletask-v0")
    assert "expert policies" in problem and "\n" not in problem
    assert dataset_key(CUBE, 30000, 0.5, 2) == f"{CUBE}-30000steps-seed2"


def test_missing_package_fails_with_one_line(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "ogbench", None)
    with pytest.raises(EnvironmentUnavailable) as error:
        import_ogbench()
    assert "pip install" in str(error.value) and "\n" not in str(error.value)
    problem = dataset_name_problem(MAZE)  # the check before any job says the same
    assert "pip install 'ogbench" in problem and "\n" not in problem


def test_generated_maze_file_reads_the_same_with_the_package_loader(tmp_path):
    name = "ogbench:pointmaze-medium-navigate-singletask-task5-v0"
    task = parse_task(name)
    path = tmp_path / task.dataset_file
    # Seed 1: the noisy oracle passes task 5's goal within these 450 steps (5 solved states).
    settings = generate_ogbench_dataset(path, task, n_steps=450, seed=1, episode_length=200)
    assert settings["train_episodes"] == 3 and validation_path(path).is_file()

    with np.load(path) as raw:  # OGBench's layout: L + 1 rows per episode, the last flagged
        assert np.flatnonzero(raw["terminals"]).tolist() == [200, 401, 452]
        assert raw["qpos"].shape == (453, 2)

    ours = read_ogbench(path, task)
    theirs = _package_dataset(name, path)
    for key in ("observations", "actions", "next_observations", "rewards"):
        np.testing.assert_array_equal(ours[key], theirs[key])
    assert len(ours["observations"]) == 450
    solved = ours["rewards"] == 0
    assert 0 < solved.sum() < 450
    # A solved state is terminal (OGBench's mask 0); each trajectory's last transition is a cut.
    np.testing.assert_array_equal(ours["terminals"], theirs["masks"] == 0)
    np.testing.assert_array_equal(ours["terminals"], solved)
    assert ours["timeouts"].sum() == 3 and not (ours["timeouts"] & ours["terminals"]).any()


def test_generation_is_seeded(tmp_path):
    task = parse_task(MAZE)
    first, second, other = (tmp_path / f"{i}" / task.dataset_file for i in range(3))
    for path, seed in ((first, 0), (second, 0), (other, 1)):
        generate_ogbench_dataset(path, task, n_steps=100, seed=seed, episode_length=100)
    with np.load(first) as a, np.load(second) as b, np.load(other) as c:
        np.testing.assert_array_equal(a["actions"], b["actions"])
        assert not np.array_equal(a["actions"], c["actions"])


def test_prepared_maze_dataset_matches_env_and_relabelling(tmp_path):
    out = prepare_dataset(MAZE, tmp_path, steps=1000, seed=0)
    arrays, metadata = load_processed(out)
    env = make_env(metadata)
    assert (metadata["obs_dim"], metadata["action_dim"]) == (env.observation_space.shape[0], env.action_space.shape[0])
    assert metadata["max_episode_steps"] == env.spec.max_episode_steps == 1000
    assert metadata["score"] == "success_rate" and metadata["source"] == "generated"
    assert metadata["source_generation"]["recipe"] == "navigate" and metadata["source_generation"]["steps"] == 1000
    theirs = _package_dataset(MAZE, metadata["source_path"])
    np.testing.assert_array_equal(arrays["rewards"], theirs["rewards"])
    np.testing.assert_array_equal(arrays["observations"], theirs["observations"])


def test_official_file_where_ogbench_keeps_it_is_read_instead_of_generating(tmp_path, monkeypatch):
    task = parse_task(MAZE)
    generated = tmp_path / "made" / task.dataset_file
    generate_ogbench_dataset(generated, task, n_steps=300, seed=5, episode_length=150)
    # An official-format file: OGBench's keys only, no record of our generation.
    with np.load(generated) as file:
        official = {key: file[key] for key in file.files if key != GENERATION_KEY}
    user_dir = tmp_path / "my-ogbench"
    user_dir.mkdir()
    np.savez_compressed(user_dir / task.dataset_file, **official)
    monkeypatch.setenv(USER_DIR_VARIABLE, str(user_dir))

    data_dir = tmp_path / "data"
    arrays, metadata = load_processed(prepare_dataset(MAZE, data_dir, steps=1000, seed=0))
    assert metadata["source"] == "ogbench" and metadata["source_path"] == str(user_dir / task.dataset_file)
    assert metadata["generation"] is None and metadata["source_generation"] is None
    assert not (data_dir / "raw" / "generated").exists()
    assert len(arrays["observations"]) == 300

    # OGBench's default directory is searched too (here after the user's directory is unset).
    monkeypatch.delenv(USER_DIR_VARIABLE)
    default_dir = tmp_path / "home" / ".ogbench" / "data"
    default_dir.mkdir(parents=True)
    shutil.copy(user_dir / task.dataset_file, default_dir / task.dataset_file)
    _, metadata = load_processed(prepare_dataset(MAZE, tmp_path / "other-data", steps=1000, seed=0))
    assert metadata["source_path"] == str(default_dir / task.dataset_file)


@pytest.mark.parametrize("damage", ["not an archive", "truncated"])
def test_corrupt_official_file_fails_with_one_line(tmp_path, damage):
    task = parse_task(MAZE)
    raw = tmp_path / "data" / "raw" / "ogbench"
    if damage == "truncated":
        generate_ogbench_dataset(raw / task.dataset_file, task, n_steps=100, seed=0, episode_length=100)
        content = (raw / task.dataset_file).read_bytes()
        (raw / task.dataset_file).write_bytes(content[: len(content) // 2])
    else:
        raw.mkdir(parents=True)
        (raw / task.dataset_file).write_bytes(b"not a zip archive")
    with pytest.raises(DatasetError) as error:
        prepare_dataset(MAZE, tmp_path / "data", steps=1000, seed=0)
    assert str(raw / task.dataset_file) in str(error.value) and "\n" not in str(error.value)


class _MazeOracleRunner:
    """The noiseless navigate oracle (unit direction to the BFS subgoal) over an evaluator's envs."""

    def __init__(self, envs):
        self.envs = envs

    def reset(self, num_envs, obs_dim, action_dim):
        pass

    def act(self, observations):
        actions = []
        for env in self.envs.envs:
            maze = env.unwrapped
            subgoal, _ = maze.get_oracle_subgoal(maze.get_xy(), maze.cur_goal_xy)
            direction = subgoal - maze.get_xy()
            actions.append(direction / (np.linalg.norm(direction) + 1e-6))
        return np.asarray(actions)


class _StillRunner:
    def reset(self, num_envs, obs_dim, action_dim):
        self.num_envs = num_envs

    def act(self, observations):
        return np.zeros((self.num_envs, 2))


def test_noiseless_maze_oracle_solves_its_task_and_the_score_is_the_success_rate():
    metadata = {**env_spec_for_dataset(MAZE), "obs_dim": 2, "action_dim": 2, "score": "success_rate"}
    evaluator = MADEvaluator(metadata, num_eval=3, seed=0)
    try:
        solved = evaluator.evaluate(_MazeOracleRunner(evaluator.envs))
        still = evaluator.evaluate(_StillRunner())
    finally:
        evaluator.close()
    # Measured: 10 of 10 episodes (reset seeds 0-9) in 160 steps on average.
    assert solved["success_rate"] >= 2 / 3
    assert solved["mean_normalized_score"] == pytest.approx(100.0 * solved["success_rate"])
    assert solved["success_rate_percent"] == pytest.approx(100.0 * solved["success_rate"])
    assert max(solved["episode_lengths"]) < 1000  # the single-task env ends the episode at the goal
    assert still["success_rate"] == 0.0 and still["mean_normalized_score"] == 0.0
    assert still["mean_return"] == -1000.0  # -1 per step until success
    assert json.dumps(solved)  # eval.json-ready


def test_episode_scores_follow_the_dataset_score():
    returns, successes = np.array([-10.0, -200.0]), np.array([True, False])
    np.testing.assert_array_equal(episode_scores(returns, successes, {"score": "success_rate"}), [100.0, 0.0])
    normalized = episode_scores(returns, successes, {"ref_min_score": -200.0, "ref_max_score": 0.0})
    np.testing.assert_allclose(normalized, [95.0, 0.0])


@pytest.mark.slow
def test_generated_manipulation_file_reads_the_same_with_the_package_loader(tmp_path):
    task = parse_task(CUBE)
    path = tmp_path / task.dataset_file
    settings = generate_ogbench_dataset(path, task, n_steps=120, seed=0, episode_length=60)
    assert (settings["recipe"], settings["action_noise"], settings["noise_smoothing"]) == ("play", 0.1, 0.5)
    ours = read_ogbench(path, task)
    theirs = _package_dataset(CUBE, path)
    for key in ("observations", "actions", "next_observations", "rewards"):
        np.testing.assert_array_equal(ours[key], theirs[key])
    env = make_env(env_spec_for_dataset(CUBE))
    assert ours["observations"].shape == (120, env.observation_space.shape[0])
    assert ours["actions"].shape == (120, env.action_space.shape[0])
    assert np.abs(ours["actions"]).max() <= 1.0 and np.abs(ours["actions"]).max() > 0.1  # the oracle moves


def _cube_oracle_episode(env, oracle, seed: int) -> bool:
    """One episode of the noiseless play oracle on the single-task cube env; whether it succeeded."""
    from ogbench.manipspace import lie

    cube = env.unwrapped
    target = cube._cube_target_mocap_ids[0]
    observation, info = env.reset(seed=seed)
    # The task's goal as the play oracle's privileged target (the task env does not report it).
    goal = {
        "privileged/target_block": 0,
        "privileged/target_block_pos": cube._data.mocap_pos[target].copy(),
        "privileged/target_block_yaw": np.array([lie.SO3(cube._data.mocap_quat[target]).compute_yaw_radians()]),
    }
    oracle.reset(observation, {**info, **goal})
    done, success = False, False
    while not done:
        action = np.clip(oracle.select_action(observation, info), -1.0, 1.0)
        observation, _, terminated, truncated, info = env.step(action)
        done, success = terminated or truncated, success or bool(info["success"])
    return success


@pytest.mark.slow
def test_noiseless_cube_oracle_solves_its_task():
    from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle

    env = make_env(env_spec_for_dataset(CUBE))
    oracle = CubePlanOracle(env=env, noise=0.0)
    with seeded_global_numpy(0):  # the oracle's plan timing is drawn from numpy's global RNG
        solved = sum(_cube_oracle_episode(env, oracle, seed) for seed in range(5))
    # Measured: 8 of 8 episodes on task1, task4 and the default task, in about 65 steps each.
    assert solved >= 4
