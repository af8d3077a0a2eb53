"""VAESequenceDataset: batches of (history window, state, action chunk) drawn from a processed dataset.

Everything a batch needs is laid out once at construction, so a batch is a handful of fancy-index
gathers and no Python loop over its items:
- observations and actions are normalized once into contiguous tensors on `device`, with one zero row
  in front; a history step before its episode's start is pointed at that row, which makes it zero;
- the valid steps t (those with t + action_horizon - 1 inside their episode), each one's episode
  start, its `dones` flag, its discounted return-to-go and that return's lower bound (below) are
  precomputed per valid step.

The return floor of step t is a lower bound on the discounted return of taking the data's actions from
t on: the return-to-go where the episode ends in a terminal (it is then the exact return), and where it
was cut short (a timeout, or an online episode still running) the return-to-go plus the worst possible
rest, discount^(steps left) * reward_floor / (1 - discount), reward_floor being the lowest per-step reward
there can be (by default the lowest in the data, or 0 if that is above 0). `critic_return_floor` holds the critic's TD target
above it (critics.py).
The batch contract (keys, shapes, meaning) is in docs/INTERFACES.md.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from diffuser.datasets.normalization import make_normalizers


def discounted_returns_to_go(rewards: np.ndarray, episode_lengths: np.ndarray, discount: float) -> np.ndarray:
    """sum_{u=t}^{end} discount^(u-t) * rewards[u] for every step t, `end` the last step of t's episode.

    The backward recurrence R_t = r_t + c_t R_{t+1} (c_t = discount, or 0 at an episode's last step)
    is evaluated for all episodes at once as a doubling scan: after the pass with stride d, R_t holds
    the sum over t .. t+d-1 (cut at the episode end) and C_t the product of c over that span, so
    log2(N) vectorised passes replace N sequential steps.
    """
    returns = np.asarray(rewards, dtype=np.float64).copy()
    n_steps = len(returns)
    carry = np.full(n_steps, float(discount))
    carry[np.cumsum(episode_lengths) - 1] = 0.0
    stride = 1
    while stride < n_steps:
        returns[:-stride] = returns[:-stride] + carry[:-stride] * returns[stride:]
        carry[:-stride] = carry[:-stride] * carry[stride:]
        stride *= 2
    return returns


def discounted_return_floors(rewards: np.ndarray, terminals: np.ndarray, episode_lengths: np.ndarray,
                             discount: float, reward_floor: float) -> np.ndarray:
    """For every step t, a lower bound on the discounted return from t (module docstring): the
    return-to-go, plus discount^(steps from t to one past the episode's end) * reward_floor / (1 - discount)
    where the episode does not end in a terminal (-inf there at discount 1, where the rest is unbounded)."""
    returns = discounted_returns_to_go(rewards, episode_lengths, discount)
    ends = np.repeat(np.cumsum(episode_lengths) - 1, episode_lengths)  # each step's episode's last step
    cut_short = ~np.asarray(terminals, dtype=bool)[ends]
    steps_left = ends - np.arange(len(ends)) + 1
    if discount < 1:
        rest = discount**steps_left * reward_floor / (1.0 - discount)
    else:
        rest = np.full(len(ends), -np.inf if reward_floor < 0 else 0.0)
    return returns + np.where(cut_short, rest, 0.0)


def _read_source(source) -> tuple[dict, dict]:
    if isinstance(source, (str, os.PathLike)):
        from diffuser.datasets.episodes import load_processed

        return load_processed(source)
    if isinstance(source, tuple) and len(source) == 2:
        return source
    raise TypeError(
        f"VAESequenceDataset takes a processed dataset directory or an (arrays, metadata) tuple, not {type(source).__name__}."
    )


# The cell config keys a sequence dataset is built from (its keyword arguments besides `device`).
SEQUENCE_KEYS = ("history_horizon", "action_horizon", "discount", "reward_scale", "normalizer")


def sequence_settings(config) -> dict:
    """The keyword arguments of a sequence dataset, read from a cell config."""
    return {key: config[key] for key in SEQUENCE_KEYS}


class VAESequenceDataset:
    def __init__(
        self,
        source,
        *,
        history_horizon: int,
        action_horizon: int,
        discount: float,
        reward_scale: float,
        normalizer: str,
        reward_floor: float | None = None,
        device="cpu",
    ):
        """`reward_floor`: the lowest reward_scale * r any step can have, for the return floors (module
        docstring); None: the lowest in this data (0 if that is above 0). A dataset of online steps passes its offline one's."""
        if history_horizon < 0 or action_horizon < 1:
            raise ValueError(
                f"history_horizon must be >= 0 and action_horizon >= 1, got {history_horizon} and {action_horizon}."
            )
        arrays, metadata = _read_source(source)
        self.metadata = metadata
        self.history_horizon = history_horizon
        self.action_horizon = action_horizon
        self.discount = discount
        self.reward_scale = reward_scale
        self.device = torch.device(device)
        self.normalizers = make_normalizers(metadata, normalizer)
        self.obs_dim = arrays["observations"].shape[1]
        self.action_dim = arrays["actions"].shape[1]

        starts = np.asarray(arrays["episode_starts"], dtype=np.int64)
        lengths = np.asarray(arrays["episode_lengths"], dtype=np.int64)
        step_start = np.repeat(starts, lengths)
        step_stop = step_start + np.repeat(lengths, lengths)  # one past the episode's last step
        valid_steps = np.flatnonzero(np.arange(len(step_start)) + action_horizon <= step_stop)
        if len(valid_steps) == 0:
            raise ValueError(
                f"No episode of dataset '{metadata.get('name', '?')}' has {action_horizon} steps "
                f"(its longest has {lengths.max(initial=0)}); lower `action_horizon`."
            )
        terminals_before = np.concatenate([[0], np.cumsum(arrays["terminals"])])
        dones = terminals_before[valid_steps + action_horizon] > terminals_before[valid_steps]
        rewards = reward_scale * np.asarray(arrays["rewards"], dtype=np.float32)
        returns = discounted_returns_to_go(rewards, lengths, discount)[valid_steps]
        self.reward_floor = float(rewards.min(initial=0.0)) if reward_floor is None else float(reward_floor)
        floors = discounted_return_floors(rewards, arrays["terminals"], lengths, discount, self.reward_floor)

        obs_normalizer, action_normalizer = self.normalizers["observations"], self.normalizers["actions"]
        self._observations = self._padded(
            obs_normalizer.normalize(arrays["observations"])
        )  # [N + 1, obs_dim]
        self._actions = self._padded(action_normalizer.normalize(arrays["actions"]))  # [N + 1, action_dim]
        self._next_observations = self._tensor(obs_normalizer.normalize(arrays["next_observations"]))
        self._rewards = self._tensor(rewards)
        self.valid_steps = torch.as_tensor(valid_steps, device=self.device)
        self._valid_episode_starts = torch.as_tensor(step_start[valid_steps], device=self.device)
        self._dones = self._tensor(dones)
        self._returns_to_go = self._tensor(returns)
        self._return_floors = self._tensor(floors[valid_steps])
        self._history_offsets = torch.arange(-history_horizon, 0, device=self.device)
        self._chunk_offsets = torch.arange(action_horizon, device=self.device)

    def _tensor(self, values: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(values, dtype=np.float32), device=self.device)

    def _padded(self, values: np.ndarray) -> torch.Tensor:
        """Row 0 zeros, row t + 1 the value of step t."""
        return self._tensor(np.concatenate([np.zeros_like(values[:1]), values]))

    def __len__(self) -> int:
        return len(self.valid_steps)

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """A batch of valid steps drawn uniformly with replacement."""
        positions = torch.randint(len(self), (batch_size,), generator=generator, device=generator.device)
        return self.get(positions)

    def get(self, positions: torch.Tensor) -> dict[str, torch.Tensor]:
        """The batch for positions in [0, len(self)) of the valid steps (keys and shapes: docs/INTERFACES.md)."""
        positions = torch.as_tensor(positions, dtype=torch.long, device=self.device)
        steps = self.valid_steps[positions]  # [B]
        history = steps[:, None] + self._history_offsets  # [B, H]
        history_mask = history >= self._valid_episode_starts[positions][:, None]
        history_rows = torch.where(history_mask, history + 1, 0)
        chunk = steps[:, None] + self._chunk_offsets  # [B, K]
        return {
            "history_observations": self._observations[history_rows],
            "history_actions": self._actions[history_rows],
            "history_mask": history_mask,
            "observations": self._observations[steps + 1],
            "actions": self._actions[chunk + 1],
            "rewards": self._rewards[chunk],
            "next_observations": self._next_observations[steps + self.action_horizon - 1],
            "dones": self._dones[positions],
            "returns_to_go": self._returns_to_go[positions],
            "return_floors": self._return_floors[positions],
        }
