"""TrajectoryEncoder: the recent (state, action) history -> a context vector c_t.

With `use_actions` False (config `history_actions: false`) only the past states are read: a policy
that sees its own past actions can learn to copy them (the "copycat" problem of imitation from
histories) instead of reacting to the state.

Steps before the episode's start are masked (`history_mask` False) and must not change c_t, whatever
values they hold: the GRU keeps its hidden state through a masked step, and the transformer reads a
summary token that never attends to masked steps. A window with no valid step gives the encoding of
an empty history, the same for every such window.

The recurrent or attention width is `latent_dim` itself (the config's trajectory_latent_dim), not the
MLPs' hidden_dim: at 256 the GRU alone cost more than the denoiser per training step.
"""

from __future__ import annotations

import torch
from torch import nn

ENCODER_KINDS = ("gru", "transformer")
TRANSFORMER_LAYERS = 2
TRANSFORMER_HEADS = 4


class TrajectoryEncoder(nn.Module):
    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        history_horizon: int,
        latent_dim: int,
        kind: str,
        use_actions: bool,
    ):
        super().__init__()
        self.use_actions = use_actions
        if kind not in ENCODER_KINDS:
            raise ValueError(f"Unknown encoder_type {kind!r}; use one of {ENCODER_KINDS}.")
        self.kind = kind
        self.history_horizon = history_horizon
        width = latent_dim
        self.step_embedding = nn.Linear(obs_dim + (action_dim if use_actions else 0), width)
        if kind == "gru":
            self.cell = nn.GRUCell(width, width)
        else:
            heads = TRANSFORMER_HEADS if width % TRANSFORMER_HEADS == 0 else 1
            layer = nn.TransformerEncoderLayer(
                width, heads, dim_feedforward=2 * width, dropout=0.0, batch_first=True, norm_first=True
            )
            self.transformer = nn.TransformerEncoder(layer, TRANSFORMER_LAYERS, enable_nested_tensor=False)
            self.summary_token = nn.Parameter(torch.zeros(1, 1, width))
            self.positions = nn.Parameter(0.02 * torch.randn(1, history_horizon + 1, width))
        self.output = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, latent_dim))

    def forward(
        self, history_observations: torch.Tensor, history_actions: torch.Tensor, history_mask: torch.Tensor
    ) -> torch.Tensor:
        """history_observations [B, H, obs_dim], history_actions [B, H, A], history_mask [B, H] bool -> [B, latent_dim]."""
        inputs = [history_observations, history_actions] if self.use_actions else [history_observations]
        steps = self.step_embedding(torch.cat(inputs, dim=-1))  # [B, H, width]
        mask = history_mask.bool()
        if self.kind == "gru":
            summary = self._gru(steps, mask)
        else:
            summary = self._transformer(steps, mask)
        return self.output(summary)

    def _gru(self, steps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = steps.new_zeros(steps.shape[0], steps.shape[-1])
        for i in range(steps.shape[1]):
            h = torch.where(mask[:, i, None], self.cell(steps[:, i], h), h)
        return h

    def _transformer(self, steps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch = steps.shape[0]
        tokens = torch.cat([self.summary_token.expand(batch, -1, -1), steps], dim=1) + self.positions
        ignored = torch.cat([mask.new_zeros(batch, 1), ~mask], dim=1)  # True = not attended to
        return self.transformer(tokens, src_key_padding_mask=ignored)[:, 0]
