"""IQL critic over latent actions: V(s), twin Q(s, z) and their target copies.

Implicit Q-learning (Kostrikov et al., 2022) never evaluates Q at latents the data does not hold:
V(s) is an upper expectile of Q(s, z_data) over the dataset's latents, which approximates the value
of the best in-distribution action, and Q bootstraps from V(s'). The latents z_data are the VAE
encoder's means of the dataset's action chunks, detached by the caller, so the critic cannot move
the VAE. A chunk of K actions is one decision: its reward is the discounted sum over the chunk and
it bootstraps with discount^K.

With return floors (`critic_return_floor`; the batch's `return_floors`, datasets/sequence.py), the TD
target is held at or above a Monte Carlo lower bound on the return of the data's own actions from the
state on, max(TD target, floor), as in MCAC (Wilcox et al., "Monte Carlo Augmented Actor-Critic for Sparse
Reward Deep RL from Suboptimal Demonstrations", NeurIPS 2022). Bootstrapping carries a sparse reward back
one chunk per round of target updates; the floor carries it at once along every recorded path that reached
it, but only where the critic is below the floor (pessimistic). A critic that starts near 0 on rewards of -1
per step is above it until bootstrapping has brought it down (docs/measurements.md, OGBench task 2).
`critic_initial_value` starts V and Q there instead (e.g. the floor of an episode that never succeeds,
reward_floor / (1 - discount)): the critic then rises from below toward the returns the data shows,
the direction the floor acts in, rather than falling from 0 by bootstrapping. `critic_max_value` holds
V and Q under the highest return there can be (0 when no reward is above 0), as HER (Andrychowicz et al.,
2017) clips its targets to [-1 / (1 - discount), 0]; here the networks' outputs are bounded, so that where
no data is (beyond a goal in a maze's corner) they cannot extrapolate above what reaching the goal is worth.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from diffuser.models.denoisers import mlp
from diffuser.models.ensembles import EnsembleMLP

# Q(s, z): hidden layers of each twin, as in `mlp`'s default
Q_HIDDEN_LAYERS = 2


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """Asymmetric squared error: weight `expectile` where diff > 0 (target above prediction), 1 - expectile below."""
    weight = torch.where(diff > 0, expectile, 1.0 - expectile)
    return torch.mean(weight * diff**2)


class TwinQ(EnsembleMLP):
    """Two independent Q(s, z) ReLU MLPs, as one batched module (ensembles.py); their minimum counters
    overestimation."""

    def __init__(self, obs_dim: int, latent_dim: int, hidden_dim: int):
        super().__init__(2, obs_dim + latent_dim, hidden_dim, 1, Q_HIDDEN_LAYERS, torch.relu, layer_norm=False)
        self._register_load_state_dict_pre_hook(_stack_separate_twins)

    def forward(self, observations: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """[B, obs_dim], [B, latent_dim] -> [2, B]."""
        return super().forward(torch.cat([observations, latents], dim=-1)).squeeze(-1)


def _stack_separate_twins(state_dict, prefix, *args) -> None:
    """Read checkpoints written before the twins were stacked: `q1.<layer>.weight` [out, in] of two
    nn.Sequential MLPs (Linear layers at 0, 2, 4) become `weights.<i>` [2, in, out] and `biases.<i>` [2, 1, out]."""
    if f"{prefix}q1.0.weight" not in state_dict:
        return
    for i in range(Q_HIDDEN_LAYERS + 1):
        layer = 2 * i  # Linear, activation, Linear, ...
        weights = [state_dict.pop(f"{prefix}q{m}.{layer}.weight") for m in (1, 2)]
        biases = [state_dict.pop(f"{prefix}q{m}.{layer}.bias") for m in (1, 2)]
        state_dict[f"{prefix}weights.{i}"] = torch.stack([w.t() for w in weights])
        state_dict[f"{prefix}biases.{i}"] = torch.stack([b[None] for b in biases])


class IQLCritic(nn.Module):
    def __init__(
        self,
        obs_dim: int,
        latent_dim: int,
        hidden_dim: int,
        expectile: float,
        discount: float,
        action_horizon: int,
        target_update_rate: float,
        initial_value: float | None,
        max_value: float | None,
    ):
        """`initial_value`: where V and both Q start (their output biases; `critic_initial_value`), or None
        for nn.Linear's default initialisation (outputs near 0). `max_value`: the ceiling V and Q are held
        under (`critic_max_value`), or None for none."""
        super().__init__()
        self.expectile = expectile
        self.max_value = max_value
        self.target_update_rate = target_update_rate
        self.chunk_bootstrap = discount**action_horizon
        self.value = mlp(obs_dim, hidden_dim, 1, activation=nn.ReLU)
        self.q = TwinQ(obs_dim, latent_dim, hidden_dim)
        if initial_value is not None:
            with torch.no_grad():
                self.value[-1].bias.fill_(initial_value)
                self.q.biases[-1].fill_(initial_value)
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.register_buffer("chunk_discounts", discount ** torch.arange(action_horizon, dtype=torch.float32),
                             persistent=False)

    def bounded(self, outputs: torch.Tensor) -> torch.Tensor:
        """The networks' outputs under the ceiling: a smooth min(outputs, max_value), max_value - softplus(max_value
        - outputs), which is the output itself a few units below the ceiling (and the identity without one)."""
        if self.max_value is None:
            return outputs
        return self.max_value - F.softplus(self.max_value - outputs)

    def v(self, observations: torch.Tensor) -> torch.Tensor:
        """[B, obs_dim] -> [B]."""
        return self.bounded(self.value(observations).squeeze(-1))

    def q_twins(self, observations: torch.Tensor, latents: torch.Tensor, target: bool = False) -> torch.Tensor:
        """[2, B] the twin Q values (of the target copies with `target`)."""
        return self.bounded((self.q_target if target else self.q)(observations, latents))

    def q_min(self, observations: torch.Tensor, latents: torch.Tensor, target: bool = False) -> torch.Tensor:
        """[B] min of the twin Q values (of the target copies with `target`)."""
        return self.q_twins(observations, latents, target).min(dim=0).values

    def td_target(self, rewards: torch.Tensor, next_observations: torch.Tensor, dones: torch.Tensor) -> torch.Tensor:
        """[B] sum_k discount^k r_k + discount^K (1 - done) V(s'), with V held fixed."""
        with torch.no_grad():
            bootstrap = self.chunk_bootstrap * (1.0 - dones) * self.v(next_observations)
        return (rewards * self.chunk_discounts).sum(-1) + bootstrap

    def value_loss(self, observations: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Expectile regression of V(s) toward min target-Q(s, z_data)."""
        return self.value_loss_and_advantages(observations, latents)[0]

    def value_loss_and_advantages(self, observations: torch.Tensor, latents: torch.Tensor):
        """(the value loss, the advantages min target-Q(s, z_data) - V(s) [B], detached): one pass of each
        network serves both."""
        with torch.no_grad():
            target = self.q_min(observations, latents, target=True)
        values = self.v(observations)
        return expectile_loss(target - values, self.expectile), (target - values).detach()

    def q_loss(self, observations, latents, rewards, next_observations, dones, floors=None) -> torch.Tensor:
        """MSE of both Q(s, z_data) toward the TD target (rewards [B, K], dones [B]), or toward
        max(TD target, floor) with return `floors` [B]."""
        target = self.td_target(rewards, next_observations, dones)
        if floors is not None:
            target = torch.maximum(target, floors)
        return torch.mean((self.q_twins(observations, latents) - target[None]) ** 2)

    def q_loss_terms(self, observations, latents, batch: dict, return_floor: bool) -> dict[str, torch.Tensor]:
        """The models' Q terms from a training batch: `q_loss`, and with `return_floor` the loss toward
        max(TD target, the batch's `return_floors`) plus `return_floor_share`, the share of rows the floor raised."""
        args = (observations, latents, batch["rewards"], batch["next_observations"], batch["dones"])
        if not return_floor:
            return {"q_loss": self.q_loss(*args)}
        floors = batch["return_floors"]
        with torch.no_grad():
            raised = (floors > self.td_target(*args[2:])).float().mean()
        return {"q_loss": self.q_loss(*args, floors), "return_floor_share": raised}

    @torch.no_grad()
    def update_targets(self) -> None:
        torch._foreach_lerp_(list(self.q_target.parameters()), list(self.q.parameters()), self.target_update_rate)
