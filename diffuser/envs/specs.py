"""Which evaluation task belongs to a dataset name: the gymnasium env id, its kwargs and episode length.

The spec is what `prepare_dataset` writes into a processed dataset's metadata and what
`diffuser.envs.make_env` builds, so a policy trained on the data is scored on exactly this task.

- `gen-maze2d-{umaze,medium,large}`: gymnasium-robotics PointMaze, a continuing task whose goal stays
  put (`continuing_task=True, reset_target=False`): the episode runs its full length and every step
  within 0.45 of the goal earns reward 1, as in D4RL's maze2d evaluation. Observations are the
  point mass state (x, y, vx, vy) followed by the goal (x, y).
- `gen-{hopper,halfcheetah,walker2d}-random` and D4RL's `{hopper,halfcheetah,walker2d}-*-v{0,1,2}`:
  the gymnasium MuJoCo v5 environments, which keep the observation and action dimensions of the
  mujoco-py versions D4RL recorded (rewards agree up to small changes in contact physics).
- D4RL's `maze2d-{umaze,medium,large}-v1` (sparse reward): the same PointMaze layouts. Caveat: PointMaze's
  coordinates are centred on the maze with y flipped, where D4RL's start at a corner, and its goal
  is drawn anew at every reset, where D4RL's evaluation goal is fixed. A policy trained on D4RL's
  maze2d files therefore does not transfer as is; the spec keeps D4RL's 4-dim observation (no goal)
  so the dimensions match.
- `ogbench:<name>` (diffuser.envs.ogbench_tasks): OGBench's single-task environment of that name, with
  its registered episode length; its observations are a flat state vector, its actions in [-1, 1].
"""

from __future__ import annotations

import re

import gymnasium as gym

from diffuser.envs.make import EnvironmentUnavailable, import_ogbench
from diffuser.envs.ogbench_tasks import PREFIX as OGBENCH_PREFIX
from diffuser.envs.ogbench_tasks import OGBenchTask, parse_task

MAZE_ENV_IDS = {"umaze": "PointMaze_UMaze-v3", "medium": "PointMaze_Medium-v3", "large": "PointMaze_Large-v3"}
MAZE_EPISODE_STEPS = {"umaze": 300, "medium": 600, "large": 800}
LOCOMOTION_ENV_IDS = {"hopper": "Hopper-v5", "halfcheetah": "HalfCheetah-v5", "walker2d": "Walker2d-v5"}
LOCOMOTION_EPISODE_STEPS = 1000

_GENERATED_MAZE = re.compile(r"gen-maze2d-(umaze|medium|large)")
_GENERATED_LOCOMOTION = re.compile(r"gen-(hopper|halfcheetah|walker2d)-random")
_D4RL_MAZE = re.compile(r"maze2d-(umaze|medium|large)-v1")
_D4RL_LOCOMOTION = re.compile(r"(hopper|halfcheetah|walker2d)-[a-z]+(-[a-z]+)?-v[012]")


def maze_spec(maze: str, observation_keys: list[str], goal_conditioned: bool) -> dict:
    return {
        "env_id": MAZE_ENV_IDS[maze],
        "env_kwargs": {"continuing_task": True, "reset_target": False},
        "max_episode_steps": MAZE_EPISODE_STEPS[maze],
        "observation_keys": observation_keys,
        "goal_conditioned": goal_conditioned,
    }


def locomotion_spec(env_name: str) -> dict:
    return {
        "env_id": LOCOMOTION_ENV_IDS[env_name],
        "env_kwargs": {},
        "max_episode_steps": LOCOMOTION_EPISODE_STEPS,
        "observation_keys": None,
        "goal_conditioned": False,
    }


def ogbench_spec(task: OGBenchTask) -> dict:
    import_ogbench()
    return {
        "env_id": task.env_id,
        "env_kwargs": {},
        "max_episode_steps": int(gym.spec(task.env_id).max_episode_steps),
        "observation_keys": None,
        "goal_conditioned": False,
    }


def locomotion_env_name(dataset_name: str) -> str | None:
    """'hopper', 'halfcheetah' or 'walker2d' for a generated or D4RL locomotion dataset, else None."""
    for pattern in (_GENERATED_LOCOMOTION, _D4RL_LOCOMOTION):
        if match := pattern.fullmatch(dataset_name):
            return match[1]
    return None


def env_spec_for_dataset(name: str) -> dict:
    """The evaluation task of dataset `name`: env_id, env_kwargs, max_episode_steps, observation_keys,
    goal_conditioned (see the module docstring for which names are known)."""
    if match := _GENERATED_MAZE.fullmatch(name):
        return maze_spec(match[1], ["observation", "desired_goal"], goal_conditioned=True)
    if env_name := locomotion_env_name(name):
        return locomotion_spec(env_name)
    if match := _D4RL_MAZE.fullmatch(name):
        return maze_spec(match[1], ["observation"], goal_conditioned=False)
    if name.startswith(OGBENCH_PREFIX):
        return ogbench_spec(parse_task(name))
    raise EnvironmentUnavailable(
        f"No evaluation environment is known for dataset '{name}' (config key `dataset`); use "
        "gen-maze2d-{umaze,medium,large}, gen-{hopper,halfcheetah,walker2d}-random, a D4RL maze2d-*-v1 or "
        "{hopper,halfcheetah,walker2d}-*-v2 name, a Minari dataset as minari:<id>, or an OGBench task as ogbench:<name>."
    )
