"""`prepare_dataset`: any source (generated, D4RL HDF5, Minari) -> `data/processed/<key>/`.

Dataset names (docs/INTERFACES.md):
- `gen-maze2d-{umaze,medium,large}`, `gen-{hopper,halfcheetah,walker2d}-random`: generated into
  `data/raw/generated/<key>.hdf5` (when missing), then read like a D4RL file. Their key names the
  generation settings (`gen-maze2d-umaze-100000steps-noise0.5-seed0`), so datasets made with
  other settings live side by side and never rebuild each other;
- `minari:<dataset id>`: a dataset in the local Minari store (never downloaded);
- `ogbench:<single-task name>`: the user's official OGBench file where OGBench keeps it
  (`ogbench_source.official_dirs`), else generated with the package's oracles into
  `data/raw/generated/ogbench/<file>-<steps>steps-seed<seed>/<OGBench file name>`; read with the
  package's loader and relabelling. Its key names the generation settings too
  (`ogbench:cube-single-play-singletask-v0-100000steps-seed0`), also when an official file is read;
- a D4RL name (`hopper-medium-v2`, `maze2d-umaze-v1`), read from `data/raw/d4rl/<name>.hdf5`.
For Minari and D4RL names the key is the name itself. `dataset_name_problem` checks a name before any job.

Preparing is idempotent: an existing processed dataset built from the same source (same kind,
generation settings and source sha256) is returned as is; otherwise it is rebuilt, and the
reason is logged.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np

from diffuser.datasets.d4rl import read_d4rl_hdf5
from diffuser.datasets.episodes import (
    STEP_ARRAYS,
    compute_stats,
    load_processed,
    save_processed,
    split_episodes,
    validate_arrays,
)
from diffuser.datasets.generate import generate_locomotion_hdf5, generate_maze2d_hdf5
from diffuser.datasets.minari_source import minari_dataset_dir, read_minari
from diffuser.datasets.ogbench_generate import generate_ogbench_dataset, read_generation_settings
from diffuser.datasets.ogbench_source import find_official_file, official_dirs, read_ogbench
from diffuser.envs.make import EnvironmentUnavailable, make_env
from diffuser.envs.ogbench_tasks import PREFIX as OGBENCH_PREFIX
from diffuser.envs.ogbench_tasks import parse_task
from diffuser.envs.scores import (
    NORMALIZED_RETURN_SCORE,
    SUCCESS_RATE_SCORE,
    SUCCESS_RATE_SOURCE,
    reference_scores,
)
from diffuser.envs.specs import LOCOMOTION_ENV_IDS, MAZE_ENV_IDS, env_spec_for_dataset
from diffuser.errors import ConfigError, DatasetError

logger = logging.getLogger(__name__)

GENERATED_MAZE = re.compile(rf"gen-maze2d-({'|'.join(MAZE_ENV_IDS)})")
GENERATED_LOCOMOTION = re.compile(rf"gen-({'|'.join(LOCOMOTION_ENV_IDS)})-random")
MINARI_PREFIX = "minari:"
_SAFE_PART = re.compile(r"[A-Za-z0-9_.:+-]+")
ENV_SPEC_FIELDS = ("env_id", "env_kwargs", "max_episode_steps", "observation_keys", "goal_conditioned")
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class Source:
    """Where a dataset's steps come from."""

    kind: str  # "generated" | "d4rl" | "minari" | "ogbench" (a user's official OGBench file)
    path: Path  # the HDF5 or OGBench .npz file, or the Minari dataset's directory
    generation: dict | None  # generation settings of a generated dataset, else None


def dataset_name_problem(name: str) -> str | None:
    """Why `name` cannot be a dataset (one sentence), or None when it can.

    A name is a generated, D4RL or `ogbench:` name whose evaluation task is known, or `minari:<id>`; every
    part of it between slashes is plain (letters, digits, `_.:+-`, not `.` or `..`), so no name
    makes a path that leaves data/.
    """
    parts = name.split("/")
    if not name or any(not _SAFE_PART.fullmatch(part) or part in (".", "..") for part in parts):
        return (
            f"dataset {name!r}: not a dataset name (names use letters, digits and _.:+-, with / only "
            "inside a minari:<id>); use e.g. gen-maze2d-umaze, hopper-medium-v2 or minari:D4RL/pointmaze/umaze-v2."
        )
    if name.startswith(MINARI_PREFIX):
        return None if len(name) > len(MINARI_PREFIX) else f"dataset {name!r}: give the Minari id after minari:."
    if len(parts) > 1:
        return f"dataset {name!r}: only a minari:<id> name may contain /."
    try:
        env_spec_for_dataset(name)
    except (EnvironmentUnavailable, DatasetError) as error:  # an unknown or unsupported ogbench: name
        return str(error)
    return None


def dataset_key(name: str, steps: int, action_noise: float, seed: int) -> str:
    """The directory name of a dataset under data/processed/ (and of a generated one's raw file)."""
    if GENERATED_MAZE.fullmatch(name):
        return f"{name}-{steps}steps-noise{float(action_noise)!r}-seed{seed}"
    if GENERATED_LOCOMOTION.fullmatch(name) or name.startswith(OGBENCH_PREFIX):
        return f"{name}-{steps}steps-seed{seed}"
    return name


_GENERATED_KEY = re.compile(r"(?P<name>.+)-(?P<steps>\d+)steps(?:-noise(?P<noise>[0-9.e+-]+))?-seed(?P<seed>\d+)")


def parse_dataset_key(key: str) -> tuple[str, int, float | None, int] | None:
    """(name, steps, action_noise, seed) of a generated dataset's `dataset_key`, so the directory name
    an error message shows can be given back to `prepare --dataset`; None for any other name."""
    match = _GENERATED_KEY.fullmatch(key)
    if match is None:
        return None
    name, noise = match["name"], match["noise"]
    steps, seed = int(match["steps"]), int(match["seed"])
    action_noise = float(noise) if noise is not None else None
    if (action_noise is None) == bool(GENERATED_MAZE.fullmatch(name)):  # a maze key names its noise, no other does
        return None
    if dataset_key(name, steps, action_noise, seed) != key:  # not a generated dataset's name after all
        return None
    return name, steps, action_noise, seed


def dataset_key_of(config: Mapping) -> str:
    """`dataset_key` of a cell config's `dataset` and its generation settings."""
    return dataset_key(
        config["dataset"], config["dataset_steps"], config["dataset_action_noise"], config["dataset_seed"]
    )


def processed_path(key: str, data_dir: str | os.PathLike = "data") -> Path:
    """data/processed/<key>/ (`key`: `dataset_key`)."""
    return Path(data_dir) / "processed" / key


def resolve_source(
    name: str, data_dir: str | os.PathLike, steps: int | None, action_noise: float | None, seed: int | None
) -> Source:
    """The source of dataset `name`; `steps`, `action_noise` and `seed` set a generated one (the cell keys
    dataset_steps, dataset_action_noise, dataset_seed) and are not read for the others."""
    raw = Path(data_dir) / "raw"
    maze = GENERATED_MAZE.fullmatch(name)
    if maze or GENERATED_LOCOMOTION.fullmatch(name):
        # Random-policy data has no action noise to set.
        generation = {"steps": steps, "action_noise": action_noise if maze else None, "seed": seed}
        missing = [key for key, value in generation.items() if value is None and (maze or key != "action_noise")]
        if missing:
            raise ConfigError(
                f"dataset {name} is generated: give its {', '.join(missing)} (the cell keys dataset_steps, "
                "dataset_action_noise, dataset_seed; `python -m diffuser prepare` takes their schema defaults)."
            )
        return Source("generated", raw / "generated" / f"{dataset_key(name, steps, action_noise, seed)}.hdf5", generation)
    if name.startswith(MINARI_PREFIX):
        return Source("minari", minari_dataset_dir(name[len(MINARI_PREFIX) :]), None)
    if name.startswith(OGBENCH_PREFIX):
        task = parse_task(name)
        official = find_official_file(task, data_dir)
        if official is not None:
            return Source("ogbench", official, None)
        # OGBench's recipe fixes the noise; only the size and the seed are settings. The file keeps
        # OGBench's name (its loader finds `-val.npz` by it); the five tasks of an env share it.
        generation = {"steps": steps, "action_noise": None, "seed": seed}
        directory = f"{Path(task.dataset_file).stem}-{steps}steps-seed{seed}"
        return Source("generated", raw / "generated" / "ogbench" / directory / task.dataset_file, generation)
    return Source("d4rl", raw / "d4rl" / f"{name}.hdf5", None)


def source_sha256(path: Path) -> str:
    """sha256 of a file, or of a directory's files (relative names and contents, in sorted order)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def _stale_reason(out: Path, name: str, source: Source) -> str | None:
    """Why the processed dataset at `out` must be (re)built, or None when it is up to date."""
    if not out.exists():
        return "it does not exist yet"
    try:
        _, metadata = load_processed(out)
    except DatasetError as error:
        return f"it cannot be read ({error})"
    for key, wanted in (("name", name), ("source", source.kind), ("generation", source.generation)):
        if metadata.get(key) != wanted:
            return f"its {key} is {metadata.get(key)!r} but {wanted!r} was requested"
    if not source.path.exists():
        logger.warning(
            "%s: its source %s is gone; keeping the processed dataset without checking its checksum",
            out,
            source.path,
        )
        return None
    if source_sha256(source.path) != metadata.get("source_sha256"):
        return f"its source {source.path} changed (sha256 differs)"
    return None


def _generated_file_matches(path: Path, generation: dict) -> bool:
    """Whether the raw file at `path` was generated with these settings (read from its attributes)."""
    if path.suffix == ".npz":
        attrs = read_generation_settings(path) or {}
        return all(value is None or attrs.get(key) == value for key, value in generation.items())
    try:
        with h5py.File(path, "r") as file:
            attrs = dict(file.attrs)
    except OSError:
        return False
    # A setting that does not apply to this generator (None) is not recorded in the file.
    return all(value is None or attrs.get(key) == value for key, value in generation.items())


def _generate(name: str, source: Source, force: bool, data_dir: str | os.PathLike) -> None:
    settings = source.generation
    if not force and source.path.exists():
        if _generated_file_matches(source.path, settings):
            return
        logger.warning("regenerating %s: it was generated with settings other than %s", source.path, settings)
    logger.info("generating %s (%s)", source.path, settings)
    if name.startswith(OGBENCH_PREFIX):
        task = parse_task(name)
        searched = ", ".join(str(directory) for directory in official_dirs(data_dir))
        logger.warning(
            "%s: no official %s in %s; generating %d steps with OGBench's oracles (%s recipe, seed %d)",
            name, task.dataset_file, searched, settings["steps"], task.kind, settings["seed"],
        )
        generate_ogbench_dataset(source.path, task, n_steps=settings["steps"], seed=settings["seed"])
    elif maze := GENERATED_MAZE.fullmatch(name):
        generate_maze2d_hdf5(
            source.path,
            maze[1],
            n_steps=settings["steps"],
            action_noise=settings["action_noise"],
            seed=settings["seed"],
        )
    else:
        env_name = GENERATED_LOCOMOTION.fullmatch(name)[1]
        generate_locomotion_hdf5(source.path, env_name, n_steps=settings["steps"], seed=settings["seed"])


def _read_source(name: str, source: Source) -> tuple[dict[str, np.ndarray], dict]:
    """(step arrays, info with the env spec fields, action bounds if known, reference scores)."""
    if source.kind == "minari":
        arrays, info = read_minari(name[len(MINARI_PREFIX) :])
        if info["env_id"] is None:
            raise DatasetError(
                f"Minari dataset '{name}' at {source.path} records no environment (env_spec or eval_env_spec), so it "
                "cannot be evaluated; re-create it with `env` or `eval_env` set."
            )
        if info["ref_min_score"] is None:
            raise DatasetError(
                f"Minari dataset '{name}' at {source.path} has no ref_min_score/ref_max_score in its metadata, which "
                "the normalized score needs; re-create it with both set."
            )
        return arrays, info
    # Resolve the evaluation task before reading: an unknown name fails before a long read.
    spec = env_spec_for_dataset(name)
    if name.startswith(OGBENCH_PREFIX):
        info = {
            **spec,
            "action_low": None,
            "action_high": None,
            "ref_min_score": None,
            "ref_max_score": None,
            "reference_source": SUCCESS_RATE_SOURCE,
            "score": SUCCESS_RATE_SCORE,
        }
        return read_ogbench(source.path, parse_task(name)), info
    ref_min, ref_max, reference_source = reference_scores(name)
    arrays = read_d4rl_hdf5(source.path)
    info = {
        **spec,
        "action_low": None,
        "action_high": None,
        "ref_min_score": ref_min,
        "ref_max_score": ref_max,
        "reference_source": reference_source,
    }
    return arrays, info


def _env_spaces(spec: dict, name: str) -> tuple[int, int, list[float], list[float]] | None:
    """(obs_dim, action_dim, action_low, action_high) of the evaluation env, or None if it cannot be built."""
    try:
        env = make_env(spec)
    except (EnvironmentUnavailable, gym.error.Error) as error:
        logger.warning(
            "%s: cannot build the evaluation env (%s); its dimensions are not checked", name, error
        )
        return None
    try:
        if not isinstance(env.action_space, gym.spaces.Box):
            raise DatasetError(
                f"The evaluation env {spec['env_id']} of dataset '{name}' has {type(env.action_space).__name__} "
                "actions; only continuous (Box) actions are supported."
            )
        low, high = (
            np.broadcast_to(bound, env.action_space.shape).ravel()
            for bound in (env.action_space.low, env.action_space.high)
        )
        return (
            int(np.prod(env.observation_space.shape)),
            int(np.prod(env.action_space.shape)),
            low.tolist(),
            high.tolist(),
        )
    finally:
        env.close()


def _metadata(name: str, source: Source, arrays: dict, info: dict, starts: np.ndarray) -> dict:
    n_steps = len(arrays["observations"])
    return {
        "name": name,
        "source": source.kind,
        "source_path": str(source.path),
        "source_sha256": source_sha256(source.path),
        **{key: info[key] for key in ENV_SPEC_FIELDS},
        "obs_dim": int(arrays["observations"].shape[1]),
        "action_dim": int(arrays["actions"].shape[1]),
        "action_low": [float(v) for v in info["action_low"]],
        "action_high": [float(v) for v in info["action_high"]],
        "n_episodes": len(starts),
        "n_steps": n_steps,
        # "kept" when the data stops mid-episode: that last episode's final transition is a cut.
        "partial_last_episode": "none" if arrays["terminals"][-1] or arrays["timeouts"][-1] else "kept",
        "ref_min_score": _float_or_none(info["ref_min_score"]),
        "ref_max_score": _float_or_none(info["ref_max_score"]),
        "reference_source": info["reference_source"],
        "score": info.get("score", NORMALIZED_RETURN_SCORE),
        "stats": compute_stats(arrays),
        "generation": source.generation,
        "source_bytes": _source_bytes(source.path),
        # what a generated OGBench file records of its recipe (policy, noise, episodes, package version)
        "source_generation": read_generation_settings(source.path) if source.path.suffix == ".npz" else None,
    }


def _float_or_none(value) -> float | None:
    return None if value is None else float(value)


def _source_bytes(path: Path) -> int:
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    return sum(file.stat().st_size for file in files)


def prepare_dataset(
    name: str,
    data_dir: str | os.PathLike = "data",
    *,
    steps: int | None = None,
    action_noise: float | None = None,
    seed: int | None = None,
    force: bool = False,
) -> Path:
    """Build `<data_dir>/processed/<key>/` (episodes.npz + metadata.json) from the dataset's source.

    `steps`, `action_noise` and `seed` set a generated dataset (required there, unused for D4RL and Minari ones).
    Returns at once when the processed dataset is up to date; `force` rebuilds it (and regenerates
    a generated source). The steps are validated before anything is written: against the
    evaluation env's observation/action dimensions and action bounds where the env can be built
    (otherwise with a warning, against the Minari dataset's action space or the data's own range).
    """
    problem = dataset_name_problem(name)
    if problem:
        raise DatasetError(problem)
    source = resolve_source(name, data_dir, steps, action_noise, seed)
    out = processed_path(dataset_key(name, steps, action_noise, seed), data_dir)
    if not force:
        reason = _stale_reason(out, name, source)
        if reason is None:
            logger.info("%s is up to date", out)
            return out
        if out.exists():
            logger.warning("rebuilding %s: %s", out, reason)

    if source.kind == "generated":
        _generate(name, source, force, data_dir)
    arrays, info = _read_source(name, source)

    obs_dim = action_dim = None
    spaces = _env_spaces({key: info[key] for key in ENV_SPEC_FIELDS}, name)
    if spaces is not None:
        obs_dim, action_dim, info["action_low"], info["action_high"] = spaces
    bounds_known = info["action_low"] is not None
    validate_arrays(
        arrays,
        path=source.path,
        action_low=info["action_low"] if bounds_known else -np.inf,
        action_high=info["action_high"] if bounds_known else np.inf,
        obs_dim=obs_dim,
        action_dim=action_dim,
    )
    if not bounds_known:
        logger.warning("%s: action bounds unknown without the env; recording the data's own range", name)
        info["action_low"], info["action_high"] = arrays["actions"].min(axis=0), arrays["actions"].max(axis=0)

    starts, lengths = split_episodes(arrays["terminals"], arrays["timeouts"], keep_partial=True)
    processed = {key: arrays[key] for key in STEP_ARRAYS}
    processed.update(episode_starts=starts, episode_lengths=lengths)
    save_processed(out, processed, _metadata(name, source, arrays, info, starts))
    logger.info("wrote %s: %d steps in %d episodes", out, len(arrays["observations"]), len(starts))
    return out
