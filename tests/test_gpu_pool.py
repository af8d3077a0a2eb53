"""One GPU per job: concurrent processes claim distinct pool ids, a killed process frees its id.

The pool's ids are fake (DIFFUSER_GPUS) and CUDA is not touched, so this runs on any machine.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

# Claims a device, prints the claim as JSON, then holds it until stdin closes (or `hold` seconds).
CLAIMER = """
import json, sys, time
from diffuser.runtime.gpu_pool import GpuPoolError, claim_device
requested, timeout, hold = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
started = time.time()
try:
    claim = claim_device(requested, timeout=timeout, check_cuda=False)
except GpuPoolError as err:
    print(json.dumps({"error": str(err)}), flush=True)
    sys.exit(3)
print(json.dumps({**claim.as_dict(), "claimed_at": time.time(), "started": started}), flush=True)
if hold < 0:
    sys.stdin.read()
else:
    time.sleep(hold)
print(json.dumps({"released_at": time.time()}), flush=True)
"""


@pytest.fixture
def pool_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS")}
    env.update(PYTHONPATH=str(ROOT), DIFFUSER_GPUS="0,1", DIFFUSER_GPU_LOCK_DIR=str(tmp_path / "locks"))
    return env


def start(env, requested="auto", timeout=30.0, hold=-1.0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CLAIMER, requested, str(timeout), str(hold)],
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )


def first_line(process: subprocess.Popen) -> dict:
    return json.loads(process.stdout.readline())


def finish(process: subprocess.Popen) -> list[dict]:
    out, _ = process.communicate(timeout=30)
    return [json.loads(line) for line in out.splitlines()]


def test_concurrent_jobs_never_share_a_gpu(pool_env):
    # 5 jobs, 2 GPUs, each job holds its GPU for 0.4 s: no two jobs ever hold one id at once
    jobs = [start(pool_env, hold=0.4) for _ in range(5)]
    records = []
    for job in jobs:
        claim, release = finish(job)
        assert job.returncode == 0
        assert claim["source"] == "pool" and claim["device"] == "cuda:0"
        assert claim["cuda_visible_devices"] == claim["gpu"]
        records.append((claim["gpu"], claim["claimed_at"], release["released_at"]))
    assert {gpu for gpu, _, _ in records} == {"0", "1"}
    for i, (gpu, start_i, end_i) in enumerate(records):
        for gpu_j, start_j, end_j in records[i + 1:]:
            if gpu == gpu_j:
                assert end_i <= start_j or end_j <= start_i, "two jobs held one GPU at the same time"
    # with 2 GPUs, the last of 5 jobs had to wait for others to finish
    assert max(c for _, c, _ in records) - min(c for _, c, _ in records) >= 0.4


def test_killed_job_frees_its_gpu(pool_env):
    holders = [start(pool_env), start(pool_env)]
    claimed = {first_line(h)["gpu"]: h for h in holders}
    assert set(claimed) == {"0", "1"}
    waiting = start(pool_env, timeout=30)
    time.sleep(0.5)
    assert waiting.poll() is None  # the pool is full: it waits
    os.kill(claimed["1"].pid, signal.SIGKILL)
    claimed["1"].wait()
    claim = first_line(waiting)
    assert claim["gpu"] == "1"
    for process in (claimed["0"], waiting):
        process.stdin.close()
        process.wait(timeout=30)


def test_full_pool_fails_clearly_after_the_timeout(pool_env):
    pool_env["DIFFUSER_GPUS"] = "3"
    holder = start(pool_env)
    assert first_line(holder)["gpu"] == "3"
    late = start(pool_env, timeout=0.5)
    (result,) = finish(late)
    assert late.returncode == 3
    assert "stayed held by other jobs" in result["error"] and "DIFFUSER_GPU_WAIT_SECONDS" in result["error"]
    holder.stdin.close()
    holder.wait(timeout=30)


def test_cpu_and_no_gpu_pool_give_the_cpu(pool_env):
    (claim, _) = finish(start(pool_env, requested="cpu", hold=0))
    assert claim["device"] == "cpu" and claim["gpu"] is None
    pool_env["DIFFUSER_GPUS"] = "none"
    (claim, _) = finish(start(pool_env, hold=0))
    assert claim["device"] == "cpu" and claim["source"] == "no-gpu"


def test_explicit_gpu_is_used_and_kept_from_the_pool(pool_env):
    explicit = start(pool_env, requested="cuda:1")
    claim = first_line(explicit)
    assert claim["gpu"] == "1" and claim["source"] == "explicit" and claim["cuda_visible_devices"] == "1"
    (pooled, _) = finish(start(pool_env, hold=0))
    assert pooled["gpu"] == "0"
    explicit.stdin.close()
    explicit.wait(timeout=30)


def test_user_or_scheduler_allocation_is_left_alone(pool_env):
    pool_env.pop("DIFFUSER_GPUS")
    pool_env.update(CUDA_VISIBLE_DEVICES="")
    (claim, _) = finish(start(pool_env, hold=0))
    assert claim["source"] == "CUDA_VISIBLE_DEVICES" and claim["device"] == "cpu"
    assert claim["cuda_visible_devices"] == ""  # not overwritten
    assert not Path(pool_env["DIFFUSER_GPU_LOCK_DIR"]).exists()  # no lock taken


def test_slurm_job_without_gpus_runs_on_the_cpu_even_with_a_pool(pool_env):
    pool_env.update(SLURM_JOB_ID="42")  # DIFFUSER_GPUS=0,1 is still set: SLURM's allocation wins
    (claim, _) = finish(start(pool_env, hold=0))
    assert claim["source"] == "slurm" and claim["device"] == "cpu" and claim["gpu"] is None
    assert claim["cuda_visible_devices"] is None
    assert not Path(pool_env["DIFFUSER_GPU_LOCK_DIR"]).exists()
