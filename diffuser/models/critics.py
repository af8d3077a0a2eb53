"""IQL critic over latent actions: V(s), twin Q(s, z) and their target copies.

Implicit Q-learning (Kostrikov et al., 2022) never evaluates Q at latents the data does not hold:
V(s) is an upper expectile of Q(s, z_data) over the dataset's latents, which approximates the value
of the best in-distribution action, and Q bootstraps from V(s'). The latents z_data are the VAE
encoder's means of the dataset's action chunks, detached by the caller, so the critic cannot move
the VAE. A chunk of K actions is one decision: its reward is the discounted sum over the chunk and
it bootstraps with discount^K.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from diffuser.models.denoisers import mlp


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """Asymmetric squared error: weight `expectile` where diff > 0 (target above prediction), 1 - expectile below."""
    weight = torch.where(diff > 0, expectile, 1.0 - expectile)
    return torch.mean(weight * diff**2)


class TwinQ(nn.Module):
    """Two independent Q(s, z) networks; their minimum counters overestimation."""

    def __init__(self, obs_dim: int, latent_dim: int, hidden_dim: int):
        super().__init__()
        self.q1 = mlp(obs_dim + latent_dim, hidden_dim, 1, activation=nn.ReLU)
        self.q2 = mlp(obs_dim + latent_dim, hidden_dim, 1, activation=nn.ReLU)

    def forward(self, observations: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """[B, obs_dim], [B, latent_dim] -> [2, B]."""
        x = torch.cat([observations, latents], dim=-1)
        return torch.stack([self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)])


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
    ):
        super().__init__()
        self.expectile = expectile
        self.target_update_rate = target_update_rate
        self.chunk_bootstrap = discount**action_horizon
        self.value = mlp(obs_dim, hidden_dim, 1, activation=nn.ReLU)
        self.q = TwinQ(obs_dim, latent_dim, hidden_dim)
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.register_buffer("chunk_discounts", discount ** torch.arange(action_horizon, dtype=torch.float32),
                             persistent=False)

    def v(self, observations: torch.Tensor) -> torch.Tensor:
        """[B, obs_dim] -> [B]."""
        return self.value(observations).squeeze(-1)

    def q_min(self, observations: torch.Tensor, latents: torch.Tensor, target: bool = False) -> torch.Tensor:
        """[B] min of the twin Q values (of the target copies with `target`)."""
        return (self.q_target if target else self.q)(observations, latents).min(dim=0).values

    def td_target(self, rewards: torch.Tensor, next_observations: torch.Tensor, dones: torch.Tensor) -> torch.Tensor:
        """[B] sum_k discount^k r_k + discount^K (1 - done) V(s'), with V held fixed."""
        with torch.no_grad():
            bootstrap = self.chunk_bootstrap * (1.0 - dones) * self.v(next_observations)
        return (rewards * self.chunk_discounts).sum(-1) + bootstrap

    def value_loss(self, observations: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Expectile regression of V(s) toward min target-Q(s, z_data)."""
        with torch.no_grad():
            target = self.q_min(observations, latents, target=True)
        return expectile_loss(target - self.v(observations), self.expectile)

    def q_loss(self, observations, latents, rewards, next_observations, dones) -> torch.Tensor:
        """MSE of both Q(s, z_data) toward the TD target (rewards [B, K], dones [B])."""
        target = self.td_target(rewards, next_observations, dones)
        return torch.mean((self.q(observations, latents) - target[None]) ** 2)

    @torch.no_grad()
    def update_targets(self) -> None:
        for target, online in zip(self.q_target.parameters(), self.q.parameters(), strict=True):
            target.lerp_(online, self.target_update_rate)
