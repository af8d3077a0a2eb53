"""A checkpoint save that fails in the middle of writing leaves the previous checkpoint as it was.

The writer is made to fail after writing half of the file (a full disk, a Ctrl-C): the previous
checkpoint must still load, and no partial file may sit where `latest_checkpoint` (which resume
uses) or a reader of final.pt would take it.
"""

import io
import os
import signal

import pytest
import torch

from diffuser.training import checkpoints as checkpoint
from diffuser.training.checkpoints import (
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    step_checkpoint_path,
)

REAL_SAVE = torch.save


def fail_halfway(error: BaseException):
    """A torch.save that writes the first half of the real file, then raises `error`."""

    def save(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        REAL_SAVE(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        if isinstance(f, (str, os.PathLike)):
            with open(f, "wb") as file:
                file.write(data[: len(data) // 2])
        else:
            f.write(data[: len(data) // 2])
            f.flush()
        raise error

    return save


ERRORS = [OSError(28, "No space left on device"), KeyboardInterrupt()]


@pytest.mark.parametrize("error", ERRORS, ids=["disk-full", "ctrl-c"])
def test_a_failed_step_checkpoint_leaves_the_previous_one_latest_and_loadable(tmp_path, monkeypatch, error):
    save_checkpoint(step_checkpoint_path(tmp_path, 10), {"step": 10, "w": torch.arange(1000.0)})
    monkeypatch.setattr(checkpoint.torch, "save", fail_halfway(error))
    with pytest.raises(type(error)):
        save_checkpoint(step_checkpoint_path(tmp_path, 20), {"step": 20, "w": torch.zeros(1000)})
    monkeypatch.undo()

    latest = latest_checkpoint(tmp_path)
    assert latest == step_checkpoint_path(tmp_path, 10), f"resume would pick {latest}"
    state = load_checkpoint(latest)
    assert state["step"] == 10 and torch.equal(state["w"], torch.arange(1000.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state_00000010.pt"], "no partial or temporary file is left"


@pytest.mark.parametrize("error", ERRORS, ids=["disk-full", "ctrl-c"])
def test_a_failed_overwrite_keeps_the_old_file_whole(tmp_path, monkeypatch, error):
    final = save_checkpoint(tmp_path / "final.pt", {"step": 1, "ema": {"w": torch.ones(500)}})
    monkeypatch.setattr(checkpoint.torch, "save", fail_halfway(error))
    with pytest.raises(type(error)):
        save_checkpoint(final, {"step": 2, "ema": {"w": torch.full((500,), 2.0)}})
    monkeypatch.undo()

    state = load_checkpoint(final)
    assert state["step"] == 1 and torch.equal(state["ema"]["w"], torch.ones(500))
    assert [p.name for p in tmp_path.iterdir()] == ["final.pt"]


def test_a_completed_save_replaces_the_file(tmp_path):
    path = save_checkpoint(tmp_path / "final.pt", {"step": 1})
    save_checkpoint(path, {"step": 2})
    assert load_checkpoint(path)["step"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["final.pt"]


def test_a_stop_signal_during_a_save_waits_for_the_file_and_then_interrupts(tmp_path, monkeypatch):
    """A scheduler's SIGTERM arriving while torch writes the archive must not leave torch's own
    half-written-archive error (the run would end `failed`, exit 1) or lose the checkpoint: the save
    completes, then the interrupt is raised."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    def save_while_signalled(obj, f, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # bytecode boundaries where an unheld signal's handler would run
            pass
        REAL_SAVE(obj, f, *args, **kwargs)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        monkeypatch.setattr(checkpoint.torch, "save", save_while_signalled)
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            save_checkpoint(step_checkpoint_path(tmp_path, 20), {"step": 20, "w": torch.arange(1000.0)})
    finally:
        signal.signal(signal.SIGTERM, previous)
    monkeypatch.undo()
    state = load_checkpoint(latest_checkpoint(tmp_path))
    assert state["step"] == 20 and torch.equal(state["w"], torch.arange(1000.0))
    assert [p.name for p in tmp_path.iterdir()] == ["state_00000020.pt"]
