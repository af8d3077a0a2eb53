"""Runs a trained model as a policy over a batch of environments.

The model works on normalized observations and actions and plans an action chunk of
`action_horizon` steps; this wrapper keeps each environment's history window, normalizes what goes
in, unnormalizes what comes out, and replays a chunk before planning again.
"""

from __future__ import annotations

import numpy as np
import torch


class HistoryWindow:
    """The last `horizon` steps (normalized observation, action) of N environments, the trajectory
    encoder's input; `mask` is False for steps before an episode's start."""

    def __init__(self, num_envs: int, horizon: int, obs_dim: int, action_dim: int, device):
        self.observations = torch.zeros(num_envs, horizon, obs_dim, device=device)  # [N, H, obs_dim]
        self.actions = torch.zeros(num_envs, horizon, action_dim, device=device)  # [N, H, A]
        self.mask = torch.zeros(num_envs, horizon, dtype=torch.bool, device=device)  # [N, H]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.observations, self.actions, self.mask

    def push(self, observations: torch.Tensor, actions: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        """Append one step ([N, obs_dim], [N, A]) and drop the oldest, in the environments `rows` ([N] bool;
        default all); new tensors, so a caller may keep the old."""
        pushed = (torch.cat([self.observations[:, 1:], observations[:, None]], dim=1),
                  torch.cat([self.actions[:, 1:], actions[:, None]], dim=1),
                  torch.cat([self.mask[:, 1:], torch.ones_like(self.mask[:, :1])], dim=1))
        if rows is None:
            self.observations, self.actions, self.mask = pushed
            return
        self.observations, self.actions, self.mask = (
            torch.where(rows.view(-1, *(1,) * (new.dim() - 1)), new, old)
            for new, old in zip(pushed, (self.observations, self.actions, self.mask), strict=True))

    def clear(self, rows: torch.Tensor) -> None:
        """Empty the windows of the environments `rows` ([N] bool): their episodes start anew."""
        keep = ~rows
        self.observations = self.observations * keep[:, None, None]
        self.actions = self.actions * keep[:, None, None]
        self.mask = self.mask & keep[:, None]


class PolicyRunner:
    def __init__(self, model, normalizers: dict, history_horizon: int, action_horizon: int, device="cpu"):
        self.model = model
        self.obs_normalizer = normalizers["observations"]
        self.action_normalizer = normalizers["actions"]
        self.history_horizon = history_horizon
        self.action_horizon = action_horizon
        self.device = torch.device(device)
        self.num_envs = 0

    def reset(self, num_envs: int, obs_dim: int, action_dim: int) -> None:
        self.num_envs = num_envs
        self.history = HistoryWindow(num_envs, self.history_horizon, obs_dim, action_dim, self.device)
        self.plan: torch.Tensor | None = None  # [N, K, A] normalized actions still to execute
        self.plan_index = 0

    @torch.no_grad()
    def act(self, raw_observations: np.ndarray) -> np.ndarray:
        """One action per environment ([N, A], in the environment's units)."""
        obs = self.obs_normalizer.normalize(torch.as_tensor(raw_observations, dtype=torch.float32, device=self.device))
        if self.plan is None or self.plan_index >= self.plan.shape[1]:
            self.plan = self.model.act(obs, *self.history.tensors())
            self.plan_index = 0
        action = self.plan[:, self.plan_index].clamp(-1.0, 1.0)  # [N, A]
        self.plan_index += 1
        self.history.push(obs, action)
        return self.action_normalizer.unnormalize(action).cpu().numpy()
