"""Online + offline training: the collection schedule, the direction of the RL update, GAE, the
entropy term, the online buffer in checkpoints, and the clear error for an environment that cannot be built."""

import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
import yaml
from conftest import PYTHON, ROOT, python_env
from test_training import TINY

from diffuser import steps
from diffuser.config import load_cell_config
from diffuser.envs.make import EnvironmentUnavailable
from diffuser.training.checkpoints import latest_checkpoint, load_checkpoint
from diffuser.training.online.rollout import collection_steps, gae_advantages
from diffuser.training.online.trainer import OnlineRLTrainer

ONLINE = {**TINY, "online_training": True, "rl_warmup_steps": 30, "rl_collect_freq": 20, "rl_collect_steps": 7,
          "rl_update_freq": 5, "save_freq": 1000}


def online_config(tmp_path, **overrides) -> dict:
    path = tmp_path / "cell.yaml"
    path.write_text(yaml.safe_dump({**ONLINE, **overrides}))
    return load_cell_config(path)


def make_trainer(config, data_dir, run_dir) -> OnlineRLTrainer:
    torch.manual_seed(config["seed"])
    dataset = steps.load_dataset(config, data_dir)
    model = steps.build_model(config, dataset.obs_dim, dataset.action_dim)
    return OnlineRLTrainer(config, dataset, model, run_dir)


def chain_log_likelihood(trainer, rollout) -> float:
    model = trainer.model
    with torch.no_grad():
        cond = model.condition(rollout["observations"], rollout["history_observations"],
                               rollout["history_actions"], rollout["history_mask"])
        return float(model.latent_chain_log_prob(cond, rollout["chains"]).sum())


def test_collection_schedule_counts_every_environment_step(tmp_path, tiny_maze_data):
    n_steps = 95
    config = online_config(tmp_path, n_train_steps=n_steps, log_freq=1)
    trainer = make_trainer(config, tiny_maze_data, tmp_path / "run")
    trainer.train()
    # by the rule: no interaction in the first 30 steps, then after steps 30, 50, 70, 90
    expected_collections = [k for k in range(1, n_steps + 1) if k >= 30 and (k - 30) % 20 == 0]
    assert expected_collections == [30, 50, 70, 90]
    assert trainer.env_steps == len(trainer.buffer) == 4 * 7
    rows = [line.split(",") for line in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]]
    env_steps = {int(step): float(value) for step, metric, value in rows if metric == "env_steps"}
    assert env_steps[29] == 0 and env_steps[30] == 7 and env_steps[49] == 7 and env_steps[95] == 28
    assert {"policy_loss", "rl_value_loss", "entropy", "value_loss"} <= {metric for _, metric, _ in rows}


@pytest.mark.parametrize("warmup, freq, n, expected", [(0, 10, 35, [10, 20, 30]), (10, 10, 30, [10, 20, 30]),
                                                       (25, 100, 24, [])])
def test_collection_steps_rule(warmup, freq, n, expected):
    assert [k for k in range(1, n + 1) if collection_steps(k, warmup, freq)] == expected


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_advantage_sign_moves_the_chain_log_likelihood(tmp_path, tiny_maze_data, sign):
    config = online_config(tmp_path, value_function_weight=0.0, entropy_weight=0.0, rl_learning_rate=1e-3)
    trainer = make_trainer(config, tiny_maze_data, tmp_path / "run")
    trainer.collect(12)
    rollout = dict(trainer.rollout, advantages=torch.full_like(trainer.rollout["advantages"], sign))
    before = chain_log_likelihood(trainer, rollout)
    trainer.rl_update(rollout)
    after = chain_log_likelihood(trainer, rollout)
    assert (after - before) * sign > 0, f"advantage {sign:+} moved the log-likelihood from {before} to {after}"


def test_entropy_bonus_widens_the_chain_policy(tmp_path, tiny_maze_data):
    config = online_config(tmp_path, policy_gradient_weight=0.0, value_function_weight=0.0, entropy_weight=1.0,
                           rl_learning_rate=1e-2)
    trainer = make_trainer(config, tiny_maze_data, tmp_path / "run")
    trainer.collect(5)
    before = trainer.model.chain_entropy().item()
    terms = trainer.rl_update()
    assert trainer.model.chain_entropy().item() > before
    assert terms["rl_loss"] == pytest.approx(-terms["entropy"], rel=1e-5)  # the bonus enters with a minus sign


def test_gae_bootstraps_and_stops_at_episode_ends():
    rewards = np.array([1.0, 0.0, 2.0, 1.0])
    values = np.array([0.5, 0.5, 0.5, 0.5])
    next_values = np.array([0.5, 0.5, 3.0, 4.0])
    discounts = np.full(4, 0.9)
    terminals = np.array([False, True, False, False])
    ends = np.array([False, True, False, False])
    adv = gae_advantages(rewards, values, next_values, discounts, terminals, ends, lam=0.5)
    d3 = 1.0 + 0.9 * 4.0 - 0.5  # segment end: bootstrap from the next value, nothing carried
    d2 = 2.0 + 0.9 * 3.0 - 0.5
    d1 = 0.0 - 0.5  # terminal: no bootstrap
    d0 = 1.0 + 0.9 * 0.5 - 0.5
    expected = [d0 + 0.9 * 0.5 * d1, d1, d2 + 0.9 * 0.5 * d3, d3]
    np.testing.assert_allclose(adv, expected)


def test_online_buffer_and_rollout_round_trip_through_a_checkpoint(tmp_path, tiny_maze_data):
    config = online_config(tmp_path, n_train_steps=60)
    trainer = make_trainer(config, tiny_maze_data, tmp_path / "run")
    trainer.train()
    state = load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))
    restored = make_trainer(config, tiny_maze_data, tmp_path / "other")
    restored.load_state_dict(state)
    assert restored.env_steps == trainer.env_steps == 14
    a, b = trainer.buffer.arrays(), restored.buffer.arrays()
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    for key, value in trainer.rollout.items():
        assert torch.equal(value, restored.rollout[key]), key
    assert restored.episodes_started == trainer.episodes_started
    assert restored.online_dataset is not None and len(restored.online_dataset) == len(trainer.online_dataset)
    # the next collection continues with the same RNG stream
    assert torch.equal(trainer.rl_generator.get_state(), restored.rl_generator.get_state())


def test_online_batches_mix_online_and_offline_samples(tmp_path, tiny_maze_data):
    config = online_config(tmp_path, online_sample_fraction=0.25, batch_size=16)
    trainer = make_trainer(config, tiny_maze_data, tmp_path / "run")
    assert trainer._sample_batch()["observations"].shape[0] == 16
    trainer.collect(20)
    batch = trainer._sample_batch()
    online_obs = trainer.online_dataset.get(torch.arange(len(trainer.online_dataset)))["observations"]
    from_online = [(row[None] == online_obs).all(-1).any() for row in batch["observations"][-4:]]
    assert batch["observations"].shape[0] == 16 and all(from_online)


@pytest.fixture()
def data_with_unknown_env(tmp_path, tiny_maze_data):
    data_dir = tmp_path / "data"
    shutil.copytree(tiny_maze_data, data_dir)
    meta_path = steps.processed_dir(online_config(tmp_path), data_dir) / "metadata.json"
    metadata = json.loads(meta_path.read_text())
    metadata["env_id"] = "NoSuchMaze-v9"
    meta_path.write_text(json.dumps(metadata))
    return data_dir


def test_unbuildable_environment_stops_online_training_before_it_starts(tmp_path, data_with_unknown_env):
    config = online_config(tmp_path)
    with pytest.raises(EnvironmentUnavailable, match="NoSuchMaze-v9"):
        make_trainer(config, data_with_unknown_env, tmp_path / "run")

    cell = tmp_path / "online.yaml"
    cell.write_text(yaml.safe_dump({**ONLINE, "n_train_steps": 40}))
    cmd = [PYTHON, "-m", "diffuser", "train", "--cell-config", str(cell), "--data-dir", str(data_with_unknown_env)]
    online = subprocess.run([*cmd, "--run-dir", str(tmp_path / "online")], env=python_env(), cwd=ROOT,
                            capture_output=True, text=True)
    assert online.returncode == 2
    assert "NoSuchMaze-v9" in online.stderr and "Traceback" not in online.stderr
    assert not (tmp_path / "online" / "checkpoints").exists()

    # offline training never builds the environment
    cell.write_text(yaml.safe_dump({**ONLINE, "online_training": False, "n_train_steps": 40}))
    offline = subprocess.run([*cmd, "--run-dir", str(tmp_path / "offline")], env=python_env(), cwd=ROOT,
                             capture_output=True, text=True)
    assert offline.returncode == 0, offline.stderr
    final = load_checkpoint(tmp_path / "offline" / "final.pt")
    assert final["step"] == 40 and final["config"]["online_training"] is False
    rows = [line.split(",") for line in (tmp_path / "offline" / "metrics.csv").read_text().splitlines()[1:]]
    logged = {metric for _, metric, _ in rows}
    assert {"loss", "diffusion_loss", "value_loss"} <= logged
    assert not logged & {"env_steps", "policy_loss", "rl_value_loss"}, "offline training logs no RL terms"
    assert max(int(step) for step, _, _ in rows) == 40
