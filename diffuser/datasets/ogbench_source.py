"""Reads an OGBench dataset file into the processed format's step arrays, for one single-task name.

The file (an official one, or one `ogbench_generate` wrote) is read with the package's own loader,
`ogbench.load_dataset(path, add_info=True)`, and the task's rewards come from the package's own
relabelling, `ogbench.relabel_utils.relabel_dataset`, exactly as `ogbench.make_env_and_datasets`
does for `-singletask-` names. Never downloaded: an official file is used only where the user put it.

Conversion (OGBench's keys -> ours):
- `observations`, `actions`, `next_observations`: as the loader returns them (it drops each
  trajectory's last row, which has no next observation);
- `rewards`: the relabelled rewards (number of satisfied task conditions minus their count: 0 when
  the task is solved, negative otherwise), computed on the state the action is taken in, as the
  single-task environment computes its reward (`success_timing='pre'`);
- `terminals`: where the relabelling's `masks` is 0 (the task is solved in that state); the
  single-task environment ends the episode on that step, and OGBench's agents stop bootstrapping
  there. Play data continues after such a step, so it also ends an episode of ours;
- `timeouts`: the last transition of each recorded trajectory that is not already a terminal.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np

from diffuser.envs.make import import_ogbench
from diffuser.envs.ogbench_tasks import OGBenchTask
from diffuser.errors import DatasetError

USER_DIR_VARIABLE = "OGBENCH_DATASET_DIR"
# ogbench.utils.DEFAULT_DATASET_DIR, where `ogbench.download_datasets` puts the files.
OGBENCH_DEFAULT_DIR = "~/.ogbench/data"
# What numpy raises on a missing key or a truncated/corrupt .npz.
_NPZ_READ_ERRORS = (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError)


def official_dirs(data_dir: str | os.PathLike) -> list[Path]:
    """Where a user's official OGBench files are looked for, in order: $OGBENCH_DATASET_DIR (when set),
    OGBench's default directory, and `<data_dir>/raw/ogbench/`."""
    dirs = [Path(os.environ[USER_DIR_VARIABLE]).expanduser()] if os.environ.get(USER_DIR_VARIABLE) else []
    return dirs + [Path(OGBENCH_DEFAULT_DIR).expanduser(), Path(data_dir) / "raw" / "ogbench"]


def find_official_file(task: OGBenchTask, data_dir: str | os.PathLike) -> Path | None:
    """The first official dataset file of `task` in `official_dirs`, or None."""
    for directory in official_dirs(data_dir):
        candidate = directory / task.dataset_file
        if candidate.is_file():
            return candidate
    return None


def read_ogbench(path: str | os.PathLike, task: OGBenchTask) -> dict[str, np.ndarray]:
    """The step arrays (observations, actions, rewards, terminals, timeouts, next_observations) of
    the OGBench file at `path`, relabelled for `task` (module docstring)."""
    ogbench = import_ogbench()
    from ogbench.relabel_utils import relabel_dataset

    try:
        dataset = ogbench.load_dataset(str(path), add_info=True)
    except _NPZ_READ_ERRORS as error:
        raise DatasetError(
            f"OGBench dataset file {path} cannot be read ({error}); replace it with an intact copy or delete it to "
            "generate the data instead."
        ) from error
    needed = ["qpos"] + (["button_states"] if task.family in ("scene", "puzzle-3x3") else [])
    missing = [key for key in needed if key not in dataset]
    if missing:
        raise DatasetError(
            f"OGBench dataset file {path} has no {', '.join(missing)}, which the single-task rewards of "
            f"{task.name} are computed from; use the official file or delete it to generate the data instead."
        )
    env = gym.make(task.env_id)
    try:
        relabel_dataset(task.env_id, env, dataset)
    finally:
        env.close()
    terminals = dataset["masks"] == 0.0
    trajectory_ends = dataset["terminals"] > 0.0
    return {
        "observations": dataset["observations"],
        "actions": dataset["actions"],
        "rewards": dataset["rewards"],
        "terminals": terminals,
        "timeouts": trajectory_ends & ~terminals,
        "next_observations": dataset["next_observations"],
    }
