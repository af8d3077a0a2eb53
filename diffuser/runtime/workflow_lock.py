"""Snakemake's directory lock after a kill: removed when no live Snakemake holds it.

Snakemake writes `.snakemake/locks/*.lock` (the files a run reads and writes) when it starts and
deletes them when it ends. A run that is killed (SIGKILL of its process group, the OOM killer, a
lost node) cannot delete them, and the next run in the directory then stops with `LockException`
until someone types `snakemake --unlock`. The workflow calls `clear_stale_locks` while it parses
the Snakefile (before Snakemake takes its own lock), so the same command simply runs again:

- no lock files: nothing to do;
- lock files and no live Snakemake process working in the directory: they are stale, removed;
- lock files and a live Snakemake in the directory that holds this experiment's files: stop with
  one line naming it (`WorkflowLocked`); one that holds only other files (another experiment) is
  left alone and Snakemake's own check decides.

A process counts as Snakemake when its command line runs the `snakemake` program or module; its
working directory is the directory it works in (Snakemake changes into `--directory`).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import psutil

from diffuser.errors import WorkflowLocked

LOCK_DIR = Path(".snakemake") / "locks"


@dataclass(frozen=True)
class LockHolder:
    pid: int
    command: str


def _is_snakemake(cmdline: list[str]) -> bool:
    names = [os.path.basename(part) for part in cmdline[:3]]
    if "snakemake" in names:
        return True
    return any(a == "-m" and b == "snakemake" for a, b in zip(cmdline, cmdline[1:], strict=False))


def _same_directory(a: str | None, b: Path) -> bool:
    try:
        return a is not None and os.path.samefile(a, b)
    except OSError:
        return False


def live_snakemake_processes(directory: str | os.PathLike) -> list[LockHolder]:
    """Snakemake processes other than this one and its ancestors whose working directory is `directory`."""
    directory = Path(directory)
    me = psutil.Process()
    own = {me.pid, *(parent.pid for parent in me.parents())}
    found = []
    for process in psutil.process_iter(["pid", "cmdline", "cwd"]):
        info = process.info
        if info["pid"] in own or not info["cmdline"] or not _is_snakemake(info["cmdline"]):
            continue
        # another user's process (cwd unreadable) cannot be working in our directory's files
        if _same_directory(info["cwd"], directory):
            found.append(LockHolder(info["pid"], " ".join(info["cmdline"])))
    return found


def locked_paths(directory: str | os.PathLike) -> list[str]:
    """The paths Snakemake's lock files in `directory` name ([] when there are none)."""
    lock_dir = Path(directory) / LOCK_DIR
    if not lock_dir.is_dir():
        return []
    paths = []
    for lock_file in sorted(lock_dir.glob("*.lock")):
        try:
            paths += [line.strip() for line in lock_file.read_text().splitlines() if line.strip()]
        except OSError:
            continue
    return paths


def clear_stale_locks(directory: str | os.PathLike, own_prefixes: tuple[str, ...]) -> str | None:
    """Remove the locks of a killed run in `directory`; returns a one-line note when it removed some.

    `own_prefixes`: the paths (relative to `directory`) this run writes, e.g. ("results/exp/",);
    a live Snakemake holding a lock on any path under them raises `WorkflowLocked`.
    """
    directory = Path(directory)
    lock_dir = directory / LOCK_DIR
    if not lock_dir.is_dir() or not any(lock_dir.iterdir()):
        return None
    holders = live_snakemake_processes(directory)
    if holders:
        held = locked_paths(directory)
        if any(path.startswith(own_prefixes) for path in held):
            holder = holders[0]
            raise WorkflowLocked(
                f"another Snakemake (pid {holder.pid}: {holder.command}) is running this experiment in "
                f"{directory}; wait for it to finish or stop it (kill {holder.pid}), then run the same command again."
            )
        return None
    shutil.rmtree(lock_dir, ignore_errors=True)
    return f"removed the stale Snakemake lock in {directory} (no Snakemake is running there: a killed run left it)"
