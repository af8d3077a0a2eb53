"""Reads D4RL's HDF5 layout with h5py alone: no `d4rl` package, no mujoco-py, no MuJoCo 2.1.

The layout: top-level datasets `observations` [N, obs_dim], `actions` [N, action_dim], `rewards`,
`terminals`, `timeouts` [N], optionally `next_observations` [N, obs_dim], and optional per-step
extras in the group `infos/` (e.g. `infos/goal`, `infos/qpos`). The generated datasets
(`diffuser.datasets.generate`) are written in the same layout and read here too.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import h5py
import numpy as np

from diffuser.datasets.episodes import check_equal_lengths, split_episodes
from diffuser.errors import DatasetError

logger = logging.getLogger(__name__)

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals")
INFOS_GROUP = "infos"


def missing_file_message(path: Path) -> str:
    return (
        f"D4RL dataset file {path} does not exist; download {path.name} from the D4RL project "
        "(github.com/Farama-Foundation/D4RL lists the dataset URLs in d4rl/infos.py) and put it at "
        f"{path}, or use a generated dataset (gen-*) or a local Minari dataset (minari:<id>)."
    )


def derive_next_observations(
    observations: np.ndarray, terminals: np.ndarray, timeouts: np.ndarray
) -> np.ndarray:
    """s_{t+1} within each episode (split by `split_episodes`). The last step of an episode has no
    successor in the file (the next stored step starts a new episode, or the data ends), so it gets
    its own observation: a placeholder that a terminal's zero continuation or a cut's missing
    bootstrap never reads as a real transition."""
    next_observations = np.empty_like(observations)
    next_observations[:-1] = observations[1:]
    starts, lengths = split_episodes(terminals, timeouts, keep_partial=True)
    last_steps = starts + lengths - 1
    next_observations[last_steps] = observations[last_steps]
    return next_observations


def _read_arrays(file: h5py.File, path: Path) -> dict[str, np.ndarray]:
    missing = [key for key in REQUIRED_KEYS if key not in file]
    if missing:
        raise DatasetError(
            f"{path} has no dataset(s) {', '.join(missing)}; a D4RL file needs {', '.join(REQUIRED_KEYS)} "
            "(and timeouts), so re-download or re-create it."
        )
    arrays = {key: file[key][()] for key in (*REQUIRED_KEYS, "timeouts", "next_observations") if key in file}
    if isinstance(file.get(INFOS_GROUP), h5py.Group):
        for key, item in file[INFOS_GROUP].items():
            if isinstance(item, h5py.Dataset):
                arrays[f"{INFOS_GROUP}/{key}"] = item[()]
    return arrays


def _per_step(values: np.ndarray) -> np.ndarray:
    """[N] from [N] or [N, 1] (some files store scalars per step as a column)."""
    values = np.asarray(values)
    return values[:, 0] if values.ndim == 2 and values.shape[1] == 1 else values


def read_d4rl_hdf5(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The step arrays of a D4RL-layout HDF5 file, in the processed format's dtypes.

    Returns observations, actions, rewards (float32), terminals, timeouts (bool), next_observations
    and every `infos/<key>` dataset as stored. Old D4RL files (v0) without `timeouts` get all-False
    timeouts. Without `next_observations` they are derived within episodes
    (`derive_next_observations`).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(missing_file_message(path))
    try:
        with h5py.File(path, "r") as file:
            arrays = _read_arrays(file, path)
    except OSError as error:
        raise DatasetError(
            f"{path} is not a readable HDF5 file (truncated or not HDF5: {error}); download or generate it again."
        ) from error

    n_steps = check_equal_lengths(arrays, [k for k in arrays if not k.startswith(f"{INFOS_GROUP}/")], path)
    if "timeouts" not in arrays:
        logger.warning("%s has no `timeouts` (an old D4RL file): treating no step as a time-limit cut", path)
        arrays["timeouts"] = np.zeros(n_steps, dtype=bool)
    for key in ("observations", "actions", "next_observations"):
        if key in arrays:
            arrays[key] = np.asarray(arrays[key], dtype=np.float32)
    arrays["rewards"] = _per_step(arrays["rewards"]).astype(np.float32)
    for key in ("terminals", "timeouts"):
        flags = _per_step(arrays[key])
        if flags.dtype != np.bool_ and not np.isin(flags, (0, 1)).all():
            raise DatasetError(f"Field `{key}` in {path} must hold 0/1 flags; fix the file.")
        arrays[key] = flags.astype(bool)
    # With flags of the wrong rank, validation reports the shape; deriving would only fail obscurely.
    if "next_observations" not in arrays and arrays["terminals"].ndim == arrays["timeouts"].ndim == 1:
        arrays["next_observations"] = derive_next_observations(
            arrays["observations"], arrays["terminals"], arrays["timeouts"]
        )
    return arrays
