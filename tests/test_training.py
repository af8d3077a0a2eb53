"""Offline training: exact resume after a kill, NaN handling, and that a short run learns."""

import signal
import subprocess
import time

import pytest
import torch
import yaml
from conftest import PYTHON, ROOT, python_env

from diffuser.config import load_cell_config
from diffuser.training.checkpoints import latest_checkpoint, load_checkpoint
from diffuser.training.trainer import TrainingDiverged

TINY = {
    "dataset": "gen-maze2d-umaze",
    "dataset_steps": 3000,
    "hidden_dim": 32,
    "vae_latent_dim": 4,
    "trajectory_latent_dim": 16,
    "denoiser_blocks": 1,
    "history_horizon": 2,
    "n_diffusion_steps": 10,
    "n_sampling_steps": 3,
    "n_action_samples": 2,
    "batch_size": 16,
    "num_threads": 1,
    "log_freq": 10,
    "eval_freq": 100000,
}


def write_cell(path, **overrides):
    path.write_text(yaml.safe_dump({**TINY, **overrides}))
    return path


def without_timing(rows):
    return [r for r in rows if "steps_per_second" not in r]


def train_cmd(cell, run_dir, data_dir):
    return [PYTHON, "-m", "diffuser", "train", "--cell-config", str(cell), "--run-dir", str(run_dir),
            "--data-dir", str(data_dir)]


def test_resume_after_sigkill_gives_identical_weights(tmp_path, tiny_maze_data):
    cell = write_cell(tmp_path / "cell.yaml", n_train_steps=400, save_freq=40)
    env = python_env()
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    subprocess.run(train_cmd(cell, straight, tiny_maze_data), check=True, env=env, cwd=ROOT, capture_output=True)

    proc = subprocess.Popen(train_cmd(cell, resumed, tiny_maze_data), env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        ckpt = latest_checkpoint(resumed / "checkpoints")
        if ckpt is not None and int(ckpt.stem.split("_")[1]) >= 120:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = int(latest_checkpoint(resumed / "checkpoints").stem.split("_")[1])
    assert killed_at < 400 and not (resumed / "final.pt").exists(), "the run must be killed mid-training"

    subprocess.run(train_cmd(cell, resumed, tiny_maze_data), check=True, env=env, cwd=ROOT, capture_output=True)
    a, b = load_checkpoint(straight / "final.pt"), load_checkpoint(resumed / "final.pt")
    assert a["step"] == b["step"] == 400
    for key in a["ema"]:
        assert torch.equal(a["ema"][key], b["ema"][key]), f"{key} differs after resume"
    metrics_a = (straight / "metrics.csv").read_text().splitlines()
    metrics_b = (resumed / "metrics.csv").read_text().splitlines()
    assert without_timing(metrics_a) == without_timing(metrics_b), "resumed metrics must equal uninterrupted ones"


def test_nan_loss_stops_with_step_and_term_and_keeps_checkpoint(tmp_path, tiny_maze_data, monkeypatch):
    from diffuser import steps

    config = load_cell_config(write_cell(tmp_path / "cell.yaml", n_train_steps=60, save_freq=20))
    original = steps.build_model

    def poisoned(config, obs_dim, action_dim):
        model = original(config, obs_dim, action_dim)
        real_loss, calls = model.loss, {"n": 0}

        def loss(batch):
            calls["n"] += 1
            total, terms = real_loss(batch)
            if calls["n"] == 31:
                terms["diffusion_loss"] = terms["diffusion_loss"] * float("nan")
            return total, terms

        model.loss = loss
        return model

    monkeypatch.setattr(steps, "build_model", poisoned)
    # the step only sums its terms on the device; the log row after it (step 40) finds the NaN
    with pytest.raises(TrainingDiverged, match=r"diffusion_loss became NaN or infinite between step 31 and step 40"):
        steps.train(config, tmp_path / "run", tiny_maze_data)
    ckpt = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert ckpt is not None and load_checkpoint(ckpt)["step"] == 20


def test_cli_reports_a_config_typo_in_one_line(tmp_path):
    cell = tmp_path / "cell.yaml"
    cell.write_text(yaml.safe_dump({"vae_latnt_dim": 8}))
    out = subprocess.run([PYTHON, "-m", "diffuser", "train", "--cell-config", str(cell), "--run-dir",
                          str(tmp_path / "r")], env=python_env(), cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2
    assert "vae_latnt_dim" in out.stderr and "Traceback" not in out.stderr


def test_resume_extends_a_run_but_a_changed_setting_starts_over_keeping_the_old_checkpoints(tmp_path, tiny_maze_data,
                                                                                           capsys):
    from diffuser import steps

    run_dir = tmp_path / "run"
    # a constant learning rate: under a cosine schedule n_train_steps sets the schedule, so it is a changed setting
    short = load_cell_config(write_cell(tmp_path / "short.yaml", n_train_steps=40, save_freq=20, lr_schedule="constant"))
    steps.train(short, run_dir, tiny_maze_data)

    longer = load_cell_config(write_cell(tmp_path / "long.yaml", n_train_steps=60, save_freq=20, lr_schedule="constant"))
    steps.train(longer, run_dir, tiny_maze_data)
    steps_logged = [int(r.split(",")[0]) for r in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    assert steps_logged == sorted(steps_logged) and steps_logged[-1] == 60, "a longer run continues the shorter one"
    assert not list(tmp_path.glob("run/checkpoints.replaced-*"))

    changed = load_cell_config(write_cell(tmp_path / "changed.yaml", n_train_steps=60, save_freq=20,
                                          lr_schedule="constant", learning_rate=5e-4))
    capsys.readouterr()
    steps.train(changed, run_dir, tiny_maze_data)
    warning = capsys.readouterr().err
    assert "learning_rate" in warning and "training starts over" in warning
    replaced = list(run_dir.glob("checkpoints.replaced-*"))
    assert len(replaced) == 1 and latest_checkpoint(replaced[0]).name == "state_00000060.pt"
    assert load_checkpoint(run_dir / "final.pt")["config"]["learning_rate"] == 5e-4
    rows = (run_dir / "metrics.csv").read_text().splitlines()[1:]
    assert int(rows[0].split(",")[0]) == 10, "the changed run starts from step 0 with a fresh metrics table"


def test_a_run_checkpointed_before_a_key_existed_resumes_when_the_key_is_at_its_default(tmp_path, tiny_maze_data,
                                                                                        capsys):
    from diffuser import steps

    run_dir = tmp_path / "run"
    short = load_cell_config(write_cell(tmp_path / "short.yaml", n_train_steps=40, save_freq=20, lr_schedule="constant"))
    steps.train(short, run_dir, tiny_maze_data)
    for path in (run_dir / "checkpoints").glob("state_*.pt"):
        state = load_checkpoint(path)
        del state["config"]["ft_denoising_steps"]  # as if the key had come after the run
        torch.save(state, path)
    longer = load_cell_config(write_cell(tmp_path / "long.yaml", n_train_steps=60, save_freq=20, lr_schedule="constant"))
    capsys.readouterr()
    steps.train(longer, run_dir, tiny_maze_data)
    assert "resumed from step 40" in capsys.readouterr().out
    assert not list(run_dir.glob("checkpoints.replaced-*"))


def test_a_checkpoint_from_before_a_key_existed_still_evaluates(tmp_path, tiny_maze_data):
    """A key the schema gained after a run was written is read at its default (its behaviour then)."""
    from diffuser import steps

    run_dir = tmp_path / "run"
    steps.train(load_cell_config(write_cell(tmp_path / "cell.yaml", n_train_steps=20, num_eval=1)), run_dir,
                tiny_maze_data)
    state = load_checkpoint(run_dir / "final.pt")
    expected = steps.evaluate(run_dir, num_eval=2, out=tmp_path / "now.json")
    del state["config"]["ft_denoising_steps"]  # a key the model reads, as if it had come after the run
    torch.save(state, run_dir / "old.pt")
    old = steps.evaluate(run_dir, checkpoint=run_dir / "old.pt", num_eval=2, out=tmp_path / "old.json")
    assert old["returns"] == expected["returns"]
