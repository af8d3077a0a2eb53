"""Runs a trained model as a policy over a batch of environments.

The model works on normalized observations and actions and plans an action chunk of
`action_horizon` steps; this wrapper keeps each environment's history window, normalizes what goes
in, unnormalizes what comes out, and replays a chunk before planning again.
"""

from __future__ import annotations

import numpy as np
import torch


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
        h = self.history_horizon
        self.num_envs = num_envs
        self.history_observations = torch.zeros(num_envs, h, obs_dim, device=self.device)
        self.history_actions = torch.zeros(num_envs, h, action_dim, device=self.device)
        self.history_mask = torch.zeros(num_envs, h, dtype=torch.bool, device=self.device)
        self.plan: torch.Tensor | None = None  # [N, K, A] normalized actions still to execute
        self.plan_index = 0

    @torch.no_grad()
    def act(self, raw_observations: np.ndarray) -> np.ndarray:
        """One action per environment ([N, A], in the environment's units)."""
        obs = self.obs_normalizer.normalize(torch.as_tensor(raw_observations, dtype=torch.float32, device=self.device))
        if self.plan is None or self.plan_index >= self.plan.shape[1]:
            self.plan = self.model.act(obs, self.history_observations, self.history_actions, self.history_mask)
            self.plan_index = 0
        action = self.plan[:, self.plan_index].clamp(-1.0, 1.0)  # [N, A]
        self.plan_index += 1
        self._push_history(obs, action)
        return self.action_normalizer.unnormalize(action).cpu().numpy()

    def _push_history(self, obs: torch.Tensor, action: torch.Tensor) -> None:
        self.history_observations = torch.cat([self.history_observations[:, 1:], obs[:, None]], dim=1)
        self.history_actions = torch.cat([self.history_actions[:, 1:], action[:, None]], dim=1)
        valid = torch.ones(self.num_envs, 1, dtype=torch.bool, device=self.device)
        self.history_mask = torch.cat([self.history_mask[:, 1:], valid], dim=1)
