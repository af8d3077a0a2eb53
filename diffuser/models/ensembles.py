"""Ensembles of same-shaped MLPs as one module: stacked weights, one batched matmul per layer for all members.

An ensemble of M networks (twin Q, a Q ensemble) run one by one costs M times the kernels; with the
members' weights stacked ([M, in, out] per layer) each layer is one `torch.baddbmm` over all of them,
the same function with 1/M of the launches. Every member is initialised as `nn.Linear` (and
`nn.LayerNorm`) would initialise it, independently.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class EnsembleMLP(nn.Module):
    """`n_members` MLPs: `n_hidden_layers` x (Linear, activation[, LayerNorm]), then a Linear to `out_dim`."""

    def __init__(self, n_members: int, in_dim: int, hidden_dim: int, out_dim: int, n_hidden_layers: int,
                 activation: Callable[[torch.Tensor], torch.Tensor], layer_norm: bool):
        super().__init__()
        self.n_members = n_members
        self.activation = activation
        widths = [in_dim] + [hidden_dim] * n_hidden_layers + [out_dim]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
            bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default initialisation
            self.weights.append(nn.Parameter(torch.empty(n_members, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(n_members, 1, fan_out).uniform_(-bound, bound)))
        self.norm_weights = nn.ParameterList()
        self.norm_biases = nn.ParameterList()
        if layer_norm:
            for _ in range(n_hidden_layers):
                self.norm_weights.append(nn.Parameter(torch.ones(n_members, 1, hidden_dim)))
                self.norm_biases.append(nn.Parameter(torch.zeros(n_members, 1, hidden_dim)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in_dim] (the same input for every member) -> [n_members, B, out_dim]."""
        h = x.expand(self.n_members, *x.shape)  # [M, B, in], no copy
        last = len(self.weights) - 1
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.baddbmm(bias, h, weight)
            if i < last:
                h = self.activation(h)
                if len(self.norm_weights):
                    h = F.layer_norm(h, h.shape[-1:]) * self.norm_weights[i] + self.norm_biases[i]
        return h
