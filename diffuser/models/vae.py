"""ActionVAE: a state-conditioned latent space for action chunks, q(z | s, a_{t:t+k}) and p(a_{t:t+k} | s, z).

How the loss is scaled, and why: `vae_recon_loss` is the MSE per action element and `vae_kl_loss`
the KL divergence in nats per action element (summed over latent dimensions, divided by
action_horizon * action_dim). With both per element, `kl_weight` means the same for every chunk
length and action dimension, and a rate-distortion argument says what it means: at the optimum the
training reconstruction MSE (decoding a sampled z) settles near kl_weight / 2 per element, and
decoding the mean does better. So the latent carries the actions only while kl_weight / 2 is well
below the variance of the actions given the state; above that the decoder learns to ignore z. Maze
data with N(0, 0.5^2) action noise has a variance near 0.25, hence the collapse seen at 0.5 and the
default of 0.05.

The encoder's mean is bounded softly to (-latent_bound, latent_bound). The latent diffusion trains
on these means, so its sampler can clamp predicted latents to the same box (`clip_denoised`)
knowing that no data lies outside it; the KL term keeps the means near unit scale, the scale the
diffusion's unit Gaussian noise assumes.
"""

from __future__ import annotations

import torch
from torch import nn

from diffuser.models.denoisers import mlp

# A unit-scale latent rarely goes beyond 3; the bound is what the diffusion sampler clamps to.
LATENT_BOUND = 3.0
# Keeps exp(logvar) finite and the KL's -logvar term from running off while a dimension is unused.
LOGVAR_RANGE = (-10.0, 4.0)


class ActionVAE(nn.Module):
    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        action_horizon: int,
        latent_dim: int,
        hidden_dim: int,
        kl_weight: float,
        latent_bound: float = LATENT_BOUND,
    ):
        super().__init__()
        self.action_dim = action_dim
        self.action_horizon = action_horizon
        self.latent_dim = latent_dim
        self.kl_weight = kl_weight
        self.latent_bound = latent_bound
        chunk_dim = action_horizon * action_dim
        self.encoder = mlp(obs_dim + chunk_dim, hidden_dim, 2 * latent_dim)
        self.decoder = mlp(obs_dim + latent_dim, hidden_dim, chunk_dim)

    def encode(self, observations: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """observations [B, obs_dim], actions [B, K, A] -> (mu, logvar), each [B, latent_dim]."""
        raw_mu, logvar = self.encoder(torch.cat([observations, actions.flatten(1)], dim=-1)).chunk(2, dim=-1)
        mu = self.latent_bound * torch.tanh(raw_mu / self.latent_bound)
        return mu, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, observations: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """observations [B, obs_dim], latents [B, latent_dim] -> actions [B, K, A] in [-1, 1]."""
        out = torch.tanh(self.decoder(torch.cat([observations, latents], dim=-1)))
        return out.view(-1, self.action_horizon, self.action_dim)

    def loss_and_latent(self, observations: torch.Tensor, actions: torch.Tensor):
        """(total, terms, mu): `loss` plus the encoder means, so a caller needs one encoder pass."""
        mu, logvar = self.encode(observations, actions)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        recon = torch.mean((self.decode(observations, z) - actions) ** 2)
        kl_per_sample = 0.5 * (mu**2 + logvar.exp() - logvar - 1).sum(-1)
        kl = kl_per_sample.mean() / (self.action_horizon * self.action_dim)
        total = recon + self.kl_weight * kl
        return total, {"vae_loss": total, "vae_recon_loss": recon, "vae_kl_loss": kl}, mu

    def loss(self, observations: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total, terms, _ = self.loss_and_latent(observations, actions)
        return total, terms
