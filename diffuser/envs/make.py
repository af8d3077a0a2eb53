"""Builds the evaluation task a processed dataset's metadata describes (docs/INTERFACES.md)."""

from __future__ import annotations

import contextlib
import io

import gymnasium as gym
import numpy as np

from diffuser.envs.ogbench_tasks import INSTALL_HINT as OGBENCH_INSTALL_HINT
from diffuser.envs.ogbench_tasks import is_ogbench_env_id
from diffuser.errors import EnvironmentUnavailable

# Env ids that gymnasium-robotics registers when imported; OGBench's are registered by `ogbench`
# (ogbench_tasks.py), everything else used here is gymnasium's own.
_ROBOTICS_ENV_PREFIXES = ("PointMaze_", "AntMaze_")


class FlattenDictObservation(gym.ObservationWrapper):
    """Concatenates the listed entries of a dict observation, in the listed order, into one vector.

    gymnasium's FlattenObservation would use the Dict space's own (sorted) key order; the dataset's
    `observation_keys` fix the order instead, so data and environment always agree.
    """

    def __init__(self, env: gym.Env, keys: list[str]):
        super().__init__(env)
        missing = [key for key in keys if key not in env.observation_space.spaces]
        if missing:
            raise EnvironmentUnavailable(
                f"Observation keys {missing} (metadata field `observation_keys`) are not in the observations of "
                f"{env.spec.id if env.spec else env}, which has {list(env.observation_space.spaces)}; fix the metadata."
            )
        self.keys = list(keys)
        parts = [env.observation_space[key] for key in self.keys]
        self.observation_space = gym.spaces.Box(
            low=np.concatenate([np.broadcast_to(p.low, p.shape).ravel() for p in parts]),
            high=np.concatenate([np.broadcast_to(p.high, p.shape).ravel() for p in parts]),
            dtype=np.float64,
        )

    def observation(self, observation: dict) -> np.ndarray:
        return np.concatenate([np.asarray(observation[key], dtype=np.float64).ravel() for key in self.keys])


def _install_hint(env_id: str) -> str:
    if env_id.startswith(_ROBOTICS_ENV_PREFIXES):
        return "pip install gymnasium-robotics"
    if is_ogbench_env_id(env_id):
        return OGBENCH_INSTALL_HINT
    return "pip install 'gymnasium[mujoco]' (or the package that registers this environment)"


def _ensure_registered(env_id: str) -> None:
    if env_id in gym.registry:
        return
    if env_id.startswith(_ROBOTICS_ENV_PREFIXES):
        try:
            # its import prints a notice about AdroitHand rewards (not our environments) into every log
            with contextlib.redirect_stderr(io.StringIO()):
                import gymnasium_robotics
        except ImportError as error:
            raise EnvironmentUnavailable(
                f"Environment {env_id} needs the package gymnasium-robotics, which is not installed; run `{_install_hint(env_id)}`."
            ) from error
        gym.register_envs(gymnasium_robotics)
    if is_ogbench_env_id(env_id):
        import_ogbench()
    if env_id not in gym.registry:
        raise EnvironmentUnavailable(
            f"Environment {env_id} (metadata field `env_id`) is not registered with gymnasium; check the id or run `{_install_hint(env_id)}`."
        )


def import_ogbench():
    """The `ogbench` package (importing it registers its environments); one clear line if it is missing."""
    try:
        import ogbench
    except ImportError as error:
        raise EnvironmentUnavailable(
            f"OGBench tasks need the package ogbench, which is not installed; run `{OGBENCH_INSTALL_HINT}`."
        ) from error
    return ogbench


def make_env(metadata: dict, seed: int | None = None) -> gym.Env:
    """The evaluation environment of a processed dataset, with its episode length and flat observations.

    With `seed`, the environment's RNG (starts, goals) and its action space are seeded, so the
    resets that follow are reproducible.
    """
    env_id = metadata["env_id"]
    _ensure_registered(env_id)
    try:
        env = gym.make(
            env_id, max_episode_steps=metadata["max_episode_steps"], **(metadata.get("env_kwargs") or {})
        )
    except gym.error.DependencyNotInstalled as error:
        raise EnvironmentUnavailable(
            f"Environment {env_id} cannot be built because a dependency is missing ({error}); run `{_install_hint(env_id)}`."
        ) from error
    if metadata.get("observation_keys"):
        env = FlattenDictObservation(env, metadata["observation_keys"])
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def make_vector_env(metadata: dict, num_envs: int) -> gym.vector.SyncVectorEnv:
    """`num_envs` copies of the evaluation environment stepped together (in-process: on a few cores
    AsyncVectorEnv's worker processes cost more than they save)."""
    return gym.vector.SyncVectorEnv([lambda: make_env(metadata) for _ in range(num_envs)])
