"""Kill a real sweep anywhere, run the same command again: it finishes, and every offline cell ends
exactly as an uninterrupted sweep does (final weights and evaluation).

The kill moments are random (the seed is in the failure message) within each phase: dataset
preparation, VAE pre-training, training, evaluation. `snakemake` gets SIGKILL of its whole process
group (what the OOM killer or `kill -9 -PGID` does); `run_experiment.py` gets SIGINT of its process
group (Ctrl-C in a terminal). No `--unlock` or other manual step in between.
"""

from __future__ import annotations

import functools
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from test_workflow import (
    REAL_TINY_SPEC,
    checkout_env,
    default_ctrl_c,
    make_checkout,
    planned_jobs,
    requires_real_pipeline,
)

# Offline cells only (online ones resume exactly except for the episode in progress), two seeds so
# two jobs run at once; phases long enough to be hit: ~0.5 s preparation, a few seconds each else.
SPEC = {
    "meta_data": {"exp_name": "tiny", "gpus_per_job": 0, "num_workers": 2},
    "constants": {
        **REAL_TINY_SPEC["constants"], "online_training": False, "n_train_steps": 120, "save_freq": 20,
        "vae_pretrain_steps": 200, "num_eval": 3,
    },
    "variables": {"seed": [0, 1]},
}
CELLS = ("seed~0", "seed~1")
SWEEP = [sys.executable, "-m", "snakemake", "--nocolor", "--cores", "2", "--workflow-profile", "workflow/profiles/default"]
MAX_ATTEMPTS = 12


def _checkpointed(checkout: Path) -> bool:
    return any((checkout / "results" / "tiny" / "cells").rglob("state_*.pt"))


# phase -> (the `python -m diffuser STEP` that runs it, an extra condition)
PHASES = {
    "preparation": ("prepare", None),
    "pre-training": ("pretrain", None),
    "training": ("train", _checkpointed),  # after a checkpoint, so that resuming from one is exercised
    "evaluation": ("evaluate", None),
}


def _runs_step(process: subprocess.Popen, step: str) -> bool:
    """Whether a job of `process`'s sweep is running `python -m diffuser STEP` now."""
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return False
    for child in children:
        try:
            cmdline = child.cmdline()
        except psutil.Error:
            continue
        if "diffuser" in cmdline and step in cmdline[cmdline.index("diffuser"):]:
            return True
    return False


def _in_phase(process: subprocess.Popen, step: str, condition, checkout: Path) -> bool:
    return _runs_step(process, step) and (condition is None or condition(checkout))


def _wait(process: subprocess.Popen, predicate, timeout: float = 600) -> bool:
    """True once `predicate()` holds while `process` runs; False when the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if predicate():
            return True
        time.sleep(0.02)
    pytest.fail("timed out waiting for a phase to start")


def _start(command: list[str], checkout: Path) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=checkout, env=checkout_env(checkout), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, preexec_fn=default_ctrl_c)


def interrupt_then_finish(checkout: Path, command: list[str], signum: int, rng: random.Random) -> list[str]:
    """Start `command`; at a random moment of each phase in turn send `signum` to its process group and
    start it again, until a run finishes with nothing left to interrupt; the outputs of every run."""
    outputs, phases = [], list(PHASES)
    for _ in range(MAX_ATTEMPTS):
        process = _start(command, checkout)
        hit = False
        if phases:
            step, condition = PHASES[phases.pop(0)]
            hit = _wait(process, functools.partial(_in_phase, process, step, condition, checkout))
            if hit:
                time.sleep(rng.uniform(0.0, 1.5))
                try:
                    os.killpg(process.pid, signum)
                except ProcessLookupError:
                    pass  # it finished in the meantime
        try:
            out, _ = process.communicate(timeout=600)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
        outputs.append(out)
        assert hit or process.returncode == 0, f"a run failed on its own:\n{out}"
        if process.returncode == 0 and not phases:
            return outputs
    pytest.fail(f"not finished after {MAX_ATTEMPTS} runs; last output:\n{outputs[-1]}")


def final_weights(checkout: Path, cell: str) -> dict:
    return torch.load(checkout / "results" / "tiny" / "cells" / cell / "final.pt", weights_only=True)["ema"]


def evaluation(checkout: Path, cell: str) -> dict:
    result = json.loads((checkout / "results" / "tiny" / "cells" / cell / "eval.json").read_text())
    result.pop("seconds")  # wall clock
    return result


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    checkout = make_checkout(tmp_path_factory.mktemp("uninterrupted"), SPEC, stand_in=False)
    run = subprocess.run(SWEEP, cwd=checkout, env=checkout_env(checkout), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    return checkout


def assert_same_results(checkout: Path, reference: Path, context: str) -> None:
    for cell in CELLS:
        ours, theirs = final_weights(checkout, cell), final_weights(reference, cell)
        assert ours.keys() == theirs.keys()
        for name in ours:
            assert torch.equal(ours[name], theirs[name]), f"{cell} {name} differs ({context})"
        assert evaluation(checkout, cell) == evaluation(reference, cell), f"{cell} eval.json differs ({context})"
    assert planned_jobs(checkout) == {}


@pytest.mark.slow
@requires_real_pipeline
def test_snakemake_killed_with_sigkill_in_every_phase_resumes_with_the_same_command(uninterrupted, tmp_path):
    seed = random.randrange(10**6)
    checkout = make_checkout(tmp_path, SPEC, stand_in=False)
    outputs = interrupt_then_finish(checkout, SWEEP, signal.SIGKILL, random.Random(seed))
    context = f"random seed {seed}, {len(outputs)} runs"
    assert len(outputs) >= 3, context
    assert any("removed the stale Snakemake lock" in out for out in outputs), context
    assert not any("LockException" in out for out in outputs), context
    assert_same_results(checkout, uninterrupted, context)
    # a cell's log kept every attempt; a resumed attempt said so there, in the job log and on the console
    histories = [(checkout / "results" / "tiny" / "cells" / cell / "train.log").read_text() for cell in CELLS]
    resumed = [text for text in histories if text.count("==== attempt") >= 2 and "resumed from step" in text]
    assert resumed, context
    job_logs = [(checkout / "logs" / "tiny" / "train" / f"{cell}.log").read_text() for cell in CELLS]
    assert sorted(job_logs) == sorted(histories)
    assert any("resumed from step" in out for out in outputs), context
    for cell in CELLS:
        info = json.loads((checkout / "results" / "tiny" / "cells" / cell / "run.json").read_text())
        assert info["status"] == "finished" and info["step"] == SPEC["constants"]["n_train_steps"]


@pytest.mark.slow
@requires_real_pipeline
def test_run_experiment_interrupted_with_ctrl_c_in_every_phase_resumes_with_the_same_command(uninterrupted, tmp_path):
    seed = random.randrange(10**6)
    checkout = make_checkout(tmp_path, SPEC, stand_in=False)
    command = [sys.executable, "run_experiment.py", "-e", "config/config.yaml", "-g", "-1", "--cores", "2"]
    outputs = interrupt_then_finish(checkout, command, signal.SIGINT, random.Random(seed))
    context = f"random seed {seed}, {len(outputs)} runs"
    assert len(outputs) >= 3, context
    assert not any("Traceback" in out or "LockException" in out for out in outputs), context
    assert any("interrupted (SIGINT)" in out for out in outputs), context
    assert_same_results(checkout, uninterrupted, context)
