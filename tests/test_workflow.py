"""The Snakemake workflow: which jobs a spec plans, what a change re-runs, and how a killed sweep resumes.

Most tests run the real Snakefile in a copy of the checkout whose `python -m diffuser` is a
stand-in (STAND_IN_CLI): each step writes the files the CLI contract names, training writes
checkpoints and resumes from them. That pins the workflow's wiring independent of the models.
`test_real_pipeline_*` run the real CLI on a tiny spec once every registered class exists.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from diffuser.config import load_spec, vae_key
from diffuser.registry import unavailable_names

ROOT = Path(__file__).resolve().parent.parent
CHECKOUT_PARTS = ("Snakefile", "workflow", "config", "exp_specs", "diffuser", "scripts", "dvc.yaml", ".dvc", ".dvcignore",
                  "run_experiment.py", "train.py")
# what a checkout's own runs leave (DVC's cache and state, bytecode): not copied
NOT_COPIED = shutil.ignore_patterns("__pycache__", "tmp", "cache", "config.local")
NOTHING_TO_DO = "Nothing to be done"

STAND_IN_CLI = '''"""Stand-in for `python -m diffuser` in workflow tests: each step writes what the CLI contract names."""

import argparse
import json
import os
import time
from pathlib import Path

import yaml

STEP_SECONDS = float(os.environ.get("STAND_IN_STEP_SECONDS", "0"))


def prepare(args):
    from diffuser.datasets.prepare import dataset_key

    key = dataset_key(args.dataset, int(args.steps), float(args.action_noise), int(args.seed))
    out = Path(args.data_dir) / "processed" / key
    out.mkdir(parents=True, exist_ok=True)
    (out / "episodes.npz").write_bytes(b"stand-in")
    (out / "metadata.json").write_text(json.dumps({"name": args.dataset, "steps": args.steps}))


def pretrain(args):
    config = yaml.safe_load(Path(args.cell_config).read_text())
    Path(args.out).write_text(json.dumps({"vae_latent_dim": config["vae_latent_dim"], "seed": config["seed"]}))


def train(args):
    config = yaml.safe_load(Path(args.cell_config).read_text())
    run = Path(args.run_dir)
    latest = run / "checkpoints" / "latest.txt"
    latest.parent.mkdir(parents=True, exist_ok=True)
    step = int(latest.read_text()) if config["continue_training"] and latest.exists() else 0
    resumed_from = step
    metrics = run / "metrics.csv"
    rows = metrics.read_text().splitlines()[1:] if metrics.exists() else []
    metrics.write_text("step,metric,value\\n" + "".join(r + "\\n" for r in rows if int(r.split(",")[0]) <= step))
    (run / "run.json").write_text(json.dumps({"status": "running"}))
    with open(metrics, "a") as f:
        while step < config["n_train_steps"]:
            time.sleep(STEP_SECONDS)
            step += 1
            f.write(f"{step},loss,{1.0 / step}\\n")
            f.flush()
            if step % config["save_freq"] == 0:
                latest.write_text(str(step))
    (run / "final.pt").write_text(json.dumps({"step": step}))
    info = {"status": "finished", "resumed_from": resumed_from, "threads": args.threads, "vae": args.vae}
    (run / "run.json").write_text(json.dumps(info))


def evaluate(args):
    step = json.loads((Path(args.run_dir) / "final.pt").read_text())["step"]
    result = {"step": step, "mean_return": 1.0, "mean_normalized_score": 50.0, "threads": args.threads}
    Path(args.out).write_text(json.dumps(result))


def aggregate(args):
    # as the real step: only the spec's cells, whatever other folders cells/ holds
    from diffuser.config import load_spec

    exp = Path(args.exp_dir)
    cells = sorted(cell.name for cell in load_spec(args.spec).cells())
    scores = [json.loads((exp / "cells" / c / "eval.json").read_text())["mean_normalized_score"] for c in cells]
    rows = "".join(f"{c},1,{s},{s - 1},{s + 1}\\n" for c, s in zip(cells, scores))
    (exp / "summary.csv").write_text("variant,n_seeds,mean,ci95_low,ci95_high\\n" + rows)
    (exp / "summary.json").write_text(json.dumps({"cells": len(cells)}))
    (exp / "summary.html").write_text("<html></html>")
    (exp / "figures").mkdir(exist_ok=True)
    (exp / "figures" / "final_scores.png").write_bytes(b"stand-in")


def main(argv=None):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    options = {
        prepare: ["--dataset", "--steps", "--action-noise", "--seed", "--data-dir"],
        pretrain: ["--cell-config", "--out", "--data-dir", "--threads"],
        train: ["--cell-config", "--run-dir", "--vae", "--data-dir", "--threads"],
        evaluate: ["--run-dir", "--checkpoint", "--num-eval", "--out", "--threads"],
        aggregate: ["--exp-dir", "--spec"],
    }
    for step, names in options.items():
        p = sub.add_parser(step.__name__)
        for name in names:
            p.add_argument(name)
        p.set_defaults(func=step)
    args = parser.parse_args(argv)
    args.func(args)
    return 0
'''

# A sweep small enough for the stand-in: 2 cells sharing one VAE.
TINY_SPEC = {
    "meta_data": {"exp_name": "tiny", "gpus_per_job": 0},
    "constants": {"n_train_steps": 30, "save_freq": 10, "rl_warmup_steps": 5, "seed": 1},
    "variables": {"online_training": [False, True]},
}


def real_pipeline_ready() -> bool:
    return not unavailable_names()


requires_real_pipeline = pytest.mark.skipif(
    not real_pipeline_ready(), reason=f"the training library is incomplete: {', '.join(unavailable_names())}"
)


def make_checkout(directory: Path, spec: dict | None = None, stand_in: bool = True) -> Path:
    """A copy of the workflow and package in `directory`; `spec` replaces config/config.yaml."""
    directory.mkdir(parents=True, exist_ok=True)
    for part in CHECKOUT_PARTS:
        source = ROOT / part
        if source.is_dir():
            shutil.copytree(source, directory / part, symlinks=True, ignore=NOT_COPIED)
        elif source.exists():
            shutil.copy2(source, directory / part)
    if spec is not None:
        (directory / "config" / "config.yaml").write_text(yaml.safe_dump(spec))
    if stand_in:
        (directory / "diffuser" / "cli.py").write_text(STAND_IN_CLI)
    return directory


def checkout_env(checkout: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CUDA_VISIBLE_DEVICES")}
    env.update(PYTHONPATH=str(checkout), DIFFUSER_GPUS="none", PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
    env.update(extra)
    return env


def snakemake(checkout: Path, *args: str, timeout: float = 240, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--nocolor", *args],
        cwd=checkout, env=checkout_env(checkout, **env), capture_output=True, text=True, timeout=timeout,
    )


def run_sweep(checkout: Path, *args: str, timeout: float = 240, **env) -> subprocess.CompletedProcess:
    """The command a user runs: the default profile (rerun-incomplete, keep-going), 2 cores."""
    run = snakemake(checkout, "--cores", "2", "--workflow-profile", "workflow/profiles/default", *args,
                    timeout=timeout, **env)
    assert run.returncode == 0, run.stdout + run.stderr
    return run


def plan(checkout: Path, *args: str, **env) -> tuple[dict[str, int], str]:
    """({rule: number of jobs}, the dry run's output) of `snakemake -n` ({} when nothing is to be done)."""
    run = snakemake(checkout, "-n", *args, **env)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    if NOTHING_TO_DO in out:
        return {}, out
    table = out.split("Job stats:", 1)[1]
    jobs = re.findall(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)
    return {rule: int(count) for rule, count in jobs if rule != "total"}, out


def planned_jobs(checkout: Path, *args: str) -> dict[str, int]:
    return plan(checkout, *args)[0]


def copy_checkout(source: Path, destination: Path) -> Path:
    """A finished checkout with its results and Snakemake records (modification times kept)."""
    shutil.copytree(source, destination, symlinks=True)
    return destination


def expected_jobs(spec) -> dict[str, int]:
    """The jobs a fresh run of `spec` needs, counted from the spec itself."""
    cells = spec.cells()
    vaes = {vae_key(c.config) for c in cells if c.config["vae_pretrain_steps"] > 0}
    jobs = {
        "prepare_dataset": len({c.config["dataset"] for c in cells}),
        "settings_marker": len(cells) + 1,
        "cell_config": len(cells), "train": len(cells), "evaluate": len(cells),
        "vae_config": len(vaes), "pretrain_vae": len(vaes),
        "resolved_spec": 1, "aggregate": 1, "all": 1,
    }
    return {rule: count for rule, count in jobs.items() if count}


# ------------------------------------------------------------------------------ planning


def test_default_config_plans_one_job_per_dataset_vae_and_cell(tmp_path):
    checkout = make_checkout(tmp_path)
    jobs = planned_jobs(checkout)
    spec = load_spec(ROOT / "config" / "config.yaml")
    assert jobs == expected_jobs(spec)
    assert jobs["train"] == 6 and jobs["pretrain_vae"] == 3  # 2 modes x 3 seeds; the VAE depends on the seed only


def test_example_config_plans_two_cells_sharing_one_vae_each_on_a_gpu(tmp_path):
    checkout = make_checkout(tmp_path)
    spec_arg = "spec=exp_specs/vae_diffusion_rl_hopper_d4rl.yaml"
    missing = snakemake(checkout, "-n", "--config", spec_arg)
    assert missing.returncode != 0
    assert "data/raw/d4rl/hopper-medium-v2.hdf5" in missing.stdout + missing.stderr
    raw = checkout / "data" / "raw" / "d4rl" / "hopper-medium-v2.hdf5"
    raw.parent.mkdir(parents=True)
    raw.write_bytes(b"")
    jobs, out = plan(checkout, "--config", spec_arg, DIFFUSER_GPUS="0,1")
    assert jobs == expected_jobs(load_spec(ROOT / "exp_specs" / "vae_diffusion_rl_hopper_d4rl.yaml"))
    assert jobs["train"] == 2 and jobs["pretrain_vae"] == 1
    train_jobs = [line for line in out.splitlines() if ": train cell " in line]
    assert len(train_jobs) == 2 and all("gpu=1" in line for line in train_jobs)
    # on a machine without GPUs the same jobs ask for none
    _, out = plan(checkout, "--config", spec_arg, DIFFUSER_GPUS="none")
    train_jobs = [line for line in out.splitlines() if ": train cell " in line]
    assert len(train_jobs) == 2 and all("gpu=0" in line for line in train_jobs)


def test_command_line_overrides_change_the_grid(tmp_path):
    checkout = make_checkout(tmp_path)
    pinned = planned_jobs(checkout, "--config", "seed=7")
    assert pinned["train"] == 2 and pinned["pretrain_vae"] == 1
    swept, out = plan(checkout, "--config", "variables={seed: [1, 2, 3]}", "exp_name=three_seeds")
    assert swept["train"] == 6 and swept["pretrain_vae"] == 3
    assert "results/three_seeds/cells/online_training~True/seed~3/final.pt" in out


def test_sweeping_how_a_generated_dataset_is_made_gives_one_dataset_job_per_setting(tmp_path):
    checkout = make_checkout(tmp_path)
    jobs, out = plan(checkout, "--config", "variables={dataset_action_noise: [0.5, 1.0]}")
    assert jobs["prepare_dataset"] == 2
    assert "data/processed/gen-maze2d-umaze-100000steps-noise1.0-seed0/episodes.npz" in out


def test_a_dataset_typo_stops_before_any_job_with_the_librarys_message(tmp_path):
    checkout = make_checkout(tmp_path)
    for name, expected in (("gen-maze2d-umaz", "gen-maze2d-{umaze,medium,large}"),
                           ("../../../tmp/evil", "not a dataset name")):
        run = snakemake(checkout, "-n", "--config", f"dataset={name}")
        out = run.stdout + run.stderr
        assert run.returncode != 0 and expected in out and "MissingInputException" not in out
    assert not (checkout / "data").exists()


def test_invalid_spec_stops_before_any_job_with_one_clear_message(tmp_path):
    checkout = make_checkout(tmp_path)
    run = snakemake(checkout, "--cores", "1", "--config", "learning_rat=0.1", "variables={seed: []}")
    out = run.stdout + run.stderr
    assert run.returncode != 0
    assert "did you mean 'learning_rate'" in out and "variables.seed: the list is empty" in out
    assert not (checkout / "results").exists() and not (checkout / "data").exists()


# The findings docs/lint.md (merged into the README) explains; every other one must be fixed.
LINT_EXPLAINED = {
    "Specify a conda environment or container for each rule.",
    "Shell command directly uses variable PYTHON from outside of the rule",
}


def test_lint_finds_only_the_documented_exceptions(tmp_path):
    run = snakemake(make_checkout(tmp_path, stand_in=False), "--lint")
    out = run.stdout + run.stderr
    assert "Lints for rule" in out or "Congratulations" in out, out  # the linter ran
    findings = set(re.findall(r"^\s+\* (.+?):?$", out, re.MULTILINE))
    assert findings <= LINT_EXPLAINED, findings - LINT_EXPLAINED
    docs = "".join(path.read_text() for path in (ROOT / "README.md", ROOT / "docs" / "lint.md") if path.exists())
    assert all(finding in docs for finding in findings), "explain every remaining lint finding in the README"


# ------------------------------------------------------------------------------ running (stand-in CLI)


def cell_dir(checkout: Path, cell: str) -> Path:
    return checkout / "results" / "tiny" / "cells" / cell


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory) -> Path:
    """TINY_SPEC run to the end with the stand-in CLI (copy it before changing anything)."""
    checkout = make_checkout(tmp_path_factory.mktemp("finished"), TINY_SPEC)
    run_sweep(checkout)
    return checkout


def test_finished_sweep_has_every_file_and_nothing_left_to_do(finished_sweep):
    for cell in ("online_training~False", "online_training~True"):
        info = json.loads((cell_dir(finished_sweep, cell) / "run.json").read_text())
        assert info["status"] == "finished" and info["vae"].endswith("/vae.pt") and info["threads"] == "1"
        assert json.loads((cell_dir(finished_sweep, cell) / "eval.json").read_text())["threads"] == "1"
        written = yaml.safe_load((cell_dir(finished_sweep, cell) / "config.yaml").read_text())
        assert written["online_training"] is (cell == "online_training~True")
    assert (finished_sweep / "results" / "tiny" / "summary.csv").read_text().count("online_training") == 2
    assert planned_jobs(finished_sweep) == {}


def test_changed_setting_reruns_only_what_it_affects(finished_sweep, tmp_path):
    checkout = copy_checkout(finished_sweep, tmp_path / "checkout")
    # not a VAE setting: both cells retrain, the VAE and the dataset stay
    jobs = planned_jobs(checkout, "--config", "n_train_steps=40")
    assert jobs["train"] == 2 and "pretrain_vae" not in jobs and "prepare_dataset" not in jobs
    # a VAE setting: one new VAE (shared), both cells retrain
    jobs = planned_jobs(checkout, "--config", "constants={vae_kl_weight: 0.2}")
    assert jobs["pretrain_vae"] == 1 and jobs["train"] == 2
    # dropping a cell: nothing retrains, the summary is redone from the remaining cell only
    jobs = planned_jobs(checkout, "--config", "variables={online_training: [false]}")
    assert "train" not in jobs and jobs["aggregate"] == 1
    run_sweep(checkout, "--config", "variables={online_training: [false]}")
    summary = (checkout / "results" / "tiny" / "summary.csv").read_text()
    assert "online_training~False" in summary and "online_training~True" not in summary
    assert (cell_dir(checkout, "online_training~True") / "final.pt").exists()  # kept, just not summarized


def default_ctrl_c() -> None:
    """preexec_fn for a sweep a test interrupts: a shell's background job (`cmd &`, as some CI runners
    start the tests) has SIGINT ignored, and children inherit that; restore a terminal's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


# ------------------------------------------------------------------------------ the real CLI


REAL_TINY_SPEC = {
    "meta_data": {"exp_name": "tiny", "gpus_per_job": 0},
    "constants": {
        "dataset": "gen-maze2d-umaze", "dataset_steps": 3000, "seed": 0,
        "n_train_steps": 40, "save_freq": 10, "log_freq": 10, "eval_freq": 1000, "num_eval": 2,
        "batch_size": 16, "hidden_dim": 32, "vae_latent_dim": 4, "trajectory_latent_dim": 16,
        "history_horizon": 2, "vae_pretrain_steps": 20, "n_diffusion_steps": 10, "n_sampling_steps": 3,
        "n_action_samples": 2, "rl_warmup_steps": 10, "rl_collect_freq": 10, "rl_collect_steps": 20,
        "rl_update_freq": 10,
    },
    "variables": {"online_training": [False, True]},
}


@pytest.mark.slow
@requires_real_pipeline
def test_real_pipeline_runs_the_tiny_sweep_and_resumes_an_interrupted_cell(tmp_path):
    checkout = make_checkout(tmp_path, REAL_TINY_SPEC, stand_in=False)
    run_dir = cell_dir(checkout, "online_training~False")
    sweep = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--nocolor", "--cores", "1", "--workflow-profile", "workflow/profiles/default"],
        cwd=checkout, env=checkout_env(checkout), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, preexec_fn=default_ctrl_c,
    )
    try:
        wait_for(lambda: any((run_dir / "checkpoints").glob("state_*.pt")) or (run_dir / "final.pt").exists(),
                 600, "a training checkpoint")
        os.killpg(sweep.pid, signal.SIGINT)
        sweep.wait(timeout=120)
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    run_sweep(checkout, timeout=900)
    for cell in ("online_training~False", "online_training~True"):
        evaluation = json.loads((cell_dir(checkout, cell) / "eval.json").read_text())
        assert evaluation["step"] == 40 and evaluation["num_episodes"] == 2
        metrics = (cell_dir(checkout, cell) / "metrics.csv").read_text().splitlines()
        logged_steps = sorted({int(row.split(",")[0]) for row in metrics[1:]})
        assert logged_steps[0] == 10 and logged_steps[-1] == 40
    assert (checkout / "results" / "tiny" / "summary.csv").exists()
    assert planned_jobs(checkout) == {}
