"""run.json tells the truth about a run: running, finished, failed, interrupted, or killed (its process gone)."""

import json
import os
import platform
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import PYTHON, ROOT, python_env
from test_training import write_cell

from diffuser import steps
from diffuser.config import load_cell_config
from diffuser.training.trainer import Trainer


def status(run_dir) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def test_a_finished_run_says_so_with_its_steps(tmp_path, tiny_maze_data):
    config = load_cell_config(write_cell(tmp_path / "cell.yaml", n_train_steps=4, save_freq=2))
    steps.train(config, tmp_path / "run", tiny_maze_data)
    info = status(tmp_path / "run")
    assert info["status"] == "finished" and info["step"] == 4 and info["resumed_from"] is None
    assert info["pid"] == os.getpid()


@pytest.mark.parametrize(("raised", "expected"), [(RuntimeError("disk full"), "failed"),
                                                  (KeyboardInterrupt("SIGTERM"), "interrupted")])
def test_a_run_that_stops_early_says_how(tmp_path, tiny_maze_data, monkeypatch, raised, expected):
    def stop(self):
        self.step = 3
        raise raised

    monkeypatch.setattr(Trainer, "train", stop)
    config = load_cell_config(write_cell(tmp_path / "cell.yaml", n_train_steps=4))
    with pytest.raises(type(raised)):
        steps.train(config, tmp_path / "run", tiny_maze_data)
    info = status(tmp_path / "run")
    assert info["status"] == expected and info["step"] == 3
    assert ("disk full" if expected == "failed" else "SIGTERM") in info["detail"]


def test_a_run_killed_outright_reads_as_killed_not_running(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    info = {"status": "running", "pid": gone.pid, "host": platform.node()}
    (run_dir / "run.json").write_text(json.dumps(info))
    assert steps.run_status(run_dir)["status"] == "killed"
    (run_dir / "run.json").write_text(json.dumps({**info, "pid": os.getpid()}))
    assert steps.run_status(run_dir)["status"] == "running"  # this process is alive
    assert steps.run_status(tmp_path / "never")["status"] == "none"


def test_sigterm_interrupts_training_cleanly_and_the_next_attempt_resumes(tmp_path, tiny_maze_data):
    cell = write_cell(tmp_path / "cell.yaml", n_train_steps=100000, save_freq=5, lr_schedule="constant")
    run_dir = tmp_path / "run"
    command = [PYTHON, "-m", "diffuser", "train", "--cell-config", str(cell), "--run-dir", str(run_dir),
               "--data-dir", str(tiny_maze_data)]
    process = subprocess.Popen(command, env=python_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        deadline = time.monotonic() + 600
        while not list((run_dir / "checkpoints").glob("state_*.pt")):
            assert time.monotonic() < deadline and process.poll() is None, process.communicate()
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130 and "Traceback" not in err, err
    assert "interrupted (SIGTERM)" in err
    info = status(run_dir)
    assert info["status"] == "interrupted" and info["step"] >= 5

    write_cell(cell, n_train_steps=info["step"] + 3, save_freq=5, lr_schedule="constant")
    again = subprocess.run(command, env=python_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "the previous attempt of this run ended interrupted" in again.stdout
    resumed = re.search(r"resumed from step (\d+) \(checkpoint (\S+)\)", again.stdout)
    assert resumed and 5 <= int(resumed[1]) <= info["step"] and "checkpoints/state_" in resumed[2]
    assert status(run_dir)["status"] == "finished"
