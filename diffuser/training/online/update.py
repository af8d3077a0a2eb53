"""The RL update: DPPO-style clipped policy loss per denoising step, the on-policy value loss, the
chain entropy bonus; and the on-policy value network they train."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from diffuser.models.denoisers import mlp
from diffuser.models.settings import Settings

# Keeps the advantage scaling finite when every advantage of a rollout is equal.
ADVANTAGE_STD_EPS = 1e-8


@dataclass(frozen=True)
class RLUpdateConfig(Settings):
    ppo_clip: float
    policy_gradient_weight: float
    value_function_weight: float
    entropy_weight: float


def make_value_net(obs_dim: int, hidden_dim: int) -> nn.Module:
    """V(s) of the current chain policy; the same shape as the critic's V, so it can start from it."""
    return mlp(obs_dim, hidden_dim, 1, activation=nn.ReLU)


def rl_parameters(model, value_net: nn.Module) -> list:
    """What the RL update trains: the denoiser, the trajectory encoder, the chain's std and the value network."""
    return [*model.denoiser.parameters(), *model.trajectory_encoder.parameters(), model.chain_log_std,
            *value_net.parameters()]


def rl_losses(model, value_net: nn.Module, rollout: dict[str, torch.Tensor], cfg: RLUpdateConfig) -> dict[str, torch.Tensor]:
    """The RL terms on a rollout: clipped policy loss per denoising step, value loss, chain entropy."""
    cond = model.condition(rollout["observations"], rollout["history_observations"],
                           rollout["history_actions"], rollout["history_mask"])
    log_probs = model.latent_chain_log_prob(cond, rollout["chains"], per_step=True)  # [N, S]
    advantages = rollout["advantages"]
    if len(advantages) > 1:
        # scaled, not centred: the value baseline already centres them, and scaling keeps each sign
        advantages = advantages / (advantages.std() + ADVANTAGE_STD_EPS)
    ratio = torch.exp(log_probs - rollout["log_probs"])
    clipped = ratio.clamp(1.0 - cfg.ppo_clip, 1.0 + cfg.ppo_clip)
    policy_loss = -torch.min(ratio * advantages[:, None], clipped * advantages[:, None]).mean()
    value_loss = torch.mean((value_net(rollout["observations"]).squeeze(-1) - rollout["returns"]) ** 2)
    entropy = model.chain_entropy()
    rl_loss = (cfg.policy_gradient_weight * policy_loss + cfg.value_function_weight * value_loss
               - cfg.entropy_weight * entropy)
    return {"rl_loss": rl_loss, "policy_loss": policy_loss, "rl_value_loss": value_loss, "entropy": entropy,
            "clip_fraction": ((ratio - 1.0).abs() > cfg.ppo_clip).float().mean()}
