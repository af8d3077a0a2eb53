"""Online + offline training: the collection schedule, the PPO pass (direction, frozen early denoising steps,
clip fraction 0 at its start, critic warm-up, KL early stop, DPPO's clip ranges and denoising discount), GAE,
the entropy term, the online state in checkpoints, and the clear error for an environment that cannot be built."""

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
from diffuser.registry import trainer_for
from diffuser.training.checkpoints import latest_checkpoint, load_checkpoint
from diffuser.training.online.rollout import collection_steps, gae_advantages
from diffuser.training.online.trainer import OnlineRLTrainer
from diffuser.training.online.update import (
    RLUpdateConfig,
    pair_log_probs,
    step_advantage_discounts,
    step_clip_ranges,
)

ONLINE = {**TINY, "online_training": True, "rl_warmup_steps": 30, "rl_collect_freq": 20, "rl_collect_steps": 7,
          "rl_update_freq": 5, "save_freq": 1000, "rl_num_envs": 2}


def online_config(tmp_path, **overrides) -> dict:
    path = tmp_path / "cell.yaml"
    path.write_text(yaml.safe_dump({**ONLINE, **overrides}))
    return load_cell_config(path)


def make_trainer(config, data_dir, run_dir):
    """The cell's trainer as the train step builds it (OnlineRLTrainer for the online configs here)."""
    torch.manual_seed(config["seed"])
    dataset = steps.load_dataset(config, data_dir)
    model = steps.build_model(config, dataset.obs_dim, dataset.action_dim)
    return trainer_for(config)(config, dataset, model, run_dir)


def tuned_log_likelihoods(trainer, rollout) -> torch.Tensor:
    """[N] each decision's summed per-dimension log-probability over the fine-tuned steps, as the update sees it."""
    model = trainer.model
    n, tuned = len(rollout["rewards"]), model.tuned_steps
    with torch.no_grad():
        decisions = torch.arange(n).repeat_interleave(len(tuned))
        steps = torch.arange(tuned.start, tuned.stop).repeat(n)
        return pair_log_probs(model, rollout, decisions, steps).view(n, len(tuned)).sum(-1)


def per_step_chain_log_probs(trainer, rollout) -> torch.Tensor:
    """[N, S] log-probability of every chain transition under the chain policy (frozen steps included)."""
    model = trainer.model
    with torch.no_grad():
        cond = model.policy_condition(rollout["observations"], rollout["history_observations"],
                                      rollout["history_actions"], rollout["history_mask"])
        return model.latent_chain_log_prob(cond, rollout["chains"], per_step=True)


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
    logged = {metric for _, metric, _ in rows}
    assert {"policy_loss", "rl_value_loss", "entropy", "value_loss", "clip_fraction", "approx_kl",
            "explained_variance", "rl_minibatches"} <= logged
    # one PPO pass per collection, right after it (rl_update_freq 5 divides the schedule): ratios start at 1
    first = {int(step): float(value) for step, metric, value in rows if metric == "clip_fraction_first"}
    assert first == {30: 0.0, 50: 0.0, 70: 0.0, 90: 0.0}
    passes = [int(step) for step, metric, _ in rows if metric == "rl_minibatches"]
    assert passes == [30, 50, 70, 90]


@pytest.mark.parametrize("warmup, freq, n, expected", [(0, 10, 35, [10, 20, 30]), (10, 10, 30, [10, 20, 30]),
                                                       (25, 100, 24, [])])
def test_collection_steps_rule(warmup, freq, n, expected):
    assert [k for k in range(1, n + 1) if collection_steps(k, warmup, freq)] == expected


def test_advantage_sign_moves_the_chain_log_likelihood(tmp_path, tiny_maze_data):
    """Decisions given a positive advantage become likelier, those given a negative one less likely."""
    config = online_config(tmp_path, value_function_weight=0.0, entropy_weight=0.0, rl_learning_rate=1e-3,
                           rl_critic_warmup_collections=0, rl_update_epochs=1, rl_target_kl=None)
    trainer = make_trainer(config, tiny_maze_data, tmp_path / "run")
    trainer.collect(12)
    signs = torch.tensor([1.0, -1.0]).repeat(6)
    rollout = dict(trainer.rollout, advantages=signs)
    before = tuned_log_likelihoods(trainer, rollout)
    trainer.rl_update(rollout)
    change = tuned_log_likelihoods(trainer, rollout) - before
    assert change[signs > 0].sum() > 0, f"positive advantages moved their log-likelihood by {change[signs > 0]}"
    assert change[signs < 0].sum() < 0, f"negative advantages moved their log-likelihood by {change[signs < 0]}"


def test_frozen_denoising_steps_do_not_change_in_an_update(tmp_path, tiny_maze_data):
    config = online_config(tmp_path, ft_denoising_steps=1, rl_critic_warmup_collections=0, rl_learning_rate=1e-2,
                           rl_target_kl=None)
    trainer = make_trainer(config, tiny_maze_data, tmp_path / "run")
    assert list(trainer.model.tuned_steps) == [2]  # of n_sampling_steps 3
    trainer.collect(12)
    rollout = dict(trainer.rollout, advantages=torch.randn(len(trainer.rollout["rewards"]),
                                                           generator=torch.Generator().manual_seed(0)))
    before = per_step_chain_log_probs(trainer, rollout)
    trainer.rl_update(rollout)
    trainer.train_step()  # nor does an offline step
    after = per_step_chain_log_probs(trainer, rollout)
    torch.testing.assert_close(after[:, :2], before[:, :2], rtol=0, atol=0)
    assert not torch.allclose(after[:, 2], before[:, 2]), "the fine-tuned last step must move"
    for ema, model in ((trainer.ema.base_denoiser, trainer.model.base_denoiser),
                       (trainer.ema.base_encoder, trainer.model.base_encoder)):
        for a, b in zip(ema.parameters(), model.parameters(), strict=True):
            assert torch.equal(a, b), "the EMA acts with the same frozen steps"


def test_clip_fraction_of_the_first_minibatch_after_a_collection_is_zero(tmp_path, tiny_maze_data):
    config = online_config(tmp_path, rl_critic_warmup_collections=0, rl_minibatch_size=8, rl_target_kl=None)
    trainer = make_trainer(config, tiny_maze_data, tmp_path / "run")
    for _ in range(2):
        trainer.collect(20)
        terms = trainer.rl_update()
        assert float(terms["clip_fraction_first"]) == 0.0
        assert float(terms["clip_fraction"]) > 0.0, "later minibatches move the policy out of DPPO's small ranges"
        assert float(terms["rl_minibatches"]) == config["rl_update_epochs"] * (20 * 3 // 8)


def test_critic_warmup_trains_the_value_network_only(tmp_path, tiny_maze_data):
    config = online_config(tmp_path, rl_critic_warmup_collections=1, rl_learning_rate=1e-3)
    trainer = make_trainer(config, tiny_maze_data, tmp_path / "run")
    trainer.collect(12)
    policy = [p.clone() for p in trainer.model.denoiser.parameters()]
    value = [p.clone() for p in trainer.value_net.parameters()]
    terms = trainer.rl_update()
    assert "policy_loss" not in terms and "rl_value_loss" in terms
    assert all(torch.equal(a, b) for a, b in zip(policy, trainer.model.denoiser.parameters(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(value, trainer.value_net.parameters(), strict=True))
    trainer.collect(12)  # the second collection is past the warm-up
    trainer.rl_update()
    assert not all(torch.equal(a, b) for a, b in zip(policy, trainer.model.denoiser.parameters(), strict=True))


def test_kl_early_stop_ends_the_pass(tmp_path, tiny_maze_data):
    overrides = {"rl_critic_warmup_collections": 0, "rl_minibatch_size": 6, "rl_learning_rate": 1e-2}
    full = make_trainer(online_config(tmp_path, rl_target_kl=None, **overrides), tiny_maze_data, tmp_path / "a")
    full.collect(12)
    assert float(full.rl_update()["rl_minibatches"]) == 5 * 6  # 5 epochs of 36 pairs / 6
    stopped = make_trainer(online_config(tmp_path, rl_target_kl=1e-9, **overrides), tiny_maze_data, tmp_path / "b")
    stopped.collect(12)
    assert float(stopped.rl_update()["rl_minibatches"]) < 5 * 6


def test_clip_ranges_narrow_and_advantages_are_discounted_for_earlier_steps(tmp_path):
    config = online_config(tmp_path, ppo_clip=0.01, ppo_clip_base=0.001, ppo_clip_rate=3.0)
    clips = step_clip_ranges(5, RLUpdateConfig.view(config)).tolist()
    assert clips[0] == pytest.approx(0.001) and clips[-1] == pytest.approx(0.01)
    assert all(a < b for a, b in zip(clips, clips[1:], strict=False))
    # exponential rise: the middle step is closer to the base than the linear midpoint
    assert clips[2] < (0.001 + 0.01) / 2
    np.testing.assert_allclose(step_advantage_discounts(3, 0.9).numpy(), [0.81, 0.9, 1.0], rtol=1e-6)


def test_entropy_bonus_widens_the_chain_policy(tmp_path, tiny_maze_data):
    config = online_config(tmp_path, policy_gradient_weight=0.0, value_function_weight=0.0, entropy_weight=1.0,
                           rl_learning_rate=1e-2, rl_critic_warmup_collections=0, rl_update_epochs=1,
                           rl_minibatch_size=1000)
    trainer = make_trainer(config, tiny_maze_data, tmp_path / "run")
    trainer.collect(5)
    before = trainer.model.chain_entropy().item()
    terms = trainer.rl_update()
    assert trainer.model.chain_entropy().item() > before
    assert float(terms["rl_loss"]) == pytest.approx(-float(terms["entropy"]), rel=1e-5)  # the bonus enters with a minus sign


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


def test_online_state_round_trips_through_a_checkpoint(tmp_path, tiny_maze_data):
    config = online_config(tmp_path, n_train_steps=60, ft_denoising_steps=1)
    trainer = make_trainer(config, tiny_maze_data, tmp_path / "run")
    trainer.train()
    path = latest_checkpoint(tmp_path / "run" / "checkpoints")
    torch.load(path, weights_only=True)  # no pickled code in the new state
    state = load_checkpoint(path)
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
    assert (restored.collections, restored.rollout_used) == (trainer.collections, trainer.rollout_used) == (2, True)
    # the frozen first denoising steps, in the model and its EMA
    for name in ("model", "ema"):
        mine, theirs = getattr(trainer, name), getattr(restored, name)
        assert bool(theirs.base_frozen)
        for (key, p), q in zip(mine.base_denoiser.state_dict().items(), theirs.base_denoiser.state_dict().values(),
                               strict=True):
            assert torch.equal(p, q), f"{name}.base_denoiser.{key}"
    assert not torch.equal(next(trainer.model.base_denoiser.parameters()), next(trainer.model.denoiser.parameters()))
    assert restored.online_dataset is not None and len(restored.online_dataset) == len(trainer.online_dataset)
    # the next collection continues with the same RNG stream; the episodes in progress restart
    assert torch.equal(trainer.rl_generator.get_state(), restored.rl_generator.get_state())
    assert (restored.collector.episode_ids < 0).all()


@pytest.mark.parametrize("extra", [{}, {"offline_policy_candidates": 1}])
def test_offline_phase_repeats_the_offline_twin_exactly(tmp_path, tiny_maze_data, extra):
    # the online trainer's extra networks (and policy expansion's frozen copy) must not draw from the training
    # stream: before rl_warmup_steps an online cell trains exactly as the offline cell of the same seed, so the
    # two pair up step for step
    online = online_config(tmp_path, **extra)
    offline = {**online, "online_training": False}

    def three_steps(trainer):
        terms = [{k: v.item() for k, v in trainer.train_step().items()} for _ in range(3)]
        return terms, dict(trainer.model.named_parameters())

    # one after the other: the twins share the global RNG, which make_trainer seeds
    offline_trainer = make_trainer(offline, tiny_maze_data, tmp_path / "offline")
    assert not isinstance(offline_trainer, OnlineRLTrainer)
    offline_terms, offline_weights = three_steps(offline_trainer)
    online_trainer = make_trainer(online, tiny_maze_data, tmp_path / "online")
    assert isinstance(online_trainer, OnlineRLTrainer)
    online_terms, online_weights = three_steps(online_trainer)
    assert online_terms == offline_terms
    for name, value in offline_weights.items():
        assert torch.equal(value, online_weights[name]), name


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
