"""Reads a Minari dataset from the local Minari store into the processed format's step arrays.

Only the local store is read (`$MINARI_DATASETS_PATH`, default `~/.minari/datasets`, as Minari
itself resolves it); nothing is ever downloaded. Dict observations are flattened into one vector
in a fixed order: `observation`, then `desired_goal`, then `achieved_goal` when asked for
(`include_achieved_goal=True`), each entry present in the dataset's observation space.
Minari stores T + 1 observations per episode of T steps, so `next_observations` are exact, and
episodes are concatenated with `terminals` from Minari's terminations and `timeouts` from its
truncations (a step that is both is a terminal). An episode that ends with neither flag (its
recording stopped) gets a timeout on its last step, so the episode boundary survives the
concatenation and its last transition counts as cut, not terminal.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from diffuser.errors import DatasetError

logger = logging.getLogger(__name__)

OBSERVATION_KEY_ORDER = ("observation", "desired_goal", "achieved_goal")
GOAL_KEY = "desired_goal"


def minari_root() -> Path:
    """The local Minari store: $MINARI_DATASETS_PATH, else ~/.minari/datasets (Minari's own default)."""
    configured = os.environ.get("MINARI_DATASETS_PATH")
    return Path(configured) if configured else Path.home() / ".minari" / "datasets"


def minari_dataset_dir(dataset_id: str) -> Path:
    return minari_root() / dataset_id


def _load_local(dataset_id: str):
    try:
        import minari
    except ImportError as error:
        raise DatasetError(
            f"Reading the Minari dataset '{dataset_id}' needs the package minari; run `pip install 'minari==0.5.4'`."
        ) from error
    data_path = minari_dataset_dir(dataset_id) / "data"
    if not data_path.is_dir():
        raise DatasetError(
            f"Minari dataset '{dataset_id}' is not in the local Minari store {minari_root()} (expected {data_path}); "
            f"this pipeline never downloads, so fetch it yourself (`minari download {dataset_id}`) or set "
            "MINARI_DATASETS_PATH to the directory that holds it."
        )
    try:
        return minari.MinariDataset(data_path)
    except (ValueError, OSError, KeyError, AssertionError) as error:
        raise DatasetError(
            f"Minari dataset '{dataset_id}' at {data_path} cannot be read ({error}); re-create or re-download it."
        ) from error


def observation_keys_for(observation_space, dataset_id: str, include_achieved_goal: bool) -> list[str] | None:
    """The dict entries to flatten, in the fixed order; None for a Box observation space."""
    import gymnasium as gym

    if isinstance(observation_space, gym.spaces.Box):
        return None
    if not isinstance(observation_space, gym.spaces.Dict):
        raise DatasetError(
            f"Minari dataset '{dataset_id}' has a {type(observation_space).__name__} observation space; only Box and Dict "
            "observations can be flattened, so use a dataset with vector observations."
        )
    wanted = OBSERVATION_KEY_ORDER if include_achieved_goal else OBSERVATION_KEY_ORDER[:2]
    keys = [key for key in wanted if key in observation_space.spaces]
    if "observation" not in keys:
        raise DatasetError(
            f"Minari dataset '{dataset_id}' has dict observations with keys {list(observation_space.spaces)} but no "
            "`observation` entry; only goal-style dict observations (observation, desired_goal, achieved_goal) are supported."
        )
    return keys


def _flat_observations(episode_observations, keys: list[str] | None) -> np.ndarray:
    """[T + 1, obs_dim]: the listed dict entries concatenated, or the Box observation flattened."""
    if keys is None:
        values = np.asarray(episode_observations, dtype=np.float32)
        return values.reshape(len(values), -1)
    parts = [np.asarray(episode_observations[key], dtype=np.float32) for key in keys]
    return np.concatenate([part.reshape(len(part), -1) for part in parts], axis=1)


def _evaluation_env_spec(metadata: dict) -> dict | None:
    """The gymnasium EnvSpec (as a JSON dict) Minari recorded for evaluation, else for collection."""
    spec = metadata.get("eval_env_spec") or metadata.get("env_spec")
    return json.loads(spec) if isinstance(spec, str) else None


def read_minari(dataset_id: str, include_achieved_goal: bool = False) -> tuple[dict[str, np.ndarray], dict]:
    """(step arrays, info) of a local Minari dataset.

    `info` has dataset_id, source_path (the dataset's directory), env_id, env_kwargs,
    max_episode_steps, observation_keys, goal_conditioned, action_low, action_high, ref_min_score,
    ref_max_score and reference_source. The environment fields come from the dataset's evaluation
    env spec (else its collection env spec) and are None when it recorded none; when the spec has
    no episode limit, the longest episode of the data is used. Reference scores are None when the
    dataset's metadata has none.
    """
    import gymnasium as gym

    dataset = _load_local(dataset_id)
    keys = observation_keys_for(dataset.observation_space, dataset_id, include_achieved_goal)
    if not isinstance(dataset.action_space, gym.spaces.Box):
        raise DatasetError(
            f"Minari dataset '{dataset_id}' has a {type(dataset.action_space).__name__} action space; only continuous "
            "(Box) actions are supported, so use a dataset with continuous actions."
        )

    parts: dict[str, list[np.ndarray]] = {
        key: []
        for key in ("observations", "next_observations", "actions", "rewards", "terminals", "timeouts")
    }
    for episode in dataset.iterate_episodes():
        n_steps = len(episode.rewards)
        if n_steps == 0:
            continue
        observations = _flat_observations(episode.observations, keys)  # [T + 1, obs_dim]
        terminals = np.asarray(episode.terminations, dtype=bool)
        timeouts = np.asarray(episode.truncations, dtype=bool) & ~terminals
        if not (terminals[-1] or timeouts[-1]):
            timeouts[-1] = True
        parts["observations"].append(observations[:-1])
        parts["next_observations"].append(observations[1:])
        parts["actions"].append(np.asarray(episode.actions, dtype=np.float32).reshape(n_steps, -1))
        parts["rewards"].append(np.asarray(episode.rewards, dtype=np.float32).reshape(n_steps))
        parts["terminals"].append(terminals)
        parts["timeouts"].append(timeouts)
    if not parts["rewards"]:
        raise DatasetError(
            f"Minari dataset '{dataset_id}' at {minari_dataset_dir(dataset_id)} contains no steps; use a dataset with data in it."
        )
    arrays = {key: np.concatenate(values) for key, values in parts.items()}

    metadata = dataset.storage.metadata
    spec = _evaluation_env_spec(metadata)
    max_episode_steps = spec.get("max_episode_steps") if spec else None
    if spec and max_episode_steps is None:
        max_episode_steps = int(max(len(part) for part in parts["rewards"]))
        logger.warning(
            "Minari dataset %s: its env spec has no episode limit; evaluating with its longest episode, %d steps",
            dataset_id,
            max_episode_steps,
        )
    has_scores = metadata.get("ref_min_score") is not None and metadata.get("ref_max_score") is not None
    action_space = dataset.action_space
    low, high = (
        np.broadcast_to(bound, action_space.shape).ravel() for bound in (action_space.low, action_space.high)
    )
    info = {
        "dataset_id": dataset_id,
        "source_path": str(minari_dataset_dir(dataset_id)),
        "env_id": spec["id"] if spec else None,
        "env_kwargs": spec.get("kwargs", {}) if spec else None,
        "max_episode_steps": max_episode_steps,
        "observation_keys": keys,
        "goal_conditioned": bool(keys and GOAL_KEY in keys),
        "action_low": low.tolist(),
        "action_high": high.tolist(),
        "ref_min_score": float(metadata["ref_min_score"]) if has_scores else None,
        "ref_max_score": float(metadata["ref_max_score"]) if has_scores else None,
        "reference_source": f"Minari dataset metadata of {dataset_id}" if has_scores else None,
    }
    return arrays, info
