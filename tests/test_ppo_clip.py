"""PPO's clipped objective on minibatches whose probability ratios leave the clip range.

The rollout's stored log-probabilities are set so that each decision's ratio pi_new / pi_old at its
one fine-tuned denoising step (ft_denoising_steps 1: the clip range there is `ppo_clip`, the
denoising discount 1) is a chosen number. Per PPO, -min(r A, clip(r, 1 - eps, 1 + eps) A) with A the
minibatch-normalised advantage: a sample whose ratio left the range in the direction its advantage
pushes (r > 1 + eps with A > 0, r < 1 - eps with A < 0) is clipped and gives no gradient; one that
left it the other way keeps r A and its gradient.
"""

import numpy as np
import pytest
import torch
from test_online_training import make_trainer, online_config

from diffuser.training.online.update import pair_log_probs, ppo_losses

CLIP = 0.2


@pytest.fixture()
def trainer(tmp_path, tiny_maze_data):
    config = online_config(tmp_path, ppo_clip=CLIP, value_function_weight=0.0, entropy_weight=0.0,
                           ft_denoising_steps=1, rl_critic_warmup_collections=0)
    trainer = make_trainer(config, tiny_maze_data, tmp_path / "run")
    trainer.collect(8)  # 8 decisions of one step each (action_horizon 1)
    return trainer


def with_ratios(trainer, ratios, advantages) -> dict:
    """The first len(ratios) decisions of the rollout, with ratio pi_new / pi_old = ratios[i] at the
    fine-tuned step of decision i and the given advantages."""
    n = len(ratios)
    rollout = {key: value[:n] for key, value in trainer.rollout.items()}
    with torch.no_grad():
        steps = torch.full((n,), trainer.model.tuned_steps.start)
        current = pair_log_probs(trainer.model, rollout, torch.arange(n), steps)
    rollout["log_probs"] = (current - torch.tensor(ratios, dtype=torch.float32).log())[:, None]
    rollout["advantages"] = torch.tensor(advantages, dtype=torch.float32)
    return rollout


def policy_gradient(trainer, rollout) -> tuple[dict, float]:
    """(the RL terms, the largest |gradient| of policy_loss over the model's parameters)."""
    trainer.model.zero_grad(set_to_none=True)
    n = len(rollout["rewards"])
    terms = ppo_losses(trainer.model, trainer.value_net, rollout, torch.arange(n), torch.zeros(n, dtype=torch.long),
                       trainer.rl_config, critic_only=False)
    terms["policy_loss"].backward()
    grads = [p.grad.abs().max().item() for p in trainer.model.parameters() if p.grad is not None]
    return terms, max(grads, default=0.0)


def expected_policy_loss(ratios, advantages) -> float:
    r, a = np.asarray(ratios), np.asarray(advantages, dtype=np.float64)
    a = (a - a.mean()) / (np.std(a, ddof=1) + 1e-8)  # normalised per minibatch (torch's unbiased std), as DPPO
    return float(-np.mean(np.minimum(r * a, np.clip(r, 1 - CLIP, 1 + CLIP) * a)))


def test_samples_clipped_in_the_direction_of_their_advantage_give_no_gradient(trainer):
    ratios, advantages = [1.5, 0.5, 1.3, 0.7], [1.0, -1.0, 2.0, -2.0]
    terms, largest = policy_gradient(trainer, with_ratios(trainer, ratios, advantages))
    assert largest == 0.0, f"clipped samples must not move the policy (largest gradient {largest})"
    assert terms["policy_loss"].item() == pytest.approx(expected_policy_loss(ratios, advantages), rel=1e-4)
    assert terms["clip_fraction"].item() == pytest.approx(1.0)


def test_samples_outside_the_range_against_their_advantage_keep_their_gradient(trainer):
    ratios, advantages = [1.5, 0.5], [-1.0, 1.0]
    terms, largest = policy_gradient(trainer, with_ratios(trainer, ratios, advantages))
    assert largest > 0, "the pessimistic term r * A is not clipped here, so it must give a gradient"
    assert terms["policy_loss"].item() == pytest.approx(expected_policy_loss(ratios, advantages), rel=1e-4)


def test_policy_loss_clip_fraction_and_kl_of_a_mixed_minibatch(trainer):
    ratios = [1.5, 0.5, 1.5, 0.5, 1.0, 1.1, 0.9, 1.25]
    advantages = [1.0, -1.0, -1.0, 1.0, 2.0, -0.5, 0.5, 3.0]
    terms, largest = policy_gradient(trainer, with_ratios(trainer, ratios, advantages))
    assert largest > 0
    assert terms["policy_loss"].item() == pytest.approx(expected_policy_loss(ratios, advantages), rel=1e-4)
    outside = np.abs(np.asarray(ratios) - 1) > CLIP
    assert terms["clip_fraction"].item() == pytest.approx(outside.mean())
    r = np.asarray(ratios)
    assert terms["approx_kl"].item() == pytest.approx(np.mean((r - 1) - np.log(r)), rel=1e-4)
