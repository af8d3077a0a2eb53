"""Generates an OGBench dataset on this machine, by OGBench's published recipe, in OGBench's file layout.

The recipe is the one OGBench's paper describes and its repository's `data_gen_scripts/` run
(commands.sh, generate_manipspace.py, generate_locomaze.py); the policies are the package's own:
- `play` (cube, scene, puzzle): in the goal-conditioned environment in `data_collection` mode, a
  scripted `PlanOracle` (ogbench.manipspace.oracles.plan) follows a plan to a random target with
  temporally correlated noise (noise 0.1, smoothing 0.5); when it finishes, the environment draws a
  new target (`set_new_target`; the chance of stacking a cube is 0 for one cube and U(0, 0.25) per
  episode for two). Puzzle buttons are pressed with the gripper closed. A scene episode in which the
  cube leaves the visible area is discarded and collected again.
- `navigate` (point mazes): start in a random free cell, goal in a random junction or dead-end cell;
  the action is the unit direction to the maze's BFS subgoal (`get_oracle_subgoal`) plus
  N(0, 0.5^2) noise, clipped to [-1, 1]; on reaching the goal a new goal is drawn.
Episodes are 1000 transitions (OGBench's `max_episode_steps=1001`), actions are clipped to [-1, 1],
and a validation file with a tenth as many episodes is written beside the training file, as OGBench
does. The number of transitions is `n_steps` instead of OGBench's 1000 episodes (1M transitions);
the last episode is cut to fit.

File layout (ogbench.utils.load_dataset's): per episode L + 1 rows of `observations`, `actions`,
`terminals` (1 on the episode's last row, whose action has no next observation), and the simulator
state of each observation in `qpos`, `qvel` (and `button_states` where there are buttons), which
the single-task relabelling needs; `np.savez_compressed` like OGBench. One extra entry, `generation`
(a JSON string), records the settings; OGBench's loader ignores it.

Randomness: OGBench's oracles and maze environments draw from numpy's global RNG, so generation
seeds it (and restores its previous state afterwards); the environment's own RNG is seeded at the
first reset.
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from collections import defaultdict
from importlib.metadata import version
from pathlib import Path

import gymnasium as gym
import numpy as np

from diffuser.envs.make import import_ogbench
from diffuser.envs.ogbench_tasks import OGBenchTask
from diffuser.runtime.progress import progress_bar

EPISODE_LENGTH = 1000  # transitions per episode (OGBench: max_episode_steps=1001 rows)
VALIDATION_FRACTION = 10  # OGBench's validation file has num_episodes // 10 episodes
PLAY_NOISE, PLAY_NOISE_SMOOTHING = 0.1, 0.5  # generate_manipspace.py defaults, used by commands.sh
NAVIGATE_NOISE = 0.5  # commands.sh, pointmaze-*-navigate-v0
GENERATION_KEY = "generation"
_SCENE_BLOCK_XYZ = slice(14, 17)  # qpos of the scene's cube (generate_manipspace.py's health check)


def validation_path(path: str | os.PathLike) -> Path:
    """OGBench's name of the validation file beside `path` (x.npz -> x-val.npz)."""
    path = Path(path)
    return path.with_name(path.name.replace(".npz", "-val.npz"))


@contextlib.contextmanager
def seeded_global_numpy(seed: int):
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _stack_probability(family: str) -> float:
    """Per-episode chance that a new cube target sits on another cube (generate_manipspace.py)."""
    if family == "cube-single":
        return 0.0
    if family == "cube-double":
        return float(np.random.uniform(0.0, 0.25))
    return 0.5  # the script's default for environments where stacking does not apply


def _play_oracles(env, family: str) -> dict:
    from ogbench.manipspace.oracles.plan.button_plan import ButtonPlanOracle
    from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle
    from ogbench.manipspace.oracles.plan.drawer_plan import DrawerPlanOracle
    from ogbench.manipspace.oracles.plan.window_plan import WindowPlanOracle

    noise = {"noise": PLAY_NOISE, "noise_smoothing": PLAY_NOISE_SMOOTHING}
    if family.startswith("cube"):
        return {"cube": CubePlanOracle(env=env, **noise)}
    if family == "scene":
        return {
            "cube": CubePlanOracle(env=env, **noise),
            "button": ButtonPlanOracle(env=env, **noise),
            "drawer": DrawerPlanOracle(env=env, **noise),
            "window": WindowPlanOracle(env=env, **noise),
        }
    return {"button": ButtonPlanOracle(env=env, gripper_always_closed=True, **noise)}


def _scene_episode_is_healthy(qpos: np.ndarray) -> bool:
    """The cube stays visible: not too far right, and not too far left unless it is in the drawer."""
    xyz = qpos[:, _SCENE_BLOCK_XYZ]
    too_far_right = (xyz[:, 1] >= 0.29).any()
    lost_left = ((xyz[:, 1] <= -0.3) & ((xyz[:, 2] < 0.06) | (xyz[:, 2] > 0.08))).any()
    return not (too_far_right or lost_left)


class _PlayCollector:
    def __init__(self, task: OGBenchTask, seed: int, max_rows: int):
        self.family = task.family
        self.env = gym.make(
            task.collection_env_id, terminate_at_goal=False, mode="data_collection", max_episode_steps=max_rows
        )
        self.oracles = _play_oracles(self.env, task.family)
        self.has_buttons = hasattr(self.env.unwrapped, "_cur_button_states")
        self.reset_seed = seed

    def episode(self, rows: int) -> dict[str, list]:
        while True:
            steps = self._attempt(rows)
            if self.family != "scene" or _scene_episode_is_healthy(np.asarray(steps["qpos"])):
                return steps

    def _attempt(self, rows: int) -> dict[str, list]:
        ob, info = self.env.reset(seed=self.reset_seed)
        self.reset_seed = None  # seed the environment's RNG once; later resets continue its stream
        p_stack = _stack_probability(self.family)
        agent = self.oracles[info["privileged/target_task"]]
        agent.reset(ob, info)
        steps = defaultdict(list)
        for _ in range(rows):
            action = np.clip(np.asarray(agent.select_action(ob, info)), -1.0, 1.0)
            next_ob, _, _, _, info = self.env.step(action)
            if agent.done:
                agent_ob, agent_info = self.env.unwrapped.set_new_target(p_stack=p_stack)
                agent = self.oracles[agent_info["privileged/target_task"]]
                agent.reset(agent_ob, agent_info)
            steps["observations"].append(ob)
            steps["actions"].append(action)
            steps["qpos"].append(info["prev_qpos"])
            steps["qvel"].append(info["prev_qvel"])
            if self.has_buttons:
                steps["button_states"].append(info["prev_button_states"])
            ob = next_ob
        return steps


class _NavigateCollector:
    def __init__(self, task: OGBenchTask, seed: int, max_rows: int):
        self.env = gym.make(task.collection_env_id, terminate_at_goal=False, max_episode_steps=max_rows)
        maze = self.env.unwrapped.maze_map
        self.free_cells, self.goal_cells = [], []
        for i in range(maze.shape[0]):
            for j in range(maze.shape[1]):
                if maze[i, j] != 0:
                    continue
                self.free_cells.append((i, j))
                # Goals are junctions, corners and dead ends: free cells that are not a straight hallway.
                vertical_hallway = maze[i - 1, j] == 0 and maze[i + 1, j] == 0 and maze[i, j - 1] == 1 and maze[i, j + 1] == 1
                horizontal_hallway = maze[i, j - 1] == 0 and maze[i, j + 1] == 0 and maze[i - 1, j] == 1 and maze[i + 1, j] == 1
                if not (vertical_hallway or horizontal_hallway):
                    self.goal_cells.append((i, j))
        self.reset_seed = seed

    def _draw(self, cells: list) -> tuple[int, int]:
        return cells[np.random.randint(len(cells))]

    def episode(self, rows: int) -> dict[str, list]:
        env = self.env.unwrapped
        task_info = {"init_ij": self._draw(self.free_cells), "goal_ij": self._draw(self.goal_cells)}
        ob, _ = self.env.reset(seed=self.reset_seed, options={"task_info": task_info})
        self.reset_seed = None
        steps = defaultdict(list)
        for _ in range(rows):
            subgoal_xy, _ = env.get_oracle_subgoal(env.get_xy(), env.cur_goal_xy)
            direction = subgoal_xy - env.get_xy()
            direction = direction / (np.linalg.norm(direction) + 1e-6)
            action = np.clip(direction + np.random.normal(0.0, NAVIGATE_NOISE, direction.shape), -1.0, 1.0)
            next_ob, _, _, _, info = self.env.step(action)
            if info["success"]:
                env.set_goal(self._draw(self.goal_cells))
            steps["observations"].append(ob)
            steps["actions"].append(action)
            steps["qpos"].append(info["prev_qpos"])
            steps["qvel"].append(info["prev_qvel"])
            ob = next_ob
        return steps


def _episode_rows(n_steps: int, episode_length: int) -> list[int]:
    """Rows per episode (transitions + 1) so that the episodes hold `n_steps` transitions in all."""
    full, rest = divmod(n_steps, episode_length)
    return [episode_length + 1] * full + ([rest + 1] if rest else [])


def _to_file_arrays(episodes: list[dict[str, list]]) -> dict[str, np.ndarray]:
    """OGBench's arrays and dtypes (generate_manipspace.py): float32, bool terminals, int64 button states."""
    arrays = {}
    for key in episodes[0]:
        dtype = np.int64 if key == "button_states" else np.float32
        arrays[key] = np.concatenate([np.asarray(episode[key], dtype=dtype) for episode in episodes])
    ends = np.cumsum([len(episode["actions"]) for episode in episodes]) - 1
    arrays["terminals"] = np.zeros(len(arrays["actions"]), dtype=bool)
    arrays["terminals"][ends] = True
    return arrays


def _save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    try:
        np.savez_compressed(temporary, **arrays)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def generate_ogbench_dataset(
    path: str | os.PathLike,
    task: OGBenchTask,
    n_steps: int,
    seed: int = 0,
    episode_length: int = EPISODE_LENGTH,
) -> dict:
    """Writes `path` (n_steps transitions) and its `-val.npz` file; returns the generation settings."""
    import_ogbench()
    if n_steps < 1 or episode_length < 1:
        raise ValueError(f"n_steps and episode_length must be positive, got {n_steps} and {episode_length}.")
    collector_cls = _PlayCollector if task.kind == "play" else _NavigateCollector
    train_rows = _episode_rows(n_steps, episode_length)
    val_rows = [episode_length + 1] * max(1, len(train_rows) // VALIDATION_FRACTION)
    settings = {
        "task_family": task.family,
        "recipe": task.kind,
        "collection_env_id": task.collection_env_id,
        "policy": "ogbench PlanOracle" if task.kind == "play" else "ogbench maze BFS subgoal direction",
        "action_noise": PLAY_NOISE if task.kind == "play" else NAVIGATE_NOISE,
        "noise_smoothing": PLAY_NOISE_SMOOTHING if task.kind == "play" else None,
        "episode_length": episode_length,
        "steps": n_steps,
        "train_episodes": len(train_rows),
        "val_episodes": len(val_rows),
        "seed": seed,
        "ogbench_version": version("ogbench"),
    }
    with seeded_global_numpy(seed):
        collector = collector_cls(task, seed, episode_length + 1)
        try:
            episodes = []
            with progress_bar(sum(train_rows) + sum(val_rows), desc=f"generating {task.family}-{task.kind}") as bar:
                for rows in train_rows + val_rows:
                    episodes.append(collector.episode(rows))
                    bar.update(rows)
        finally:
            collector.env.close()
    stamp = np.array(json.dumps(settings))
    n_train = len(train_rows)
    _save_npz_atomic(validation_path(path), {**_to_file_arrays(episodes[n_train:]), GENERATION_KEY: stamp})
    _save_npz_atomic(Path(path), {**_to_file_arrays(episodes[:n_train]), GENERATION_KEY: stamp})
    return settings


def read_generation_settings(path: str | os.PathLike) -> dict | None:
    """The settings a generated file records, or None for a file without them (an official one)."""
    try:
        with np.load(path, allow_pickle=False) as file:
            return json.loads(str(file[GENERATION_KEY])) if GENERATION_KEY in file.files else None
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError):  # unreadable: treated as not ours
        return None
