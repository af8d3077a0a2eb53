"""Networks for the latent diffusion: the shared MLP builder and the latent denoiser f(z^j, j, cond).

The denoiser knows nothing about noise schedules; `diffusion.GaussianDiffusion` calls it as
`denoiser(x [B, D], timesteps [B] long, cond [B, C]) -> prediction [B, D]` and decides what the
prediction means (the noise, the clean latent or v: its `prediction`), so either side can be swapped.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# Width of the sinusoidal timestep features before the embedding MLP; 100-odd timesteps need few.
TIME_FEATURES = 32
# Longest period of the sinusoidal features, as in the Transformer's position encoding.
MAX_PERIOD = 10_000.0


def mlp(in_dim: int, hidden_dim: int, out_dim: int, n_hidden_layers: int = 2, activation=nn.SiLU) -> nn.Sequential:
    """`n_hidden_layers` Linear+activation layers of width `hidden_dim`, then a Linear to `out_dim`."""
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(n_hidden_layers):
        layers += [nn.Linear(width, hidden_dim), activation()]
        width = hidden_dim
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


def sinusoidal_features(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """[B] timesteps -> [B, dim] sin/cos features at geometrically spaced frequencies."""
    half = dim // 2
    frequencies = torch.exp(
        -math.log(MAX_PERIOD) * torch.arange(half, device=timesteps.device, dtype=torch.float32) / half
    )
    angles = timesteps.float()[:, None] * frequencies[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ResidualBlock(nn.Module):
    """Pre-norm residual MLP block; the (time, condition) embedding shifts its hidden layer."""

    def __init__(self, hidden_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_dim)
        self.fc_in = nn.Linear(hidden_dim, hidden_dim)
        self.embedding_shift = nn.Linear(hidden_dim, hidden_dim)
        self.fc_out = nn.Linear(hidden_dim, hidden_dim)
        self.activation = nn.SiLU()

    def forward(self, h: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        inner = self.activation(self.fc_in(self.norm(h)) + self.embedding_shift(embedding))
        return h + self.fc_out(inner)


class LatentDenoiser(nn.Module):
    """Maps a noisy latent z^j, the timestep j and a condition vector to the diffusion's prediction target."""

    def __init__(self, latent_dim: int, cond_dim: int, hidden_dim: int, n_blocks: int):
        super().__init__()
        self.latent_dim = latent_dim
        self.embedding = nn.Sequential(
            nn.Linear(TIME_FEATURES + cond_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, hidden_dim)
        )
        self.input = nn.Linear(latent_dim + hidden_dim, hidden_dim)
        self.blocks = nn.ModuleList(ResidualBlock(hidden_dim) for _ in range(n_blocks))
        self.output = nn.Sequential(nn.LayerNorm(hidden_dim), nn.Linear(hidden_dim, latent_dim))
        # Start by predicting zero: the first steps then fit the target's scale instead of undoing a random map.
        nn.init.zeros_(self.output[-1].weight)
        nn.init.zeros_(self.output[-1].bias)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        embedding = self.embedding(torch.cat([sinusoidal_features(timesteps, TIME_FEATURES), cond], dim=-1))
        h = self.input(torch.cat([x, embedding], dim=-1))
        for block in self.blocks:
            h = block(h, embedding)
        return self.output(h)
