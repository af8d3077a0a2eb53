"""DVC over the Snakemake workflow: `dvc repro` runs the phases once, `dvc push`/`dvc pull` share results.

Runs in a temporary git repository holding a copy of the checkout (with its .dvc/, as a fresh clone
has it) and the stand-in CLI of test_workflow.py. DVC is called as a newcomer does after `make demo`:
`.venv/bin/dvc`, the environment not activated. The steps are those of docs/dvc.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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


VENV = Path(sys.executable).parent.parent  # the environment running the tests, as the checkout's .venv
NOT_ACTIVATED_PATH = "/usr/local/bin:/usr/bin:/bin"


def command(directory: Path, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    """`args` in `directory` with the environment not activated (PATH without it); dvc is .venv/bin/dvc."""
    env = checkout_env(directory, DVC_NO_ANALYTICS="1", PATH=NOT_ACTIVATED_PATH, **GIT_IDENTITY)
    if args[0] == "dvc":
        args = (str(directory / ".venv" / "bin" / "dvc"), *args[1:])
    run = subprocess.run(args, cwd=directory, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert run.returncode == 0, f"{' '.join(args)}:\n{run.stdout}\n{run.stderr}"
    return run


def make_repository(directory: Path, spec: dict, stand_in: bool = True) -> Path:
    """A git repository as a fresh clone has it (.dvc/ included), a local remote, `spec` as config/config.yaml."""
    checkout = make_checkout(directory / "project", spec, stand_in=stand_in)
    shutil.copy2(ROOT / ".gitignore", checkout / ".gitignore")
    (checkout / ".venv").symlink_to(VENV)
    command(checkout, "git", "init", "-q")
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


def test_a_fresh_clone_is_a_dvc_repository_that_plans_every_phase(tmp_path):
    assert (ROOT / ".dvc" / "config").is_file()
    assert "analytics = false" in (ROOT / ".dvc" / "config").read_text()
    repository = make_repository(tmp_path, ONE_CELL_SPEC)
    dry = command(repository, "dvc", "repro", "--dry")
    assert all(f"Running stage '{stage}'" in dry.stdout for stage in STAGES), dry.stdout
    assert "changed" in command(repository, "dvc", "status").stdout
    assert not (repository / "results").exists()


def test_the_stages_say_how_to_install_when_no_snakemake_is_found(tmp_path):
    repository = make_repository(tmp_path, ONE_CELL_SPEC)
    (repository / ".venv").unlink()
    env = {"PATH": NOT_ACTIVATED_PATH, "HOME": str(tmp_path)}
    run = subprocess.run(["scripts/snakemake", "-n"], cwd=repository, env=env, capture_output=True, text=True)
    if run.returncode == 0:
        pytest.skip("the system python3 has snakemake installed")
    assert run.returncode == 2 and "make venv" in run.stderr


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
    assert (reproduced / "data" / "processed" / "gen-maze2d-umaze-100000steps-noise0.5-seed0" / "episodes.npz").exists()
    assert planned_jobs(reproduced) == {}  # dvc repro and snakemake agree on what is done


def test_second_repro_does_nothing(reproduced):
    before = files_under(reproduced / "results")
    run = command(reproduced, "dvc", "repro")
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in run.stdout
    assert files_under(reproduced / "results") == before


def test_a_variant_runs_as_a_dvc_experiment(reproduced, tmp_path):
    clone = tmp_path / "exp"
    shutil.copytree(reproduced, clone, symlinks=True)
    run = command(clone, "dvc", "exp", "run", "-S", "config/config.yaml:constants.n_train_steps=40", "-n", "longer",
                  timeout=600)
    assert "longer" in run.stdout + run.stderr
    shown = command(clone, "dvc", "exp", "show", "--csv").stdout
    assert "longer" in shown and "40" in shown
    assert '"step": 40' in (clone / "results" / "tiny" / "cells" / "default" / "eval.json").read_text()


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
