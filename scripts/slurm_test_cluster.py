#!/usr/bin/env python3
"""A one-node SLURM test cluster on this machine (loopback only), for trying the slurm profile.

    python scripts/slurm_test_cluster.py start    # prints `export SLURM_CONF=...` on stdout
    python scripts/slurm_test_cluster.py status
    python scripts/slurm_test_cluster.py stop

`eval "$(python scripts/slurm_test_cluster.py start)"` points sbatch, squeue and snakemake at it.
Needs root (munged runs as the munge user, slurmd as root). Installs Debian's slurm-wlm and munge
with apt when they are missing. Everything lives in one state directory: the config, the daemons'
own munge socket, pid files, logs and spool; the machine's /run/munge is not used. The one file
outside it is a symlink /etc/slurm/slurm.conf to the config, made only where no such file exists:
snakemake's jobstep plugin (0.6) removes SLURM_CONF from the environment of the `srun` it runs
inside each job, so that srun only finds the default path. `stop` ends exactly the daemons whose
pid files are in the state directory, removes the symlink and the directory. Both commands are
safe to run twice.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_STATE_DIR = Path(
    os.environ.get("DIFFUSER_SLURM_STATE_DIR", Path(tempfile.gettempdir()) / "diffuser-slurm-test")
)
PARTITION = "debug"
CLUSTER_NAME = "diffusertest"
NODE_NAME = "localhost"
APT_PACKAGES = ["slurm-wlm", "munge"]
MUNGE_KEY = Path("/etc/munge/munge.key")
DEFAULT_CONF = Path("/etc/slurm/slurm.conf")
# finished jobs must stay visible to squeue: without accounting it is the only status source
MIN_JOB_AGE_SECONDS = 300
# without a default, a job that asks no memory is given the whole node and jobs run one at a time
DEF_MEM_PER_CPU_MB = 1000
STOP_TIMEOUT_SECONDS = 15.0
# sinfo node states of a node that is up (with no, some or all of its CPUs in use)
NODE_UP_STATES = ("idle", "mixed", "allocated")


class ClusterError(RuntimeError):
    """A problem the user can fix; the message says what and how."""


@dataclass(frozen=True)
class Layout:
    """Where the cluster keeps its files, all under one state directory."""

    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def munge_dir(self) -> Path:
        return self.root / "munge"

    @property
    def munge_socket(self) -> Path:
        return self.munge_dir / "munge.socket"

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    def pid_file(self, daemon: str) -> Path:
        return self.munge_dir / "munged.pid" if daemon == "munged" else self.root / f"{daemon}.pid"

    def log_file(self, daemon: str) -> Path:
        return self.munge_dir / "munged.log" if daemon == "munged" else self.log_dir / f"{daemon}.log"


# started in this order, stopped in the reverse order
DAEMONS = ("munged", "slurmctld", "slurmd")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def slurm_env(layout: Layout) -> dict:
    return {**os.environ, "SLURM_CONF": str(layout.conf)}


def run(command: list[str], layout: Layout | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = slurm_env(layout) if layout else None
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise ClusterError(
            f"`{' '.join(command)}` failed with exit code {result.returncode}: "
            f"{(result.stderr or result.stdout).strip()}"
        )
    return result


def ensure_installed() -> None:
    """Install slurm-wlm and munge with apt when their daemons are missing."""
    if all(shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin") for name in DAEMONS):
        return
    if shutil.which("apt-get") is None:
        raise ClusterError(
            "slurmctld, slurmd or munged is missing and apt-get is not available: install SLURM and munge "
            "with this system's package manager."
        )
    log(f"installing {' '.join(APT_PACKAGES)} with apt-get")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *APT_PACKAGES]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(install, capture_output=True, env=env).returncode != 0:
        # a fresh image has no package lists yet
        run(["apt-get", "update", "-q"])
        result = subprocess.run(install, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise ClusterError(f"apt-get could not install {' '.join(APT_PACKAGES)}: {result.stderr.strip()}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def node_hardware() -> str:
    """This machine's CPU layout and memory as `slurmd -C` reports them, e.g. `CPUs=2 ... RealMemory=24105`."""
    output = run(["slurmd", "-C"]).stdout
    first_line = output.splitlines()[0]
    fields = [field for field in first_line.split() if not field.startswith("NodeName=")]
    if not any(field.startswith("CPUs=") for field in fields):
        raise ClusterError(
            f"`slurmd -C` printed no CPUs= field: {first_line!r}; is slurmd installed correctly?"
        )
    return " ".join(fields)


def slurm_conf(layout: Layout, hardware: str, controller_port: int, node_port: int) -> str:
    root = layout.root
    return "\n".join(
        [
            f"ClusterName={CLUSTER_NAME}",
            "SlurmctldHost=localhost(127.0.0.1)",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={layout.munge_socket}",
            "MpiDefault=none",
            f"SlurmctldPort={controller_port}",
            f"SlurmdPort={node_port}",
            f"StateSaveLocation={root}/state",
            f"SlurmdSpoolDir={root}/spool",
            f"SlurmctldPidFile={layout.pid_file('slurmctld')}",
            f"SlurmdPidFile={layout.pid_file('slurmd')}",
            f"SlurmctldLogFile={layout.log_file('slurmctld')}",
            f"SlurmdLogFile={layout.log_file('slurmd')}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "ReturnToService=2",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            f"DefMemPerCPU={DEF_MEM_PER_CPU_MB}",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            f"MinJobAge={MIN_JOB_AGE_SECONDS}",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=60",
            "InactiveLimit=0",
            "KillWait=5",
            "Waittime=0",
            f"NodeName={NODE_NAME} NodeHostname={NODE_NAME} NodeAddr=127.0.0.1 {hardware} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes={NODE_NAME} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
    )


def read_pid(layout: Layout, daemon: str) -> int | None:
    try:
        return int(layout.pid_file(daemon).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def is_alive(pid: int) -> bool:
    """True while the process runs; a zombie (exited, not yet reaped by init) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def is_ours(pid: int, daemon: str, layout: Layout) -> bool:
    """The pid still names this cluster's daemon (pids get reused once a process is gone)."""
    try:
        command_line = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return Path(command_line[0]).name == daemon and str(layout.root) in " ".join(command_line)


def running_daemons(layout: Layout) -> dict[str, int]:
    """The daemons of this cluster that are running now, by name, with their pids."""
    pids = {daemon: read_pid(layout, daemon) for daemon in DAEMONS}
    return {
        daemon: pid
        for daemon, pid in pids.items()
        if pid is not None and is_alive(pid) and is_ours(pid, daemon, layout)
    }


def wait_for(condition, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log written)"


def is_stale_test_cluster_link(link: Path) -> bool:
    """A link left by a test cluster that was killed before `stop`: its target is gone, or it is a
    test cluster's config (ClusterName=diffusertest) none of whose daemons runs any more."""
    target = Path(os.readlink(link))
    if not target.exists():
        return True
    if target.name != "slurm.conf" or f"ClusterName={CLUSTER_NAME}" not in target.read_text(errors="replace"):
        return False
    return not running_daemons(Layout(root=target.parent))


def link_default_conf(layout: Layout) -> None:
    """Make the config visible at SLURM's default path, where the srun inside each job looks."""
    if DEFAULT_CONF.is_symlink() and is_stale_test_cluster_link(DEFAULT_CONF):
        log(f"removing {DEFAULT_CONF}: it was left by a test cluster that is no longer running")
        DEFAULT_CONF.unlink()
    if DEFAULT_CONF.is_symlink() and DEFAULT_CONF.resolve() == layout.conf:
        return
    if DEFAULT_CONF.exists() or DEFAULT_CONF.is_symlink():
        raise ClusterError(
            f"{DEFAULT_CONF} already exists, so this machine has its own SLURM (or another test cluster "
            "runs): use that cluster, or stop the other test cluster first."
        )
    DEFAULT_CONF.parent.mkdir(parents=True, exist_ok=True)
    DEFAULT_CONF.symlink_to(layout.conf)


def unlink_default_conf(layout: Layout) -> None:
    if DEFAULT_CONF.is_symlink() and Path(os.readlink(DEFAULT_CONF)) == layout.conf:
        DEFAULT_CONF.unlink()


def start_daemon(layout: Layout, daemon: str, command: list[str], timeout: float) -> None:
    """Run a daemon that forks into the background and wait until its pid file names a live process."""
    result = subprocess.run(command, capture_output=True, text=True, env=slurm_env(layout))

    def started() -> bool:
        pid = read_pid(layout, daemon)
        return pid is not None and is_alive(pid)

    if result.returncode != 0 or not wait_for(started, timeout):
        raise ClusterError(
            f"{daemon} did not start (exit code {result.returncode}); its log {layout.log_file(daemon)} ends with:\n"
            f"{log_tail(layout.log_file(daemon))}\n{result.stderr.strip()}"
        )


def node_state(layout: Layout) -> str:
    result = run(["sinfo", "--noheader", "--nodes", NODE_NAME, "--format", "%T"], layout, check=False)
    return result.stdout.strip() if result.returncode == 0 else ""


def start(layout: Layout, timeout: float) -> None:
    if os.geteuid() != 0:
        raise ClusterError(
            "the SLURM test cluster needs root (munged runs as the munge user): run it as root."
        )
    running = running_daemons(layout)
    if set(running) == set(DAEMONS) and node_state(layout) in NODE_UP_STATES:
        log(f"SLURM test cluster already running (state {layout.root})")
        return
    if running or layout.root.exists():
        log(f"cleaning up a partly started cluster in {layout.root}")
        stop(layout)
    ensure_installed()
    if not MUNGE_KEY.exists():
        raise ClusterError(
            f"{MUNGE_KEY} is missing: reinstall munge (`apt-get install --reinstall munge`) to create it."
        )
    try:
        launch(layout, timeout)
    except ClusterError:
        stop(layout)
        raise
    log(
        f"SLURM test cluster running: partition {PARTITION}, node {NODE_NAME} ({node_hardware()}), state {layout.root}"
    )


def check_reachable_by_munge(layout: Layout) -> None:
    for directory in layout.root.parents:
        if directory.exists() and not directory.stat().st_mode & stat.S_IXOTH:
            raise ClusterError(
                f"munged runs as the munge user and cannot enter {directory} (mode "
                f"{stat.filemode(directory.stat().st_mode)}): choose a --state-dir under a directory others can "
                "enter, such as /tmp."
            )


def launch(layout: Layout, timeout: float) -> None:
    """Write the state directory and start munged, slurmctld and slurmd; wait until the node is idle."""
    munge = pwd.getpwnam("munge")
    check_reachable_by_munge(layout)
    for directory in ("state", "spool", "log"):
        (layout.root / directory).mkdir(parents=True, exist_ok=True)
    layout.root.chmod(0o755)
    layout.munge_dir.mkdir(exist_ok=True)
    # munged refuses a socket directory that others cannot traverse or that they can write
    layout.munge_dir.chmod(0o711)
    os.chown(layout.munge_dir, munge.pw_uid, munge.pw_gid)
    layout.conf.write_text(slurm_conf(layout, node_hardware(), free_port(), free_port()))
    link_default_conf(layout)

    start_daemon(
        layout,
        "munged",
        [
            "runuser",
            "-u",
            "munge",
            "--",
            "/usr/sbin/munged",
            f"--socket={layout.munge_socket}",
            f"--pid-file={layout.pid_file('munged')}",
            f"--log-file={layout.log_file('munged')}",
            f"--seed-file={layout.munge_dir / 'munged.seed'}",
        ],
        timeout,
    )
    start_daemon(layout, "slurmctld", ["slurmctld", "-f", str(layout.conf)], timeout)
    start_daemon(layout, "slurmd", ["slurmd", "-f", str(layout.conf), "-N", NODE_NAME], timeout)

    if not wait_for(lambda: node_state(layout) == "idle", timeout, interval=0.25):
        raise ClusterError(
            f"the node did not become idle within {timeout:.0f} s (state: {node_state(layout) or 'unreachable'}); "
            f"slurmd log ends with:\n{log_tail(layout.log_file('slurmd'))}\n"
            f"slurmctld log ends with:\n{log_tail(layout.log_file('slurmctld'))}"
        )


def cancel_jobs(layout: Layout) -> None:
    """Cancel this cluster's jobs and wait until none runs, so no job step outlives the daemons."""
    run(["scancel", "--user", pwd.getpwuid(os.geteuid()).pw_name], layout, check=False)

    def no_job_left() -> bool:
        result = run(["squeue", "--noheader", "--format", "%i"], layout, check=False)
        return result.returncode != 0 or not result.stdout.strip()

    wait_for(no_job_left, STOP_TIMEOUT_SECONDS, interval=0.25)


def terminate(pid: int) -> None:
    os.kill(pid, signal.SIGTERM)
    if not wait_for(lambda: not is_alive(pid), STOP_TIMEOUT_SECONDS):
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not is_alive(pid), STOP_TIMEOUT_SECONDS)


def stop(layout: Layout) -> None:
    running = running_daemons(layout)
    if "slurmctld" in running and "slurmd" in running:
        cancel_jobs(layout)
    for daemon in reversed(DAEMONS):
        if daemon in running:
            terminate(running[daemon])
    left = running_daemons(layout)
    if left:
        raise ClusterError(
            f"could not stop {', '.join(f'{d} (pid {p})' for d, p in left.items())}; kill them by hand."
        )
    unlink_default_conf(layout)
    if layout.root.exists():
        shutil.rmtree(layout.root)
    if running:
        log(f"SLURM test cluster stopped ({', '.join(f'{d} {p}' for d, p in running.items())})")


def status(layout: Layout) -> bool:
    """Print each daemon's state; True when the whole cluster runs and the node is idle or busy."""
    running = running_daemons(layout)
    for daemon in DAEMONS:
        print(f"{daemon}: {'running, pid ' + str(running[daemon]) if daemon in running else 'stopped'}")
    if set(running) != set(DAEMONS):
        return False
    state = node_state(layout)
    print(f"node {NODE_NAME}: {state or 'unreachable'}")
    print(f"export SLURM_CONF={layout.conf}")
    return state in NODE_UP_STATES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["start", "stop", "status"])
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help="directory for the config, pid files and logs (default: $DIFFUSER_SLURM_STATE_DIR or %(default)s)",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the node to come up")
    args = parser.parse_args(argv)
    layout = Layout(args.state_dir.resolve())
    try:
        if args.command == "start":
            start(layout, args.timeout)
            print(f"export SLURM_CONF={layout.conf}")
        elif args.command == "stop":
            stop(layout)
        else:
            return 0 if status(layout) else 1
    except ClusterError as error:
        log(f"error: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
