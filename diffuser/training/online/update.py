"""The RL update, after DPPO (Ren et al., "Diffusion Policy Policy Optimization", 2024; the
irom-lab/dppo repository, model/diffusion/diffusion_ppo.py and agent/finetune/train_ppo_diffusion_agent.py):
PPO over the denoising steps of the chain policy, the on-policy value network, the chain entropy bonus.

One PPO pass per collection: `rl_update_epochs` epochs, each a fresh random split of the rollout's
(decision, fine-tuned denoising step) pairs into minibatches of `rl_minibatch_size` (the remainder
that does not fill a minibatch waits for the next epoch's shuffle, as DPPO's `total_steps //
batch_size`). Per pair:

- the log-probability of the transition x_j -> x_{j-1} is averaged over the latent dimensions and
  clamped to LOG_PROB_CLAMP, as DPPO does: the ratio is then a per-dimension one, which is what
  its small clip ranges are sized for;
- advantages are normalised over the minibatch (`rl_normalize_advantages`, DPPO's norm_adv), then
  discounted by gamma_denoising^(steps before the chain's last), so earlier denoising steps get less;
- the clip range grows from `ppo_clip_base` at the first fine-tuned step to `ppo_clip` at the last,
  exponentially at `ppo_clip_rate` (DPPO's clip_ploss_coef_base, clip_ploss_coef, clip_ploss_coef_rate);
- during the first `rl_critic_warmup_collections` collections only the value loss is applied (DPPO's
  n_critic_warmup_itr);
- the pass stops early once a minibatch's approximate KL exceeds `rl_target_kl` (DPPO's target_kl).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from diffuser.models.denoisers import mlp
from diffuser.models.settings import Settings

# Keeps the advantage normalisation finite when every advantage of a minibatch is equal.
ADVANTAGE_STD_EPS = 1e-8
# DPPO clamps each dimension's transition log-probability to [-5, 2] before averaging (diffusion_ppo.py):
# a sample far in a Gaussian's tail would otherwise dominate a ratio.
LOG_PROB_CLAMP = (-5.0, 2.0)
# Pairs per forward pass when the rollout's old log-probabilities are computed (memory, not results).
LOG_PROB_CHUNK = 8192


@dataclass(frozen=True)
class RLUpdateConfig(Settings):
    rl_update_epochs: int
    rl_minibatch_size: int
    ppo_clip: float
    ppo_clip_base: float
    ppo_clip_rate: float
    gamma_denoising: float
    rl_normalize_advantages: bool
    rl_target_kl: float | None
    rl_critic_warmup_collections: int
    policy_gradient_weight: float
    value_function_weight: float
    entropy_weight: float


def make_value_net(obs_dim: int, hidden_dim: int) -> nn.Module:
    """V(s) of the current chain policy; the same shape as the critic's V, so it can start from it."""
    return mlp(obs_dim, hidden_dim, 1, activation=nn.ReLU)


def rl_parameter_groups(model, value_net: nn.Module, value_learning_rate: float) -> list[dict]:
    """What the RL update trains, as optimizer groups: the policy (denoiser, trajectory encoder, the chain's
    std; the frozen first denoising steps have their own copies, outside it) at the optimizer's learning
    rate, and the value network at `value_learning_rate` (DPPO's actor and critic learning rates)."""
    policy = [*model.denoiser.parameters(), *model.trajectory_encoder.parameters(), model.chain_log_std]
    return [{"params": policy}, {"params": list(value_net.parameters()), "lr": value_learning_rate}]


def step_clip_ranges(n_tuned: int, cfg: RLUpdateConfig) -> torch.Tensor:
    """[n_tuned] clip range of each fine-tuned step, first (noisiest) to last: ppo_clip_base rising
    exponentially (rate ppo_clip_rate) to ppo_clip."""
    if n_tuned == 1:
        return torch.tensor([cfg.ppo_clip])
    t = torch.arange(n_tuned, dtype=torch.float64) / (n_tuned - 1)
    rise = (torch.exp(cfg.ppo_clip_rate * t) - 1) / (math.exp(cfg.ppo_clip_rate) - 1)
    return (cfg.ppo_clip_base + (cfg.ppo_clip - cfg.ppo_clip_base) * rise).float()


def step_advantage_discounts(n_tuned: int, gamma_denoising: float) -> torch.Tensor:
    """[n_tuned] gamma_denoising^(steps left after this one): 1 for the chain's last step."""
    return gamma_denoising ** torch.arange(n_tuned - 1, -1, -1, dtype=torch.float32)


def pair_log_probs(model, rollout: dict[str, torch.Tensor], decisions: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """[B] per-dimension mean (clamped as DPPO's) log-probability of the transition at chain step `steps[b]`
    of decision `decisions[b]`, under the current model; differentiable."""
    cond = model.condition(rollout["observations"][decisions], rollout["history_observations"][decisions],
                           rollout["history_actions"][decisions], rollout["history_mask"][decisions])
    chains = rollout["chains"][decisions]  # [B, S+1, D]
    rows = torch.arange(len(decisions), device=chains.device)
    log_probs = model.tuned_transition_log_probs(cond, chains[rows, steps], chains[rows, steps + 1], steps)
    return log_probs.clamp(*LOG_PROB_CLAMP).mean(-1)


@torch.no_grad()
def rollout_log_probs(model, rollout: dict[str, torch.Tensor]) -> torch.Tensor:
    """[N, n_tuned] the collecting policy's `pair_log_probs` of every decision's fine-tuned steps."""
    n, tuned = len(rollout["rewards"]), model.tuned_steps
    device = rollout["chains"].device
    decisions = torch.arange(n, device=device).repeat_interleave(len(tuned))
    steps = torch.arange(tuned.start, tuned.stop, device=device).repeat(n)
    parts = [pair_log_probs(model, rollout, d, s)
             for d, s in zip(decisions.split(LOG_PROB_CHUNK), steps.split(LOG_PROB_CHUNK), strict=True)]
    return torch.cat(parts).view(n, len(tuned))


def ppo_losses(model, value_net: nn.Module, rollout: dict[str, torch.Tensor], decisions: torch.Tensor,
               tuned_index: torch.Tensor, cfg: RLUpdateConfig, critic_only: bool) -> dict[str, torch.Tensor]:
    """The RL terms on one minibatch of (decision, fine-tuned step index) pairs."""
    n_tuned = rollout["log_probs"].shape[1]
    new = pair_log_probs(model, rollout, decisions, tuned_index + model.n_frozen_steps)
    log_ratio = new - rollout["log_probs"][decisions, tuned_index]
    ratio = log_ratio.exp()
    advantages = rollout["advantages"][decisions]
    if cfg.rl_normalize_advantages and len(advantages) > 1:
        advantages = (advantages - advantages.mean()) / (advantages.std() + ADVANTAGE_STD_EPS)
    advantages = advantages * step_advantage_discounts(n_tuned, cfg.gamma_denoising).to(advantages)[tuned_index]
    clip = step_clip_ranges(n_tuned, cfg).to(ratio)[tuned_index]
    policy_loss = -torch.min(advantages * ratio, advantages * torch.clamp(ratio, 1 - clip, 1 + clip)).mean()
    value_loss = torch.mean((value_net(rollout["observations"][decisions]).squeeze(-1) - rollout["returns"][decisions]) ** 2)
    entropy = model.chain_entropy()
    if critic_only:
        rl_loss = cfg.value_function_weight * value_loss
    else:
        rl_loss = (cfg.policy_gradient_weight * policy_loss + cfg.value_function_weight * value_loss
                   - cfg.entropy_weight * entropy)
    with torch.no_grad():
        # k3 estimator of KL(old || new) (Schulman's note, as DPPO logs it)
        approx_kl = ((ratio - 1) - log_ratio).mean()
        clip_fraction = ((ratio - 1).abs() > clip).float().mean()
    return {"rl_loss": rl_loss, "policy_loss": policy_loss, "rl_value_loss": value_loss, "entropy": entropy,
            "approx_kl": approx_kl, "clip_fraction": clip_fraction}


def ppo_pass(model, value_net: nn.Module, rollout: dict[str, torch.Tensor], cfg: RLUpdateConfig, critic_only: bool,
             generator: torch.Generator, apply: Callable[[torch.Tensor], None]) -> list[dict[str, torch.Tensor]]:
    """The epochs over minibatches of one rollout; `apply(loss)` takes each gradient step. Returns each
    minibatch's terms (detached, on the device), in order."""
    n_tuned = rollout["log_probs"].shape[1]
    total = len(rollout["rewards"]) * n_tuned
    size = min(cfg.rl_minibatch_size, total)
    device = rollout["chains"].device
    done: list[dict[str, torch.Tensor]] = []
    for _ in range(cfg.rl_update_epochs):
        order = torch.randperm(total, generator=generator).to(device)
        for b in range(total // size):
            pairs = order[b * size:(b + 1) * size]
            terms = ppo_losses(model, value_net, rollout, pairs // n_tuned, pairs % n_tuned, cfg, critic_only)
            apply(terms["rl_loss"])
            done.append({name: value.detach() for name, value in terms.items()})
            if cfg.rl_target_kl is not None and not critic_only and float(terms["approx_kl"]) > cfg.rl_target_kl:
                return done
    return done
