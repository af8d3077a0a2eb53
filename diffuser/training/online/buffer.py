"""The online buffer: every environment step collected so far, in the processed-dataset format.

Steps are appended as they happen; with several environments stepped together the episodes' steps
interleave, so `arrays` groups them by episode id (a stable sort keeps each episode's time order).
"""

from __future__ import annotations

import numpy as np
import torch

BUFFER_FIELDS = ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations", "episode_ids")


class OnlineBuffer:
    """The environment steps collected so far, raw (unnormalized), with an episode id per step."""

    def __init__(self, obs_dim: int, action_dim: int):
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.rows: dict[str, list] = {name: [] for name in BUFFER_FIELDS}

    def __len__(self) -> int:
        return len(self.rows["rewards"])

    def add(self, observation, action, reward, terminal, timeout, next_observation, episode_id) -> None:
        for name, value in zip(BUFFER_FIELDS, (observation, action, reward, terminal, timeout, next_observation,
                                               episode_id), strict=True):
            self.rows[name].append(value)

    def _appended(self) -> dict[str, np.ndarray]:
        """Every field as an array, in the order the steps were appended."""
        return {
            "observations": np.asarray(self.rows["observations"], dtype=np.float32).reshape(-1, self.obs_dim),
            "actions": np.asarray(self.rows["actions"], dtype=np.float32).reshape(-1, self.action_dim),
            "rewards": np.asarray(self.rows["rewards"], dtype=np.float32),
            "terminals": np.asarray(self.rows["terminals"], dtype=bool),
            "timeouts": np.asarray(self.rows["timeouts"], dtype=bool),
            "next_observations": np.asarray(self.rows["next_observations"], dtype=np.float32).reshape(-1, self.obs_dim),
            "episode_ids": np.asarray(self.rows["episode_ids"], dtype=np.int64),
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """The buffer in the processed-dataset format (docs/INTERFACES.md): steps grouped by episode, each
        episode's in time order."""
        appended = self._appended()
        episode_ids = appended.pop("episode_ids")
        order = np.argsort(episode_ids, kind="stable")
        out = {name: value[order] for name, value in appended.items()}
        episode_ids = episode_ids[order]
        boundaries = np.flatnonzero(np.diff(episode_ids)) + 1
        starts = np.concatenate([[0], boundaries]).astype(np.int64) if len(episode_ids) else np.zeros(0, np.int64)
        out["episode_starts"] = starts
        out["episode_lengths"] = np.diff(np.concatenate([starts, [len(episode_ids)]])).astype(np.int64)
        return out

    def state_dict(self) -> dict:
        return {name: torch.as_tensor(value) for name, value in self._appended().items()}

    def load_state_dict(self, state: dict) -> None:
        n = len(state["episode_ids"])
        self.rows = {name: [] for name in BUFFER_FIELDS}
        for name in BUFFER_FIELDS:
            values = state[name].numpy()
            self.rows[name] = [values[i] for i in range(n)]
