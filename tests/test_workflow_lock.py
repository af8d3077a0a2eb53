"""Snakemake's lock after a kill: removed when no live Snakemake works in the directory, kept (and the
holder named) when one does."""

import subprocess
import sys
import time

import pytest

from diffuser.errors import WorkflowLocked
from diffuser.runtime.workflow_lock import LOCK_DIR, clear_stale_locks, live_snakemake_processes


def lock(directory, *paths):
    lock_dir = directory / LOCK_DIR
    lock_dir.mkdir(parents=True, exist_ok=True)
    (lock_dir / "0.output.lock").write_text("".join(f"{p}\n" for p in paths))


@pytest.fixture()
def live_snakemake(tmp_path):
    """A process whose command line runs a program called snakemake, working in tmp_path/work."""
    program = tmp_path / "bin" / "snakemake"
    program.parent.mkdir()
    program.write_text("import time\ntime.sleep(60)\n")
    work = tmp_path / "work"
    work.mkdir()
    process = subprocess.Popen([sys.executable, str(program), "--cores", "1"], cwd=work)
    deadline = time.monotonic() + 30
    while not live_snakemake_processes(work) and time.monotonic() < deadline:
        time.sleep(0.05)
    yield work, process
    process.kill()
    process.wait()


def test_no_lock_no_note(tmp_path):
    assert clear_stale_locks(tmp_path, ("results/x/",)) is None


def test_a_lock_nobody_holds_is_removed(tmp_path):
    lock(tmp_path, "results/x/cells/a/final.pt")
    note = clear_stale_locks(tmp_path, ("results/x/",))
    assert note and "stale" in note
    assert not (tmp_path / LOCK_DIR).exists()


def test_a_live_snakemake_on_this_experiment_is_named_and_its_lock_kept(live_snakemake):
    work, process = live_snakemake
    assert [holder.pid for holder in live_snakemake_processes(work)] == [process.pid]
    lock(work, "results/x/cells/a/final.pt")
    with pytest.raises(WorkflowLocked, match=rf"another Snakemake \(pid {process.pid}: .*kill {process.pid}"):
        clear_stale_locks(work, ("results/x/",))
    assert (work / LOCK_DIR / "0.output.lock").exists()


def test_a_live_snakemake_on_another_experiment_is_left_to_snakemake(live_snakemake):
    work, _ = live_snakemake
    lock(work, "results/other/cells/a/final.pt")
    assert clear_stale_locks(work, ("results/x/",)) is None
    assert (work / LOCK_DIR / "0.output.lock").exists()


def test_a_snakemake_elsewhere_does_not_count(live_snakemake, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    lock(elsewhere, "results/x/cells/a/final.pt")
    assert clear_stale_locks(elsewhere, ("results/x/",)) is not None
