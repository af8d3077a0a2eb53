import pickle

import pytest
import torch

from diffuser.training.checkpoints import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    step_checkpoint_path,
)
from diffuser.training.metrics import MetricsLogger


class _RunsCode:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_checkpoint_round_trip_keeps_tensors_and_plain_data(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3), "step": 7, "config": {"a": [1, 2.5, None, "x"]}}
    path = save_checkpoint(tmp_path / "c.pt", state)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["w"], state["w"])
    assert loaded["step"] == 7 and loaded["config"] == state["config"]
    assert not list(tmp_path.glob("*.tmp")), "the temporary file must be renamed away"


def test_a_checkpoint_cannot_execute_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "evil.pt"
    with open(bad, "wb") as f:
        pickle.dump({"payload": _RunsCode()}, f)
    torch.save({"payload": _RunsCode()}, tmp_path / "evil2.pt")
    for path in (bad, tmp_path / "evil2.pt"):
        with pytest.raises(CheckpointError, match="cannot be loaded safely"):
            load_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()


def test_truncated_checkpoint_gives_clear_error(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", {"w": torch.zeros(1000)})
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_latest_and_prune_keep_the_newest(tmp_path):
    for step in (10, 200, 30):
        save_checkpoint(step_checkpoint_path(tmp_path, step), {"step": step})
    assert latest_checkpoint(tmp_path).name == "state_00000200.pt"
    prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.glob("state_*.pt")) == ["state_00000030.pt", "state_00000200.pt"]
    assert latest_checkpoint(tmp_path / "missing") is None


def test_metrics_logger_drops_rows_after_the_resumed_step(tmp_path):
    path = tmp_path / "metrics.csv"
    logger = MetricsLogger(path)
    for step in (1, 2, 3, 4):
        logger.log(step, {"loss": step * 1.5, "nan_is_skipped": float("nan")})
    logger.close()
    resumed = MetricsLogger(path, resume_step=2)
    resumed.log(3, {"loss": 99.0})
    resumed.close()
    rows = MetricsLogger.read_rows(resumed)
    assert [(int(s), m, float(v)) for s, m, v in rows] == [(1, "loss", 1.5), (2, "loss", 3.0), (3, "loss", 99.0)]
