"""Dataset generators that write D4RL's HDF5 layout: maze2d by D4RL's recipe, random MuJoCo locomotion.

Both write `observations`, `actions`, `rewards`, `terminals`, `timeouts`, `next_observations` and
`infos/qpos`, `infos/qvel` (the simulator state of `observations`), float32 and bool like D4RL,
plus the generation settings as file attributes; the maze files add `infos/goal`. Files are
written to a temporary name and renamed, so a killed run never leaves a half-written dataset.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from diffuser.envs.make import make_env
from diffuser.envs.maze_controller import MazeWaypointController
from diffuser.envs.specs import LOCOMOTION_ENV_IDS, MAZE_ENV_IDS, locomotion_spec, maze_spec
from diffuser.runtime.progress import progress_bar
from diffuser.runtime.seeding import numpy_generator

_PROGRESS_EVERY = 1000  # steps between progress-bar updates


def _write_hdf5_atomic(path: Path, arrays: dict[str, np.ndarray], attrs: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with h5py.File(temporary, "w") as file:
            for key, array in arrays.items():
                file.create_dataset(key, data=array)
            for key, value in attrs.items():
                file.attrs[key] = json.dumps(value) if isinstance(value, dict) else value
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def generate_maze2d_hdf5(
    path: str | os.PathLike, maze: str, n_steps: int, action_noise: float, seed: int
) -> dict:
    """D4RL's maze2d recipe on gymnasium-robotics' PointMaze; returns the generation settings.

    One continuing stream: a new goal is drawn whenever the point mass reaches the current one
    (`reset_target=True`) and the environment is never reset. The behaviour policy is the
    waypoint controller plus N(0, action_noise^2) noise, clipped to [-1, 1]. `timeouts` is True
    every `max_episode_steps` steps of the evaluation task, so the stream splits into
    evaluation-length episodes; `terminals` is all False.

    Goals: an observation is (x, y, vx, vy, goal x, goal y) with the goal active when the action
    was chosen (`env.unwrapped.goal`), which is also the goal `rewards` are computed against.
    `next_observations[t]` is what the step returned: s_{t+1} with that same goal, so (s, a, r, s')
    is a transition of the evaluation task. Where the step reached the goal and a new one was
    drawn, `observations[t + 1]` already carries the new goal, so there it differs from
    `next_observations[t]`.
    """
    if maze not in MAZE_ENV_IDS:
        raise ValueError(
            f"Unknown maze '{maze}' for generate_maze2d_hdf5; use one of {sorted(MAZE_ENV_IDS)}."
        )
    spec = maze_spec(maze, ["observation", "desired_goal"], goal_conditioned=True)
    generation_kwargs = {**spec["env_kwargs"], "reset_target": True}
    # Unwrapped: no time limit (the stream runs on) and no per-step wrapper overhead.
    env = make_env({**spec, "env_kwargs": generation_kwargs, "observation_keys": None}).unwrapped
    controller = MazeWaypointController(env.maze)
    noise = numpy_generator(seed).normal(0.0, action_noise, size=(n_steps, 2))

    observations = np.zeros((n_steps, 6), dtype=np.float32)
    next_observations = np.zeros((n_steps, 6), dtype=np.float32)
    actions = np.zeros((n_steps, 2), dtype=np.float32)
    rewards = np.zeros(n_steps, dtype=np.float32)
    goals = np.zeros((n_steps, 2), dtype=np.float32)
    qpos = np.zeros((n_steps, env.data.qpos.size), dtype=np.float32)
    qvel = np.zeros((n_steps, env.data.qvel.size), dtype=np.float32)

    obs, _ = env.reset(seed=seed)
    goals_reached = 0
    with progress_bar(n_steps, desc=f"generating maze2d-{maze}") as bar:
        for t in range(n_steps):
            goal = env.goal.copy()
            state = obs["observation"]
            qpos[t], qvel[t] = env.data.qpos, env.data.qvel
            # float32 before stepping, so the stored action is exactly the one applied (replayable).
            action = np.clip(controller(state, goal) + noise[t], -1.0, 1.0).astype(np.float32)
            obs, reward, _, _, info = env.step(action)
            observations[t, :4], observations[t, 4:] = state, goal
            next_observations[t, :4], next_observations[t, 4:] = obs["observation"], goal
            actions[t], rewards[t], goals[t] = action, reward, goal
            goals_reached += bool(info["success"])
            if (t + 1) % _PROGRESS_EVERY == 0:
                bar.update(_PROGRESS_EVERY)
    env.close()

    timeouts = (np.arange(n_steps) + 1) % spec["max_episode_steps"] == 0
    settings = {
        "env_id": spec["env_id"],
        "env_kwargs": generation_kwargs,
        "max_episode_steps": spec["max_episode_steps"],
        "steps": n_steps,
        "action_noise": action_noise,
        "seed": seed,
        "goals_reached": goals_reached,
    }
    arrays = {
        "observations": observations,
        "actions": actions,
        "rewards": rewards,
        "terminals": np.zeros(n_steps, dtype=bool),
        "timeouts": timeouts,
        "next_observations": next_observations,
        "infos/goal": goals,
        "infos/qpos": qpos,
        "infos/qvel": qvel,
    }
    _write_hdf5_atomic(Path(path), arrays, settings)
    return settings


def generate_locomotion_hdf5(path: str | os.PathLike, env_name: str, n_steps: int, seed: int) -> dict:
    """Uniform random actions on the MuJoCo v5 `env_name` ('hopper', 'halfcheetah' or 'walker2d').

    Episodes reset when they terminate (the body fell) or reach the 1000-step limit. As in D4RL,
    `terminals` marks a true termination and `timeouts` a time-limit cut that was not one. Returns
    the generation settings.
    """
    if env_name not in LOCOMOTION_ENV_IDS:
        raise ValueError(
            f"Unknown locomotion env '{env_name}' for generate_locomotion_hdf5; use one of {sorted(LOCOMOTION_ENV_IDS)}."
        )
    spec = locomotion_spec(env_name)
    env = make_env(spec)
    data = env.unwrapped.data
    obs_dim, action_dim = env.observation_space.shape[0], env.action_space.shape[0]
    rng = numpy_generator(seed)
    actions = rng.uniform(env.action_space.low, env.action_space.high, size=(n_steps, action_dim)).astype(
        np.float32
    )

    observations = np.zeros((n_steps, obs_dim), dtype=np.float32)
    next_observations = np.zeros((n_steps, obs_dim), dtype=np.float32)
    rewards = np.zeros(n_steps, dtype=np.float32)
    terminals = np.zeros(n_steps, dtype=bool)
    timeouts = np.zeros(n_steps, dtype=bool)
    qpos = np.zeros((n_steps, data.qpos.size), dtype=np.float32)
    qvel = np.zeros((n_steps, data.qvel.size), dtype=np.float32)

    obs, _ = env.reset(seed=seed)
    episodes = 0
    with progress_bar(n_steps, desc=f"generating {env_name}-random") as bar:
        for t in range(n_steps):
            observations[t], qpos[t], qvel[t] = obs, data.qpos, data.qvel
            obs, rewards[t], terminated, truncated, _ = env.step(actions[t])
            next_observations[t] = obs
            terminals[t] = terminated
            timeouts[t] = truncated and not terminated
            if terminated or truncated:
                episodes += 1
                obs, _ = env.reset()
            if (t + 1) % _PROGRESS_EVERY == 0:
                bar.update(_PROGRESS_EVERY)
    env.close()

    settings = {
        "env_id": spec["env_id"],
        "policy": "uniform random",
        "max_episode_steps": spec["max_episode_steps"],
        "steps": n_steps,
        "seed": seed,
        "completed_episodes": episodes,
    }
    arrays = {
        "observations": observations,
        "actions": actions,
        "rewards": rewards,
        "terminals": terminals,
        "timeouts": timeouts,
        "next_observations": next_observations,
        "infos/qpos": qpos,
        "infos/qvel": qvel,
    }
    _write_hdf5_atomic(Path(path), arrays, settings)
    return settings
