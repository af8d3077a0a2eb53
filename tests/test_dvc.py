"""DVC over the Snakemake workflow: `dvc repro` runs the phases once, `dvc push`/`dvc pull` share results.

Runs in a temporary git repository holding a copy of the checkout with the stand-in CLI of
test_workflow.py (DVC needs a git repository with a commit). The steps are those of docs/dvc.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from test_workflow import (
    REAL_TINY_SPEC,
    TINY_SPEC,
    checkout_env,
    make_checkout,
    planned_jobs,
    requires_real_pipeline,
    snakemake,
)

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("data", "train", "report")
ONE_CELL_SPEC = {**TINY_SPEC, "variables": {}}
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com",
}


def command(directory: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = checkout_env(directory, DVC_NO_ANALYTICS="1", **GIT_IDENTITY)
    run = subprocess.run(args, cwd=directory, env=env, capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, f"{' '.join(args)}:\n{run.stdout}\n{run.stderr}"
    return run


def make_repository(directory: Path, spec: dict, stand_in: bool = True) -> Path:
    """A git repository with DVC and a local remote, holding the workflow and `spec` as config/config.yaml."""
    checkout = make_checkout(directory / "project", spec, stand_in=stand_in)
    shutil.copy2(ROOT / ".gitignore", checkout / ".gitignore")
    command(checkout, "git", "init", "-q")
    command(checkout, "dvc", "init", "-q")
    command(checkout, "dvc", "remote", "add", "-d", "shared", str(directory / "remote"))
    command(checkout, "git", "add", "-A")
    command(checkout, "git", "commit", "-qm", "project")
    return checkout


def files_under(directory: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != ".snakemake_timestamp"
    }


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory) -> Path:
    """ONE_CELL_SPEC reproduced once with `dvc repro`, dvc.lock committed."""
    repository = make_repository(tmp_path_factory.mktemp("dvc"), ONE_CELL_SPEC)
    command(repository, "dvc", "repro")
    command(repository, "git", "add", "dvc.lock")
    command(repository, "git", "commit", "-qm", "results")
    return repository


def test_repro_runs_every_phase_and_leaves_nothing_for_snakemake(reproduced):
    results = reproduced / "results" / "tiny"
    for path in ("summary.csv", "summary.json", "spec.yaml", "figures/final_scores.png",
                 "cells/default/eval.json", "cells/default/final.pt", "cells/default/metrics.csv"):
        assert (results / path).exists(), path
    assert any((results / "vae").glob("*/vae.pt"))
    assert (reproduced / "data" / "processed" / "gen-maze2d-umaze" / "episodes.npz").exists()
    assert planned_jobs(reproduced) == {}  # dvc repro and snakemake agree on what is done


def test_second_repro_does_nothing(reproduced):
    before = files_under(reproduced / "results")
    run = command(reproduced, "dvc", "repro")
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in run.stdout
    assert files_under(reproduced / "results") == before


def test_metrics_and_plots_are_registered(reproduced):
    metrics = command(reproduced, "dvc", "metrics", "show").stdout
    assert "results/tiny/summary.json" in metrics
    plots = command(reproduced, "dvc", "plots", "show", "--json").stdout
    assert "final_scores.png" in plots and "error" not in plots.lower()


def test_push_then_pull_in_a_clone_restores_the_results(reproduced, tmp_path):
    command(reproduced, "dvc", "push")
    clone = tmp_path / "clone"
    command(tmp_path, "git", "clone", "-q", str(reproduced), str(clone))
    assert not (clone / "results").exists()
    command(clone, "dvc", "pull")
    assert files_under(clone / "results") == files_under(reproduced / "results")
    assert files_under(clone / "data" / "processed") == files_under(reproduced / "data" / "processed")
    # DVC writes files in no particular order; --touch puts their times back in pipeline order
    assert snakemake(clone, "--touch", "--cores", "1").returncode == 0
    assert planned_jobs(clone) == {}
    assert "up to date" in command(clone, "dvc", "status").stdout

    # the clone has no .snakemake/ records, yet a changed setting retrains the cell (settings markers)
    config = clone / "config" / "config.yaml"
    changed = {**ONE_CELL_SPEC, "constants": {**ONE_CELL_SPEC["constants"], "learning_rate": 0.0005}}
    config.write_text(yaml.safe_dump(changed))
    jobs = planned_jobs(clone)
    assert jobs["cell_config"] == 1 and jobs["train"] == 1 and jobs["aggregate"] == 1
    # once the new settings' markers exist, going back to the old settings retrains again
    assert snakemake(clone, "--cores", "1", "--until", "settings_marker").returncode == 0
    config.write_text(yaml.safe_dump(ONE_CELL_SPEC))
    shutil.rmtree(clone / ".snakemake")
    assert planned_jobs(clone)["train"] == 1


@pytest.mark.slow
@requires_real_pipeline
def test_real_pipeline_repro_twice(tmp_path):
    repository = make_repository(tmp_path, REAL_TINY_SPEC, stand_in=False)
    command(repository, "dvc", "repro", timeout=900)
    assert (repository / "results" / "tiny" / "summary.csv").exists()
    again = command(repository, "dvc", "repro")
    assert all(f"Stage '{stage}' didn't change, skipping" in again.stdout for stage in STAGES)
    assert planned_jobs(repository) == {}
    assert os.path.getsize(repository / "results" / "tiny" / "summary.json") > 2
