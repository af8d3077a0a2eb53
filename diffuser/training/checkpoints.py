"""Atomic, code-free checkpoints.

A checkpoint is a plain nested dict of tensors, numbers, strings, lists and dicts saved with
`torch.save`, and loaded with `weights_only=True`, so loading one never runs code.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import tempfile
import threading
from pathlib import Path

import torch

from diffuser.errors import CheckpointError

_STEP_FILE = re.compile(r"^state_(\d+)\.pt$")
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write `state` to `path` atomically: a temporary file in the same folder, then rename.

    Ctrl-C, SIGTERM and SIGHUP are held while the file is written and take effect right after it is
    in place: an interrupt raised inside `torch.save` would end the run with torch's own error about
    a half-written archive (not as `interrupted`) and lose the checkpoint it was writing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _stop_signals_held():
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


@contextlib.contextmanager
def _stop_signals_held():
    """Record Ctrl-C, SIGTERM and SIGHUP inside the block; deliver them to the handlers that were
    installed once it ends. (Blocking them with a signal mask is not enough: torch's threads would
    take a signal sent to the process.) Outside the main thread, where handlers cannot be set,
    nothing is held."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: arrived.append(signum))
                for signum in _STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        for signum in dict.fromkeys(arrived):
            signal.raise_signal(signum)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint without executing code (`weights_only=True`)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist: train the cell first or give an existing file.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(
            f"Checkpoint {path} cannot be loaded safely ({type(err).__name__}: {str(err).splitlines()[0]}); "
            "it is corrupt or holds objects other than tensors and plain data: delete it and re-run training."
        ) from err


def step_checkpoint_path(directory: str | os.PathLike, step: int) -> Path:
    return Path(directory) / f"state_{step:08d}.pt"


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The checkpoint with the highest step in `directory`, or None."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP_FILE.match(p.name))]
    return max(found)[1] if found else None


def prune_checkpoints(directory: str | os.PathLike, keep: int = 2) -> None:
    """Delete all but the newest `keep` step checkpoints."""
    directory = Path(directory)
    found = sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP_FILE.match(p.name)))
    for _, p in found[:-keep]:
        p.unlink(missing_ok=True)
