"""Starting the project's Snakemake workflow from Python (run_experiment.py, `make demo`).

One place builds the command line (the checkout's Snakefile and default profile, run by this
interpreter so an unactivated virtual environment works) and runs it:

- Snakemake stays in this process's process group, so a signal to the whole group (Ctrl-C in a
  terminal, `kill -9 -PGID`) reaches Snakemake and its jobs exactly as if it had been started
  directly. On SIGINT, SIGTERM or SIGHUP this process does not die first (that would leave
  Snakemake's lock behind and print a traceback): it waits for Snakemake to stop, passing on a
  SIGTERM sent to it alone, and returns Snakemake's status.
- A lock left by a run that was killed outright is removed by the workflow itself on the next run
  (diffuser/runtime/workflow_lock.py), so the same command always continues where it stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROFILE = "workflow/profiles/default"
_CONFIG_OPTIONS = ("--config", "-C")


def parse_key_values(items: Sequence[str], option: str = "--config") -> dict:
    """KEY=VALUE items as a mapping, values read as YAML as Snakemake reads `--config` (`300` an int,
    `true` a bool, `[1, 2]` a list); the cell schema validates and coerces them afterwards."""
    import yaml

    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"error: {option} {item!r}: expected KEY=VALUE, e.g. {option} n_train_steps=300.")
        pairs[key.strip()] = yaml.safe_load(value) if value else value
    return pairs


def split_config_overrides(extra: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the KEY=VALUE items of every --config/-C in `extra`, the other options): Snakemake keeps
    only the last --config, so these are merged into the one the launcher passes."""
    overrides, rest = [], []
    items = list(extra)
    i = 0
    while i < len(items):
        item = items[i]
        if item in _CONFIG_OPTIONS:
            i += 1
            while i < len(items) and not items[i].startswith("-"):
                overrides.append(items[i])
                i += 1
            continue
        if item.startswith("--config="):
            overrides.append(item.split("=", 1)[1])
        else:
            rest.append(item)
        i += 1
    return overrides, rest


def snakemake_command(
    *,
    cores: int,
    jobs: int | None = None,
    gpus: int = 0,
    spec: str | os.PathLike | None = None,
    config: Sequence[str] = (),
    dry_run: bool = False,
    extra: Sequence[str] = (),
    root: Path = ROOT,
) -> list[str]:
    """The Snakemake command for this checkout; `config`: KEY=VALUE overrides (with `spec`, one --config)."""
    command = [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(root / "Snakefile"),
        "--directory", str(root),
        "--workflow-profile", str(root / PROFILE),
        "--cores", str(cores),
    ]
    if jobs:
        command += ["--jobs", str(jobs)]
    entries = ([f"spec={spec}"] if spec is not None else []) + list(config)
    if entries:
        command += ["--config", *entries]
    if gpus:
        command += ["--resources", f"gpu={gpus}"]
    if dry_run:
        command.append("--dry-run")
    return command + list(extra)


def run_snakemake(command: Sequence[str], cwd: Path = ROOT, env: dict | None = None) -> int:
    """Run `command` to its end (see the module doc for signals); its exit status, 130 if interrupted."""
    process = subprocess.Popen(list(command), cwd=cwd, env=env)
    received: list[int] = []

    def note(signum, frame):  # a Python handler, so the child does not inherit an ignored signal
        received.append(signum)
        if signum == signal.SIGTERM and process.poll() is None:
            process.send_signal(signal.SIGTERM)

    watched = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, note) for signum in watched}
    try:
        code = process.wait()  # retried after each handled signal (PEP 475)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        names = ", ".join(sorted({signal.Signals(s).name for s in received}))
        print(f"interrupted ({names}): Snakemake stopped; run the same command again to continue where it stopped.",
              file=sys.stderr)
        return code if code not in (0, None) else 130
    return code
