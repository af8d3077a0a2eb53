"""One GPU per job: a machine-wide pool of GPU ids claimed with file locks.

`snakemake --cores N --resources gpu=G` bounds how many GPU jobs run at once but does not say
which GPU each one gets. Each job therefore claims a free id itself: one lock file per id in a
shared lock directory, locked with `fcntl.flock` for the life of the process. The kernel drops
the lock when the process ends, however it ends, so a crashed or killed job frees its GPU.

Where the ids come from:
- `DIFFUSER_GPUS` ("0,1,3"; "", "none" or "-1" for no GPU), else the GPUs `nvidia-smi` lists;
- a scheduler's allocation wins: inside a SLURM job (`SLURM_JOB_ID` set), or when
  `CUDA_VISIBLE_DEVICES` is already set and `DIFFUSER_GPUS` is not, the pool steps aside and
  the job uses the GPUs it was given (a SLURM job given none runs on the CPU).

Environment: `DIFFUSER_GPU_LOCK_DIR` (default `<tmp>/diffuser-gpu-locks`, shared by every user of
the machine), `DIFFUSER_GPU_WAIT_SECONDS` (how long a job waits for a free GPU, default 3600).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from diffuser.errors import GpuPoolError, GpuRequestError

NO_GPU_WORDS = ("", "none", "-1")
# where SLURM names a job's GPUs when CUDA_VISIBLE_DEVICES is not set
SLURM_GPU_VARIABLES = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS")
DEFAULT_WAIT_SECONDS = 3600.0
POLL_SECONDS = 0.2


@dataclass
class DeviceClaim:
    """The device a process computes on, and how it got it."""

    requested: str  # the config's `device`: auto, cpu, cuda or cuda:N
    device: str  # the torch device string to use in this process
    gpu: str | None  # the physical GPU id claimed from the pool, if any
    source: str  # "cpu", "pool", "explicit", "slurm", "CUDA_VISIBLE_DEVICES" or "no-gpu"
    cuda_visible_devices: str | None  # CUDA_VISIBLE_DEVICES after the claim
    lock_path: str | None = None
    waited_seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


# The held lock files: open for the life of the process (closing one would free its GPU).
_held_locks: list = []
_current: DeviceClaim | None = None


def lock_dir() -> Path:
    return Path(os.environ.get("DIFFUSER_GPU_LOCK_DIR") or Path(tempfile.gettempdir()) / "diffuser-gpu-locks")


def wait_seconds() -> float:
    return float(os.environ.get("DIFFUSER_GPU_WAIT_SECONDS", DEFAULT_WAIT_SECONDS))


def pool_ids() -> list[str]:
    """The GPU ids of the pool: DIFFUSER_GPUS, else nvidia-smi's list, else none."""
    listed = os.environ.get("DIFFUSER_GPUS")
    if listed is not None:
        if listed.strip().lower() in NO_GPU_WORDS:
            return []
        return [part.strip() for part in listed.split(",") if part.strip()]
    return _nvidia_smi_ids()


def _nvidia_smi_ids() -> list[str]:
    # nvidia-smi, unlike torch.cuda.device_count(), does not initialise CUDA in this process.
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def _open_lock_dir() -> Path:
    directory = lock_dir()
    directory.mkdir(parents=True, exist_ok=True)
    try:
        # sticky and world-writable like /tmp, so jobs of every user on the machine share the pool
        os.chmod(directory, 0o1777)
    except PermissionError:
        pass
    return directory


def _try_lock(directory: Path, gpu: str) -> int | None:
    """An open, exclusively locked file descriptor for `gpu`, or None if another process holds it."""
    path = directory / f"gpu-{gpu}.lock"
    # flock needs no write permission, so a lock file created by another user still works read-only
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _claim_from_pool(ids: list[str], timeout: float) -> tuple[str, int, float]:
    """(gpu id, its locked file descriptor, seconds waited)."""
    directory = _open_lock_dir()
    started = time.monotonic()
    while True:
        for gpu in ids:
            fd = _try_lock(directory, gpu)
            if fd is not None:
                return gpu, fd, time.monotonic() - started
        waited = time.monotonic() - started
        if waited >= timeout:
            raise GpuPoolError(
                f"all GPUs of the pool ({','.join(ids)}) stayed held by other jobs for {waited:.0f} s "
                f"(locks in {directory}); run fewer GPU jobs at once (snakemake --resources gpu={len(ids)}) "
                "or raise DIFFUSER_GPU_WAIT_SECONDS."
            )
        time.sleep(POLL_SECONDS)


def _cuda_initialised() -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and torch.cuda.is_initialized()


def _use(gpu: str, requested: str, source: str, fd: int | None = None, waited: float = 0.0) -> DeviceClaim:
    """Point this process at physical GPU `gpu`; `fd` is its lock, kept open until the process ends."""
    lock_path = None
    if fd is not None:
        _held_locks.append(fd)
        lock_path = str(lock_dir() / f"gpu-{gpu}.lock")
    if _cuda_initialised():
        # too late to hide the other GPUs from this process: address the claimed one directly
        device = f"cuda:{gpu}"
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        device = "cuda:0"
    return DeviceClaim(requested, device, gpu, source, os.environ.get("CUDA_VISIBLE_DEVICES"), lock_path, waited)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _check_cuda(claim: DeviceClaim) -> DeviceClaim:
    import torch

    if not torch.cuda.is_available():
        raise GpuPoolError(
            f"device {claim.requested!r} got GPU {claim.gpu or claim.cuda_visible_devices} but this torch "
            f"({torch.__version__}) cannot use CUDA; install a CUDA build of torch, or set device: cpu "
            "(or DIFFUSER_GPUS=none)."
        )
    return claim


def claim_device(requested: str = "auto", *, timeout: float | None = None, check_cuda: bool = True) -> DeviceClaim:
    """Claim the device for this process (once; later calls return the first claim).

    "cpu": the CPU. "auto": a free pooled GPU, else the CPU. "cuda": a free pooled GPU, waiting
    for one. "cuda:N": GPU N of the pool's numbering (its lock is taken when free, so pooled jobs
    avoid it, but the job does not wait for it). `check_cuda=False` skips asking torch whether
    the claimed GPU is usable (tests use fake ids on CPU machines).
    """
    global _current
    if _current is not None:
        return _current
    claim = _claim(requested, wait_seconds() if timeout is None else timeout)
    if check_cuda and claim.device.startswith("cuda"):
        _check_cuda(claim)
    _current = claim
    return claim


def _claim(requested: str, timeout: float) -> DeviceClaim:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if requested == "cpu":
        return DeviceClaim(requested, "cpu", None, "cpu", visible)
    if os.environ.get("SLURM_JOB_ID"):
        if visible is None:
            visible = next((os.environ[name] for name in SLURM_GPU_VARIABLES if os.environ.get(name)), "none")
        return _given_by_scheduler(requested, "slurm", visible)
    if visible is not None and "DIFFUSER_GPUS" not in os.environ:
        return _given_by_scheduler(requested, "CUDA_VISIBLE_DEVICES", visible)
    ids = pool_ids()
    if requested.startswith("cuda:"):
        index = int(requested.split(":", 1)[1])
        if ids and index >= len(ids):
            raise GpuPoolError(
                f"device {requested!r} but the pool has {len(ids)} GPU(s) ({','.join(ids)}); use cuda:0 to "
                f"cuda:{len(ids) - 1} or device: auto."
            )
        gpu = ids[index] if ids else str(index)
        # locked when free so pooled jobs avoid it; used even when another job holds it (asked for)
        return _use(gpu, requested, "explicit", _try_lock(_open_lock_dir(), gpu))
    if not ids:
        if requested == "cuda":
            raise GpuPoolError(
                "device 'cuda' asks for a GPU but none is listed (DIFFUSER_GPUS is empty and nvidia-smi "
                "finds none); set DIFFUSER_GPUS or use device: auto."
            )
        return DeviceClaim(requested, "cpu", None, "no-gpu", visible)
    gpu, fd, waited = _claim_from_pool(ids, timeout)
    return _use(gpu, requested, "pool", fd, waited)


def _given_by_scheduler(requested: str, source: str, visible: str) -> DeviceClaim:
    """The scheduler already chose this job's GPUs (`visible`): the first one, or the asked index."""
    has_gpu = visible.strip().lower() not in NO_GPU_WORDS and _cuda_available()
    if not has_gpu and requested.startswith("cuda"):
        raise GpuPoolError(
            f"device {requested!r} asks for a GPU but this job was given none ({source}); request one from "
            "the scheduler or use device: auto."
        )
    device = (requested if requested.startswith("cuda:") else "cuda:0") if has_gpu else "cpu"
    return DeviceClaim(requested, device, None, source, os.environ.get("CUDA_VISIBLE_DEVICES"))


def machine_gpu_ids() -> list[str]:
    """The GPUs this machine can compute on: nvidia-smi's list when torch has CUDA, else none."""
    import torch

    if torch.version.cuda is None or not torch.cuda.is_available():
        return []
    return _nvidia_smi_ids() or [str(i) for i in range(torch.cuda.device_count())]


def _torch_without_cuda() -> str:
    import torch

    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU build"
    return f"torch {torch.__version__} finds no usable GPU (torch.cuda.is_available() is False)"


def check_gpu_request(ids: list[str]) -> None:
    """Raise GpuRequestError (one line) when the GPU ids asked for (`-g 0,1`) do not all exist here."""
    if not ids:
        return
    available = machine_gpu_ids()
    asked = ",".join(ids)
    if not available:
        raise GpuRequestError(
            f"-g {asked} asks for GPU {asked} but {_torch_without_cuda()}; run with -g -1 for the CPU, "
            "or install a CUDA build of torch (README, GPUs)."
        )
    missing = [gpu for gpu in ids if gpu not in available]
    if missing:
        raise GpuRequestError(
            f"-g {asked} asks for GPU {','.join(missing)} but this machine has {len(available)} GPU(s) "
            f"({','.join(available)}); pick from those, or run with -g -1 for the CPU."
        )


def unmet_gpu_resources_note(requested) -> str | None:
    """A one-line note when `--resources gpu=G` asks for GPUs the pool does not have (jobs then use the CPU)."""
    count = getattr(requested, "value", requested)
    if not count or pool_ids() or os.environ.get("SLURM_JOB_ID"):
        return None
    return (
        f"--resources gpu={count}: this machine lists no GPU (DIFFUSER_GPUS / nvidia-smi), so every job "
        "runs on the CPU."
    )
