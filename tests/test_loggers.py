"""Loggers: TensorBoard, DVCLive and wandb hold exactly the rows of metrics.csv, also after a kill and resume."""

import csv
import importlib.util
import json
import re
import signal
import subprocess
import time

import pandas as pd
import pytest
from conftest import PYTHON, ROOT, python_env
from test_training import write_cell

from diffuser.config import ConfigError, load_cell_config, load_spec
from diffuser.training.checkpoints import latest_checkpoint
from diffuser.training.loggers import DVCLIVE_DIRNAME, TENSORBOARD_DIRNAME, WANDB_DIRNAME


def train_cmd(cell, run_dir, data_dir):
    return [PYTHON, "-m", "diffuser", "train", "--cell-config", str(cell), "--run-dir", str(run_dir),
            "--data-dir", str(data_dir)]


def logged_steps(run_dir) -> int:
    """The last step in metrics.csv while a run appends to it (a half-written last line is skipped)."""
    path = run_dir / "metrics.csv"
    lines = path.read_text().splitlines()[1:] if path.exists() else []
    steps = [int(line.split(",")[0]) for line in lines if line.count(",") == 2 and line.split(",")[0].isdigit()]
    return max(steps, default=0)


def csv_series(run_dir) -> dict[str, list[tuple[int, float]]]:
    """{metric: [(step, value), ...]} of metrics.csv, in file order."""
    table = pd.read_csv(run_dir / "metrics.csv")
    return {name: list(zip(group["step"].astype(int), group["value"].astype(float), strict=True))
            for name, group in table.groupby("metric", sort=True)}


def tensorboard_series(log_dir) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} as TensorBoard reads the event files (purged events dropped)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in sorted(accumulator.Tags()["scalars"])}


def dvclive_series(log_dir) -> dict[str, list[tuple[int, float]]]:
    series = {}
    for table in sorted((log_dir / "plots" / "metrics").glob("*.tsv")):
        with open(table, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        series[table.stem] = [(int(r["step"]), float(r[table.stem])) for r in rows]
    return series


def assert_same_series(mirror: dict, truth: dict, what: str) -> None:
    assert sorted(mirror) == sorted(truth), f"{what}: other metric names than metrics.csv"
    for name, rows in truth.items():
        steps = [step for step, _ in mirror[name]]
        assert steps == [step for step, _ in rows], f"{what}: steps of {name} differ from metrics.csv"
        for (_, got), (_, expected) in zip(mirror[name], rows, strict=True):
            assert got == pytest.approx(expected, rel=1e-6, abs=1e-12), f"{what}: a value of {name} differs"


def test_mirrors_drop_the_steps_a_resumed_run_repeats(tmp_path, tiny_maze_data):
    """The files a run killed after logging step 60 but before saving it leaves behind, made without a
    kill: a finished run with its step-60 checkpoint and final.pt removed. Resuming from step 30 logs
    40, 50 and 60 again; each logger must hold them once. (The real SIGKILL: the slow test below.)"""
    from diffuser import steps

    config = load_cell_config(write_cell(tmp_path / "cell.yaml", n_train_steps=60, save_freq=30,
                                         loggers=["csv", "tensorboard", "dvclive"]))
    run_dir = tmp_path / "run"
    steps.train(config, run_dir, tiny_maze_data)
    latest_checkpoint(run_dir / "checkpoints").unlink()
    (run_dir / "final.pt").unlink()
    assert latest_checkpoint(run_dir / "checkpoints").stem.endswith("30")
    assert [step for step, _ in tensorboard_series(run_dir / TENSORBOARD_DIRNAME)["loss"]] == [10, 20, 30, 40, 50, 60]

    steps.train(config, run_dir, tiny_maze_data)
    truth = csv_series(run_dir)
    assert [step for step, _ in truth["loss"]] == [10, 20, 30, 40, 50, 60], "metrics.csv: each step once"
    assert_same_series(tensorboard_series(run_dir / TENSORBOARD_DIRNAME), truth, "TensorBoard")
    assert_same_series(dvclive_series(run_dir / DVCLIVE_DIRNAME), truth, "DVCLive")


@pytest.mark.slow  # ~35 s: two training processes, one killed with SIGKILL after its checkpoint
def test_mirrors_equal_the_csv_after_a_kill_and_resume(tmp_path, tiny_maze_data):
    # one checkpoint (step 200), then a kill 20 to 180 steps later: wide enough for a busy machine
    cell = write_cell(tmp_path / "cell.yaml", n_train_steps=400, save_freq=200, loggers=["csv", "tensorboard", "dvclive"])
    run_dir = tmp_path / "run"
    env = python_env()
    proc = subprocess.Popen(train_cmd(cell, run_dir, tiny_maze_data), env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if latest_checkpoint(run_dir / "checkpoints") is not None and logged_steps(run_dir) >= 220:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = int(latest_checkpoint(run_dir / "checkpoints").stem.split("_")[1])
    assert not (run_dir / "final.pt").exists(), "the run must be killed mid-training"
    killed = tensorboard_series(run_dir / TENSORBOARD_DIRNAME)
    assert max(step for step, _ in killed["loss"]) > saved, "the killed run must have logged past its checkpoint"

    subprocess.run(train_cmd(cell, run_dir, tiny_maze_data), check=True, env=env, cwd=ROOT, capture_output=True)
    truth = csv_series(run_dir)
    assert [step for step, _ in truth["loss"]] == list(range(10, 401, 10)), "metrics.csv: each step once"
    assert {"loss", "diffusion_loss", "vae_loss", "learning_rate"} <= set(truth)
    assert_same_series(tensorboard_series(run_dir / TENSORBOARD_DIRNAME), truth, "TensorBoard")
    assert_same_series(dvclive_series(run_dir / DVCLIVE_DIRNAME), truth, "DVCLive")
    summary = json.loads((run_dir / DVCLIVE_DIRNAME / "metrics.json").read_text())
    assert summary["step"] == 400 and summary["loss"] == pytest.approx(truth["loss"][-1][1])


def test_a_fresh_run_replaces_the_mirrors_of_an_older_one(tmp_path, tiny_maze_data):
    from diffuser import steps

    run_dir = tmp_path / "run"
    for n_steps in (40, 20):  # the second run starts over (continue_training false)
        config = load_cell_config(write_cell(tmp_path / "cell.yaml", n_train_steps=n_steps, save_freq=100,
                                             continue_training=False, loggers=["tensorboard"]))
        steps.train(config, run_dir, tiny_maze_data)
    truth = csv_series(run_dir)
    assert [step for step, _ in truth["loss"]] == [10, 20]
    assert_same_series(tensorboard_series(run_dir / TENSORBOARD_DIRNAME), truth, "TensorBoard")


WANDB_BLOCK = 32768  # a .wandb file is a LevelDB-style log: 32 KiB blocks of (crc, length, type, data) chunks
WANDB_HEADER = 7  # b":W&B", magic 0xBEE1, version


def wandb_records(run_file) -> list[bytes]:
    """The serialized records of an offline run file (wandb >= 0.20 ships no Python reader)."""
    data = run_file.read_bytes()
    assert data[:4] == b":W&B", "not a wandb run file"
    records, pending, pos = [], b"", WANDB_HEADER
    while pos + 7 <= len(data):
        left = WANDB_BLOCK - pos % WANDB_BLOCK
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            records.append(pending)
            pending = b""
    return records


def wandb_history(run_file) -> list[dict]:
    """The history rows ({metric: value, '_step': step}) of an offline wandb run file."""
    from wandb.proto import wandb_internal_pb2

    rows = []
    for data in wandb_records(run_file):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
    return rows


def test_wandb_logs_offline_the_csv_rows(tmp_path, tiny_maze_data, monkeypatch):
    pytest.importorskip("wandb")
    from diffuser import steps

    for name in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    run_dir = tmp_path / "run"
    config = load_cell_config(write_cell(tmp_path / "cell.yaml", n_train_steps=40, save_freq=100, loggers=["csv", "wandb"]))
    steps.train(config, run_dir, tiny_maze_data)
    run_files = list((run_dir / WANDB_DIRNAME).glob("offline-run-*/run-*.wandb"))
    assert len(run_files) == 1, "one offline run, nothing sent"
    history = wandb_history(run_files[0])
    truth = csv_series(run_dir)
    logged = {}
    for row in history:
        for name, value in row.items():
            if not name.startswith("_"):
                logged.setdefault(name, []).append((row["_step"], value))
    assert_same_series(logged, truth, "wandb")


def test_wandb_online_without_a_login_stops_before_any_job(tmp_path, monkeypatch):
    from diffuser.config import cell_defaults
    from diffuser.training.loggers import LoggerUnavailable, WandbMirror

    for name in ("WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    expected = ("wandb_project is 'my-project' but no wandb API key is configured on this machine: run `wandb login` "
                "once outside the job or set WANDB_API_KEY, or unset wandb_project to log offline.")
    spec = {"meta_data": {"exp_name": "x"}, "constants": {"loggers": ["wandb"], "wandb_project": "my-project"}}
    if importlib.util.find_spec("wandb") is None:
        pytest.skip("wandb is not installed")
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_spec(spec)
    with pytest.raises(LoggerUnavailable, match=re.escape(expected)):  # a job on a machine without the key
        WandbMirror(tmp_path / "run", {**cell_defaults(), "loggers": ["wandb"], "wandb_project": "my-project"}, None)
    (tmp_path / "netrc").write_text("machine api.wandb.ai login user password 0123456789abcdef\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert load_spec(spec).cells()[0].config["wandb_project"] == "my-project"


def test_a_missing_logger_package_stops_before_any_job(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    spec = {"meta_data": {"exp_name": "x"}, "constants": {"loggers": ["csv", "wandb"]}, "variables": {"seed": [1, 2]}}
    with pytest.raises(ConfigError, match=r"loggers lists wandb, but the wandb package is not installed: pip install wandb"):
        load_spec(spec)


def test_an_unknown_logger_is_named(tmp_path):
    spec = {"meta_data": {"exp_name": "x"}, "constants": {"loggers": ["csv", "tensorbord"]}}
    with pytest.raises(ConfigError, match=r"constants\.loggers\[1\]: expected one of .*\"tensorboard\""):
        load_spec(spec)


def test_dvclive_cells_are_listed_in_the_repositorys_dvc_yaml_for_dvc_to_show(tmp_path):
    from diffuser.config import cell_defaults
    from diffuser.training.loggers import RunLoggers

    repository = tmp_path / "repo"
    repository.mkdir()
    env = {**python_env(), "DVC_NO_ANALYTICS": "1"}

    def run(*args):
        return subprocess.run(args, cwd=repository, env=env, check=True, capture_output=True, text=True).stdout

    run("git", "init", "-q")
    run("git", "config", "user.email", "t@t")
    run("git", "config", "user.name", "t")
    run(PYTHON, "-m", "dvc", "init", "-q")
    pipeline = ("# the pipeline\nstages:\n  train:\n    cmd: echo a long command line that must stay on one line\n"
                "    outs:\n      - results/x/cells:\n          persist: true\n")
    (repository / "dvc.yaml").write_text(pipeline)
    (repository / ".gitignore").write_text("/results/\n")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "init")
    config = {**cell_defaults(), "loggers": ["csv", "dvclive"]}
    cells = [repository / "results" / "x" / "cells" / name / "seed~1" for name in ("a~1", "a~2")]
    for offset, cell in enumerate(cells):
        for _ in range(2):  # a second start (a resume) registers nothing twice
            loggers = RunLoggers(cell, config, resume_step=None)
            for step in (10, 20):
                loggers.log(step, {"loss": offset + 1.0 / step, "eval_normalized_score": 50.0 + offset})
            loggers.close()
    text = (repository / "dvc.yaml").read_text()
    assert text.startswith(pipeline) and text.count("a~1/seed~1/dvclive/metrics.json") == 1  # appended only
    plots = json.loads(run(PYTHON, "-m", "dvc", "plots", "show", "--json"))["data"]
    assert "results/x/cells/a~1/seed~1/dvclive/plots/metrics/eval_normalized_score.tsv" in plots
    workspace = json.loads(run(PYTHON, "-m", "dvc", "exp", "show", "--json"))[0]["data"]["metrics"]
    assert workspace["results/x/cells/a~2/seed~1/dvclive/metrics.json"]["data"]["loss"] == pytest.approx(1.05)
    assert workspace["results/x/cells/a~1/seed~1/dvclive/metrics.json"]["data"]["eval_normalized_score"] == 50.0
