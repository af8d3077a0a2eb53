"""The processed dataset format (docs/INTERFACES.md, `format_version` 1) and the checks around it.

A processed dataset is a directory with `episodes.npz` (the episodes stored one after another) and
`metadata.json`. This module writes and reads it, splits a stream of steps into episodes by D4RL's
rules, computes the normalizer statistics, and validates step arrays before anything is written.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np

from diffuser.errors import DatasetError

FORMAT_VERSION = 1
EPISODES_FILE = "episodes.npz"
METADATA_FILE = "metadata.json"

# Per-step arrays (length N) and per-episode arrays (length E), with the dtypes the format fixes.
STEP_ARRAYS = {
    "observations": np.float32,
    "actions": np.float32,
    "rewards": np.float32,
    "terminals": np.bool_,
    "timeouts": np.bool_,
    "next_observations": np.float32,
}
EPISODE_ARRAYS = {"episode_starts": np.int64, "episode_lengths": np.int64}
FORMAT_ARRAYS = {**STEP_ARRAYS, **EPISODE_ARRAYS}
FLOAT_ARRAYS = ("observations", "actions", "rewards", "next_observations")
FLAG_ARRAYS = ("terminals", "timeouts")

# Actions stored as float32 after clipping can sit a rounding error outside the bounds; only larger
# excursions are real violations.
ACTION_BOUND_TOLERANCE = 1e-4

# What numpy raises on a truncated or overwritten .npz (a zip archive of .npy files).
_NPZ_READ_ERRORS = (zipfile.BadZipFile, ValueError, EOFError, OSError, KeyError)


def _prepare_hint(directory: Path) -> str:
    return f"re-run `python -m diffuser prepare --dataset {directory.name}` to rebuild it"


def _json_default(value):
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as file:
        os.fsync(file.fileno())


def save_processed(directory: str | os.PathLike, arrays: dict, metadata: dict) -> Path:
    """Write `arrays` (the format's eight arrays) and `metadata` as a processed dataset at `directory`.

    Atomic: everything is written into a temporary directory beside `directory` and renamed into
    place, so a reader sees either the previous dataset or the complete new one, never half of it.
    `format_version` is set here. Returns `directory`.
    """
    directory = Path(directory)
    metadata = {
        "format_version": FORMAT_VERSION,
        **{k: v for k, v in metadata.items() if k != "format_version"},
    }
    stored = {key: np.ascontiguousarray(arrays[key], dtype=dtype) for key, dtype in FORMAT_ARRAYS.items()}
    check_format(stored, metadata, directory)

    directory.parent.mkdir(parents=True, exist_ok=True)
    temporary = directory.with_name(f".{directory.name}.{os.getpid()}.tmp")
    previous = directory.with_name(f".{directory.name}.{os.getpid()}.old")
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        temporary.mkdir()
        np.savez(temporary / EPISODES_FILE, **stored)
        (temporary / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=_json_default) + "\n")
        for name in (EPISODES_FILE, METADATA_FILE):
            _fsync_file(temporary / name)
        # A directory cannot be renamed over a non-empty one: move the old one aside first.
        if directory.exists():
            directory.rename(previous)
        temporary.rename(directory)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
        shutil.rmtree(previous, ignore_errors=True)
    return directory


def load_processed(directory: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Read a processed dataset: (the eight arrays of the format, metadata), checked for consistency."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetError(
            f"No processed dataset at {directory}; run `python -m diffuser prepare --dataset {directory.name}` to build it."
        )
    metadata_path = directory / METADATA_FILE
    episodes_path = directory / EPISODES_FILE
    for path in (metadata_path, episodes_path):
        if not path.is_file():
            raise DatasetError(f"{path} is missing from the processed dataset; {_prepare_hint(directory)}.")

    try:
        metadata = json.loads(metadata_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as error:
        raise DatasetError(
            f"{metadata_path} is truncated or corrupt ({error}); {_prepare_hint(directory)}."
        ) from error
    if not isinstance(metadata, dict):
        raise DatasetError(f"{metadata_path} does not hold a JSON object; {_prepare_hint(directory)}.")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise DatasetError(
            f"{metadata_path} has format_version {metadata.get('format_version')!r} but this code reads "
            f"version {FORMAT_VERSION}; {_prepare_hint(directory)}."
        )

    try:
        with np.load(episodes_path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except _NPZ_READ_ERRORS as error:
        raise DatasetError(
            f"{episodes_path} is truncated or corrupt ({error}); {_prepare_hint(directory)}."
        ) from error
    check_format(arrays, metadata, directory)
    return {key: arrays[key] for key in FORMAT_ARRAYS}, metadata


def check_format(arrays: dict[str, np.ndarray], metadata: dict, directory: Path) -> None:
    """The eight arrays are present with the format's dtypes and shapes, episodes tile the steps,
    and the metadata's counts and dimensions agree with the arrays."""
    episodes_path = directory / EPISODES_FILE
    hint = _prepare_hint(directory)
    for key, dtype in FORMAT_ARRAYS.items():
        if key not in arrays:
            raise DatasetError(f"{episodes_path} has no array `{key}`; {hint}.")
        if arrays[key].dtype != dtype:
            raise DatasetError(
                f"Array `{key}` in {episodes_path} has dtype {arrays[key].dtype}, expected {np.dtype(dtype)}; {hint}."
            )
    n_steps = len(arrays["observations"])
    expected_shapes = {
        "observations": (n_steps, metadata.get("obs_dim")),
        "next_observations": (n_steps, metadata.get("obs_dim")),
        "actions": (n_steps, metadata.get("action_dim")),
        "rewards": (n_steps,),
        "terminals": (n_steps,),
        "timeouts": (n_steps,),
        "episode_starts": (metadata.get("n_episodes"),),
        "episode_lengths": (metadata.get("n_episodes"),),
    }
    for key, shape in expected_shapes.items():
        if arrays[key].shape != shape:
            raise DatasetError(
                f"Array `{key}` in {episodes_path} has shape {arrays[key].shape} but the metadata (obs_dim, "
                f"action_dim, n_episodes) says {shape}; {hint}."
            )
    if metadata.get("n_steps") != n_steps:
        raise DatasetError(
            f"{directory / METADATA_FILE} says n_steps={metadata.get('n_steps')} but {episodes_path} holds {n_steps}; {hint}."
        )
    starts, lengths = arrays["episode_starts"], arrays["episode_lengths"]
    expected_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else lengths
    if lengths.sum() != n_steps or (lengths <= 0).any() or not np.array_equal(starts, expected_starts):
        raise DatasetError(
            f"`episode_starts`/`episode_lengths` in {episodes_path} do not tile the {n_steps} steps into "
            f"consecutive non-empty episodes; {hint}."
        )


def split_episodes(
    terminals: np.ndarray, timeouts: np.ndarray, keep_partial: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Episode (starts, lengths) of a stream of steps, by D4RL's rules.

    An episode ends after every step whose terminal or timeout flag is set (a timeout is a cut, not
    a terminal; both on one step end one episode). Steps after the last end form a partial episode
    (the data was cut mid-episode): with `keep_partial` it is kept as the last episode and its final
    transition is to be treated as cut, not terminal (its flags stay False); otherwise it is dropped,
    and `lengths.sum()` is less than the number of steps.
    """
    terminals = np.asarray(terminals, dtype=bool)
    timeouts = np.asarray(timeouts, dtype=bool)
    if terminals.shape != timeouts.shape or terminals.ndim != 1:
        raise ValueError(
            f"terminals {terminals.shape} and timeouts {timeouts.shape} must be equal-length 1-d arrays"
        )
    n_steps = len(terminals)
    stops = np.flatnonzero(terminals | timeouts) + 1
    if keep_partial and n_steps and (len(stops) == 0 or stops[-1] < n_steps):
        stops = np.append(stops, n_steps)
    starts = np.concatenate([[0], stops[:-1]]).astype(np.int64) if len(stops) else np.zeros(0, np.int64)
    return starts, (stops - starts).astype(np.int64)


def _summary(values: np.ndarray) -> dict:
    values = np.asarray(values, dtype=np.float64)
    return {
        "mean": values.mean(axis=0).tolist(),
        "std": values.std(axis=0).tolist(),
        "min": values.min(axis=0).tolist(),
        "max": values.max(axis=0).tolist(),
    }


def compute_stats(arrays: dict[str, np.ndarray]) -> dict:
    """Per-dimension mean/std/min/max of observations and actions, and the same scalars of rewards."""
    return {key: _summary(arrays[key]) for key in ("observations", "actions", "rewards")}


def check_equal_lengths(arrays: dict[str, np.ndarray], keys, path) -> int:
    """The common length of `arrays[key]` for `keys`; DatasetError naming them if they differ."""
    lengths = {key: len(arrays[key]) for key in keys}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{key}={length}" for key, length in lengths.items())
        raise DatasetError(
            f"The step arrays in {path} have different lengths ({listed}); every field needs one entry per step, so fix or re-create the file."
        )
    return next(iter(lengths.values()))


def _first_non_finite(values: np.ndarray) -> int | None:
    bad_rows = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    return int(np.argmax(bad_rows)) if bad_rows.any() else None


def validate_arrays(
    arrays: dict[str, np.ndarray],
    *,
    path,
    action_low,
    action_high,
    obs_dim: int | None = None,
    action_dim: int | None = None,
) -> None:
    """Check a source's step arrays before they are written; DatasetError names the file and field.

    Checks: every step array is present, the dataset is not empty, all have one entry per step and
    the expected ranks, observation/action dimensions match the environment's (where given),
    no NaN or inf, terminal/timeout flags are 0/1, and actions lie within the bounds up to
    `ACTION_BOUND_TOLERANCE`.
    """
    missing = [key for key in STEP_ARRAYS if key not in arrays]
    if missing:
        raise DatasetError(
            f"{path} has no field(s) {', '.join(missing)}; a dataset needs all of {', '.join(STEP_ARRAYS)}."
        )
    n_steps = check_equal_lengths(arrays, STEP_ARRAYS, path)
    if n_steps == 0:
        raise DatasetError(f"{path} contains no steps; re-create it with data in it.")

    ranks = {
        "observations": 2,
        "next_observations": 2,
        "actions": 2,
        "rewards": 1,
        "terminals": 1,
        "timeouts": 1,
    }
    for key, rank in ranks.items():
        if arrays[key].ndim != rank:
            raise DatasetError(
                f"Field `{key}` in {path} has shape {arrays[key].shape}, expected {rank} dimension(s) ([steps] or [steps, dim]); fix the file."
            )
    if arrays["next_observations"].shape != arrays["observations"].shape:
        raise DatasetError(
            f"Field `next_observations` in {path} has shape {arrays['next_observations'].shape} but `observations` "
            f"has {arrays['observations'].shape}; fix the file."
        )
    for key, expected in (("observations", obs_dim), ("actions", action_dim)):
        if expected is not None and arrays[key].shape[1] != expected:
            raise DatasetError(
                f"Field `{key}` in {path} has dimension {arrays[key].shape[1]} but the evaluation environment's is "
                f"{expected}; the file belongs to a different environment, so use the matching dataset name."
            )

    for key in FLOAT_ARRAYS:
        index = _first_non_finite(np.asarray(arrays[key]))
        if index is not None:
            raise DatasetError(
                f"Field `{key}` in {path} holds NaN or inf, first at step {index}; remove or repair those steps in the source."
            )
    for key in FLAG_ARRAYS:
        flags = np.asarray(arrays[key])
        if flags.dtype != np.bool_ and not np.isin(flags, (0, 1)).all():
            index = int(np.argmax(~np.isin(flags, (0, 1))))
            raise DatasetError(
                f"Field `{key}` in {path} must hold 0/1 flags but step {index} holds {flags[index]}; fix the file."
            )

    actions = np.asarray(arrays["actions"], dtype=np.float64)
    low = np.broadcast_to(np.asarray(action_low, dtype=np.float64), actions.shape[1:])
    high = np.broadcast_to(np.asarray(action_high, dtype=np.float64), actions.shape[1:])
    excess = np.maximum(low - actions, actions - high)  # > 0 outside the bounds
    outside = excess > ACTION_BOUND_TOLERANCE
    if outside.any():
        step, dim = np.unravel_index(np.argmax(excess), excess.shape)
        raise DatasetError(
            f"Field `actions` in {path} has {int(outside.sum())} value(s) outside the action bounds "
            f"[{low.tolist()}, {high.tolist()}], the worst {actions[step, dim]:.6g} at step {step}, dimension {dim}; "
            "clip the actions to the bounds or check that the dataset belongs to this environment."
        )
