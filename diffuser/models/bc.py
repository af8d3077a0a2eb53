"""BC: behaviour cloning baseline, an MLP from the normalized observation to an action chunk."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from diffuser.models.denoisers import mlp
from diffuser.models.settings import Settings

HIDDEN_LAYERS = 3


@dataclass(frozen=True)
class BCConfig(Settings):
    action_horizon: int
    hidden_dim: int


class BC(nn.Module):
    def __init__(self, obs_dim: int, action_dim: int, config: BCConfig | dict):
        """`config`: the typed view, or a cell config it is read from."""
        super().__init__()
        cfg = BCConfig.view(config)
        self.action_horizon = cfg.action_horizon
        self.action_dim = action_dim
        self.network = mlp(obs_dim, cfg.hidden_dim, self.action_horizon * action_dim, HIDDEN_LAYERS,
                           activation=nn.ReLU)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        """[N, obs_dim] -> [N, K, A] in [-1, 1]."""
        return torch.tanh(self.network(observations)).view(-1, self.action_horizon, self.action_dim)

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        bc_loss = torch.mean((self(batch["observations"]) - batch["actions"]) ** 2)
        return bc_loss, {"loss": bc_loss, "bc_loss": bc_loss}

    @torch.no_grad()
    def act(self, observations, history_observations, history_actions, history_mask) -> torch.Tensor:
        """Same signature as DiffusionRL.act; the history is not used."""
        return self(observations)

    def after_optimizer_step(self) -> None:
        """Nothing to update: BC has no target networks."""
