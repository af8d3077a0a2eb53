"""The seed's front ends: `run_experiment.py -e SPEC -g GPU` (a whole sweep) and `train.py -e CELL.yaml`.

run_experiment.py runs the Snakemake workflow, so it inherits its resume behaviour; these tests run
it in a checkout copy with the stand-in CLI of test_workflow.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_workflow import (
    TINY_SPEC,
    cell_dir,
    checkout_env,
    default_ctrl_c,
    make_checkout,
    planned_jobs,
    requires_real_pipeline,
    snakemake,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run_experiment = load_script("run_experiment")


def front_end(checkout: Path, script: str, *args: str, timeout: float = 240, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, script, *args], cwd=checkout, env=checkout_env(checkout, **env),
        capture_output=True, text=True, timeout=timeout,
    )


def checkpoint_step(run_dir: Path) -> int:
    latest = run_dir / "checkpoints" / "latest.txt"
    return int(latest.read_text()) if latest.exists() else 0


# ------------------------------------------------------------------------------ run_experiment.py


@pytest.mark.parametrize(
    ("gpu", "ids", "visible"),
    [("-1", [], "none"), ("0", ["0"], "0"), ("0,2", ["0", "2"], "0,2"), (None, None, None)],
)
def test_gpu_option_sets_the_pool(gpu, ids, visible):
    assert run_experiment.gpu_ids(gpu) == ids
    environment = run_experiment.job_environment(ids)
    assert environment.get("DIFFUSER_GPUS") == (visible if visible is not None else os.environ.get("DIFFUSER_GPUS"))


def test_key_value_overrides_are_read_as_yaml_and_a_malformed_one_is_named():
    from diffuser.launch import parse_key_values

    assert parse_key_values(["n_train_steps=300", "online_training=true", "seed=[1, 2]", "name=a=b"]) == {
        "n_train_steps": 300, "online_training": True, "seed": [1, 2], "name": "a=b"}
    with pytest.raises(SystemExit, match=r"--set 'hidden_dim': expected KEY=VALUE"):
        parse_key_values(["hidden_dim"], "--set")


def test_the_snakemake_command_merges_config_overrides_with_the_spec():
    from diffuser.launch import snakemake_command, split_config_overrides

    config, rest = split_config_overrides(["--config", "n_train_steps=300", "seed=3", "--forceall", "-C", "x=1"])
    assert config == ["n_train_steps=300", "seed=3", "x=1"] and rest == ["--forceall"]
    command = snakemake_command(cores=8, jobs=3, gpus=2, spec="/x/spec.yaml", config=config, extra=rest)
    assert command.count("--config") == 1
    entries = command[command.index("--config") + 1: command.index("--resources")]
    assert entries == ["spec=/x/spec.yaml", "n_train_steps=300", "seed=3", "x=1"]
    assert command[command.index("--jobs") + 1] == "3" and command[command.index("--resources") + 1] == "gpu=2"
    assert command[-1] == "--forceall"


def test_run_experiment_applies_config_overrides_to_the_spec_it_was_given(tmp_path):
    checkout = make_checkout(tmp_path / "checkout")
    spec = write_spec(tmp_path, {**TINY_SPEC, "meta_data": {**TINY_SPEC["meta_data"], "exp_name": "given"}})
    run = front_end(checkout, "run_experiment.py", "-e", str(spec), "-g", "-1", "-n", "--",
                    "--config", "n_train_steps=300", "variables={seed: [1, 2, 3]}")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "experiment given: 6 cells" in run.stdout  # the spec's experiment, with the overrides
    assert "train cell online_training~True/seed~3" in run.stdout + run.stderr
    assert "maze2d-umaze-demo" not in run.stdout + run.stderr


@pytest.mark.parametrize("gpu", ["gpu0", "", "0,x"])
def test_bad_gpu_option_is_refused(gpu):
    with pytest.raises(SystemExit, match="-g"):
        run_experiment.gpu_ids(gpu)


def write_spec(directory: Path, spec: dict, name: str = "spec.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(spec))
    return path


def test_run_experiment_dry_run_plans_the_sweep_and_says_where_results_go(tmp_path):
    checkout = make_checkout(tmp_path / "checkout")
    spec = write_spec(tmp_path, {**TINY_SPEC, "variables": {"online_training": [False, True], "seed": [1, 2, 3]}})
    run = front_end(checkout, "run_experiment.py", "-e", str(spec), "-g", "-1", "-n")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "experiment tiny: 6 cells on CPU, 1 job(s) at a time" in run.stdout
    assert f"results: {checkout.resolve()}/results/tiny/" in run.stdout
    assert run.stdout.count(": train cell ") == 6
    assert not (checkout / "results").exists()


def test_run_experiment_refuses_a_bad_spec_in_one_line(tmp_path):
    checkout = make_checkout(tmp_path / "checkout")
    spec = write_spec(tmp_path, {"meta_data": {"exp_name": "x"}, "constants": {"vae_latnt_dim": 8}})
    run = front_end(checkout, "run_experiment.py", "-e", str(spec), "-g", "-1")
    assert run.returncode == 2
    assert run.stderr.startswith("error: ") and "did you mean 'vae_latent_dim'" in run.stderr
    assert "Traceback" not in run.stderr and "snakemake" not in run.stdout


def test_the_guides_command_on_a_machine_without_a_usable_gpu_says_so_before_any_job(tmp_path):
    checkout = make_checkout(tmp_path / "checkout")
    for gpu in ("0", "5"):
        run = front_end(checkout, "run_experiment.py", "-e", "exp_specs/vae_diffusion_rl_example.yaml", "-g", gpu)
        assert run.returncode == 2, run.stdout + run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and f"-g {gpu}" in lines[0] and "-g -1" in lines[0]
        assert "Traceback" not in run.stderr and not (checkout / "results").exists()


def test_gpu_request_check_names_what_was_asked_and_what_exists(monkeypatch):
    from diffuser.errors import GpuRequestError
    from diffuser.runtime import gpu_pool

    monkeypatch.setattr(gpu_pool, "machine_gpu_ids", lambda: ["0", "1"])
    gpu_pool.check_gpu_request(["1"])
    with pytest.raises(GpuRequestError, match=r"-g 0,5 asks for GPU 5 but this machine has 2 GPU\(s\) \(0,1\).*-g -1"):
        gpu_pool.check_gpu_request(["0", "5"])
    monkeypatch.setattr(gpu_pool, "machine_gpu_ids", lambda: [])
    with pytest.raises(GpuRequestError, match="-g -1"):
        gpu_pool.check_gpu_request(["0"])


def test_gpu_resources_without_gpus_get_one_line_and_the_cpu(tmp_path):
    checkout = make_checkout(tmp_path / "checkout", TINY_SPEC)
    run = snakemake(checkout, "-n", "--resources", "gpu=2")
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "--resources gpu=2: this machine lists no GPU" in out and "runs on the CPU" in out
    assert "gpu=1" not in out.replace("gpu=2", "")


def test_run_experiment_resumes_an_interrupted_sweep(tmp_path):
    checkout = make_checkout(tmp_path / "checkout")
    # 100 steps: after the checkpoint at step 10 the Ctrl-C has 1.8 s to land, even on a busy machine
    spec = write_spec(tmp_path, {**TINY_SPEC, "constants": {**TINY_SPEC["constants"], "n_train_steps": 100}})
    first, second = cell_dir(checkout, "online_training~False"), cell_dir(checkout, "online_training~True")
    command = [sys.executable, "run_experiment.py", "-e", str(spec), "-g", "-1", "--cores", "1"]
    # one job at a time (num_workers 1), 20 ms per step: the second cell is training when the first is done
    sweep = subprocess.Popen(command, cwd=checkout, env=checkout_env(checkout, STAND_IN_STEP_SECONDS="0.02"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                             preexec_fn=default_ctrl_c)
    try:
        wait_for(lambda: (first / "final.pt").exists() or (second / "final.pt").exists(), 120, "a finished cell")
        finished, killed = (first, second) if (first / "final.pt").exists() else (second, first)
        wait_for(lambda: checkpoint_step(killed) >= 10, 60, "a checkpoint of the second cell")
        os.killpg(sweep.pid, signal.SIGINT)  # Ctrl-C
        sweep.wait(timeout=60)
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    assert not (killed / "final.pt").exists()
    finished_mtime = (finished / "final.pt").stat().st_mtime_ns
    step_at_kill = checkpoint_step(killed)

    rerun = front_end(checkout, "run_experiment.py", "-e", str(spec), "-g", "-1")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert (finished / "final.pt").stat().st_mtime_ns == finished_mtime  # not redone
    info = json.loads((killed / "run.json").read_text())
    assert info["status"] == "finished" and info["resumed_from"] == step_at_kill >= 10
    steps = [int(row.split(",")[0]) for row in (killed / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, 101))  # the rows before the interruption were kept
    assert planned_jobs(checkout, "--config", f"spec={spec}") == {}


def test_sweep_killed_outright_resumes_with_the_same_command(tmp_path):
    # SIGKILL (power loss, OOM killer) leaves Snakemake's lock and the job marked incomplete
    checkout = make_checkout(tmp_path / "checkout")
    spec = write_spec(tmp_path, {**TINY_SPEC, "variables": {}})
    run_dir = cell_dir(checkout, "default")
    sweep = subprocess.Popen(
        [sys.executable, "run_experiment.py", "-e", str(spec), "-g", "-1"], cwd=checkout,
        env=checkout_env(checkout, STAND_IN_STEP_SECONDS="0.02"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    wait_for(lambda: checkpoint_step(run_dir) >= 10, 120, "a checkpoint")
    os.killpg(sweep.pid, signal.SIGKILL)
    sweep.wait(timeout=60)
    assert any((checkout / ".snakemake" / "locks").iterdir()), "the kill left Snakemake's lock"
    rerun = front_end(checkout, "run_experiment.py", "-e", str(spec), "-g", "-1")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "removed the stale Snakemake lock" in rerun.stderr
    assert json.loads((run_dir / "run.json").read_text())["resumed_from"] >= 10


def test_a_live_sweep_of_the_same_experiment_is_named_not_unlocked(tmp_path):
    checkout = make_checkout(tmp_path / "checkout")
    spec = write_spec(tmp_path, {**TINY_SPEC, "variables": {}, "constants": {**TINY_SPEC["constants"], "n_train_steps": 3000}})
    run_dir = cell_dir(checkout, "default")
    sweep = subprocess.Popen(
        [sys.executable, "run_experiment.py", "-e", str(spec), "-g", "-1"], cwd=checkout,
        env=checkout_env(checkout, STAND_IN_STEP_SECONDS="0.02"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        wait_for(lambda: checkpoint_step(run_dir) >= 10, 120, "a checkpoint")
        second = front_end(checkout, "run_experiment.py", "-e", str(spec), "-g", "-1")
        assert second.returncode != 0
        assert "another Snakemake (pid " in second.stdout + second.stderr
        assert sweep.poll() is None and any((checkout / ".snakemake" / "locks").iterdir())
    finally:
        os.killpg(sweep.pid, signal.SIGKILL)
        sweep.wait(timeout=60)


# ------------------------------------------------------------------------------ train.py


def test_train_py_refuses_a_spec_and_a_typo_in_one_line(tmp_path):
    spec = write_spec(tmp_path, TINY_SPEC)
    run = front_end(ROOT, "train.py", "-e", str(spec), "-g", "-1")
    assert run.returncode == 2 and "not one cell's config" in run.stderr and "Traceback" not in run.stderr
    cell = write_spec(tmp_path, {"n_train_step": 10}, "cell.yaml")
    run = front_end(ROOT, "train.py", "-e", str(cell), "-g", "-1")
    assert run.returncode == 2 and "did you mean 'n_train_steps'" in run.stderr


@pytest.mark.slow
@requires_real_pipeline
def test_train_py_trains_one_cell_from_its_config(tmp_path):
    from test_workflow import REAL_TINY_SPEC

    cell = write_spec(tmp_path, {**REAL_TINY_SPEC["constants"], "online_training": False}, "cell.yaml")
    run_dir = tmp_path / "run"
    run = front_end(ROOT, "train.py", "-e", str(cell), "-g", "-1", "--run-dir", str(run_dir),
                    "--data-dir", str(tmp_path / "data"), timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert (run_dir / "final.pt").exists() and (run_dir / "vae" / "vae.pt").exists()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["n_train_steps"] == 40
    assert f"results: {run_dir}/" in run.stdout


# ------------------------------------------------------------------------------ make demo


def test_demo_runs_the_pipeline_and_the_report_then_says_where_everything_is(tmp_path):
    # `make demo` runs `python -m diffuser demo`, which is diffuser.demo (the checkout's cli.py is the stand-in)
    checkout = make_checkout(tmp_path / "checkout", TINY_SPEC)
    results = checkout / "results" / "tiny"
    first = front_end(checkout, "-m", "diffuser.demo", "--cores", "2")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "snakemake --cores 2" in first.stdout
    assert (results / "report.html").stat().st_size > 0 and (results / "summary.csv").exists()
    for line in ("summary: results/tiny/summary.csv", "figures: results/tiny/figures/",
                 "page:    results/tiny/summary.html", "report:  results/tiny/report.html"):
        assert line in first.stdout
    report = (results / "report.html").read_text(errors="replace")
    assert "final_scores.png" in report and "spec.yaml" in report and "summary.csv" in report
    table = first.stdout.split("Final normalized score", 1)[1]
    assert "online_training~False" in table and "50.0   [49.0, 51.0]" in table

    trained = (cell_dir(checkout, "online_training~False") / "final.pt").stat().st_mtime_ns
    second = front_end(checkout, "-m", "diffuser.demo", "--cores", "2")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Nothing to be done" in second.stdout + second.stderr
    assert (cell_dir(checkout, "online_training~False") / "final.pt").stat().st_mtime_ns == trained
    assert "report:  results/tiny/report.html" in second.stdout and "online_training~True" in second.stdout

    # `make report`: the summary, figures and report again from the finished cells, nothing retrained
    (results / "summary.csv").unlink()
    (results / "report.html").unlink()
    (results / "summary.html").unlink()
    again = front_end(checkout, "-c", "import sys; from diffuser.demo import regenerate_report; sys.exit(regenerate_report())")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "online_training=True" in (results / "summary.csv").read_text()  # the real aggregate, from the cells
    assert "page:    results/tiny/summary.html" in again.stdout
    page = (results / "summary.html").read_text()  # the real page: the table and every figure in it
    assert '<div id="score-table">' in page and "online_training=True" in page
    assert page.count("data:image/png;base64,") == len(list((results / "figures").glob("*.png"))) > 0
    assert (results / "report.html").stat().st_size > 0
    assert (cell_dir(checkout, "online_training~False") / "final.pt").stat().st_mtime_ns == trained


def test_demo_gives_each_job_its_own_gpu_when_the_pool_has_some():
    from diffuser.demo import snakemake_commands

    exp_dir = ROOT / "results" / "maze2d-umaze-demo"
    run, report = snakemake_commands(exp_dir, cores=8, gpus=2)
    assert run[run.index("--cores") + 1] == "8" and run[run.index("--resources") + 1] == "gpu=2"
    assert report[-2:] == ["--report", "results/maze2d-umaze-demo/report.html"]
    assert "--resources" not in snakemake_commands(exp_dir, cores=2, gpus=0)[0]


def test_every_step_that_runs_torch_takes_threads():
    from diffuser.cli import build_parser

    for step in (["pretrain", "--cell-config", "c", "--out", "o"], ["train", "--cell-config", "c", "--run-dir", "r"],
                 ["evaluate", "--run-dir", "r"]):
        assert build_parser().parse_args([*step, "--threads", "3"]).threads == 3
