"""DiffusionPolicy: DiffusionRL without the VAE, the diffusion directly on action chunks.

The ablation that says what the VAE buys: the same TrajectoryEncoder, LatentDenoiser, GaussianDiffusion,
IQL critic, advantage-weighted diffusion loss and best-of-`n_action_samples` selection by min-Q as
DiffusionRL (so every one of its settings means the same here), but the diffused variable is the
flattened action chunk [K*A] in [-1, 1] itself. Choosing among behaviour-policy samples by an IQL
critic is IDQL's policy extraction (Hansen-Estruch et al., "IDQL: Implicit Q-Learning as an
Actor-Critic Method with Diffusion Policies", 2023). There is no VAE to pre-train (the registry's
MODELS_WITH_VAE leaves it out), and the `vae_*` settings are not read.

Loss terms: `loss`, `diffusion_loss`, `value_loss`, `q_loss` (with the critic) and
`advantage_weight_ess` (with `advantage_weight_beta` > 0).
"""

from __future__ import annotations

import torch
from torch import nn

from diffuser.models.diffusion_rl import DiffusionRL, DiffusionRLConfig

# Actions are scaled to [-1, 1] by the dataset; the sampler clamps its predicted chunk to this box.
ACTION_BOUND = 1.0


class ActionChunkCodec(nn.Module):
    """Stands where DiffusionRL has its ActionVAE: an action chunk is its own latent, flattened."""

    latent_bound = ACTION_BOUND

    def __init__(self, action_horizon: int, action_dim: int):
        super().__init__()
        self.action_horizon = action_horizon
        self.action_dim = action_dim
        self.latent_dim = action_horizon * action_dim

    def encode(self, observations: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """actions [B, K, A] -> (the chunk [B, K*A], log-variance 0 of no noise), ActionVAE.encode's shape."""
        flat = actions.flatten(1)
        return flat, torch.zeros_like(flat)

    def decode(self, observations: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """[B, K*A] -> action chunks [B, K, A] in [-1, 1]."""
        return latents.clamp(-ACTION_BOUND, ACTION_BOUND).view(-1, self.action_horizon, self.action_dim)

    def loss_and_latent(self, observations: torch.Tensor, actions: torch.Tensor):
        """(no loss, no terms, the chunk) in ActionVAE.loss_and_latent's shape: nothing here learns."""
        return actions.new_zeros(()), {}, actions.flatten(1)


class DiffusionPolicy(DiffusionRL):
    @staticmethod
    def build_vae(obs_dim: int, action_dim: int, config: DiffusionRLConfig | dict) -> ActionChunkCodec:
        """The identity codec in the VAE's place (DiffusionRL builds its denoiser and critic on its latent_dim)."""
        return ActionChunkCodec(DiffusionRLConfig.view(config).action_horizon, action_dim)
