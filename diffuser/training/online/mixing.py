"""Offline-loss batches once online data exists: the online buffer as a sequence dataset, and batches
that take a fixed share of their samples from it."""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffuser.datasets.sequence import VAESequenceDataset, sequence_settings
from diffuser.training.online.buffer import OnlineBuffer


def online_sequence_dataset(buffer: OnlineBuffer, offline: VAESequenceDataset, config: dict,
                            device, relabel: Callable[[dict], dict] | None = None) -> VAESequenceDataset | None:
    """The buffer's steps as a dataset of the offline one's kind, normalized with the offline statistics
    (its metadata) and with its reward floor (sequence.py), with `relabel`'s copies of its episodes added when given (relabel.py); None until some
    episode in it is at least one action chunk long."""
    arrays = buffer.arrays() if len(buffer) else None
    if arrays is None or arrays["episode_lengths"].max() < config["action_horizon"]:
        return None
    if relabel is not None:
        arrays = relabel(arrays)
    return VAESequenceDataset((arrays, offline.metadata), **sequence_settings(config),
                              reward_floor=offline.reward_floor, device=device)


def online_row_count(online: VAESequenceDataset | None, online_fraction: float, batch_size: int) -> int:
    """How many rows of a mixed batch come from the online data: round(online_fraction * batch_size) once
    it exists, else none."""
    return round(online_fraction * batch_size) if online is not None else 0


def mixed_batch(offline: VAESequenceDataset, online: VAESequenceDataset | None, online_fraction: float,
                batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """`batch_size` samples, `online_row_count` of them (the last rows) from `online`, the rest from
    `offline`."""
    n_online = online_row_count(online, online_fraction, batch_size)
    batch = offline.sample(batch_size - n_online, generator)
    if n_online == 0:
        return batch
    extra = online.sample(n_online, generator)
    return {key: torch.cat([batch[key], extra[key]]) for key in batch}


def imitation_mask(batch: dict[str, torch.Tensor], rule: str, n_online: int) -> torch.Tensor:
    """[B] which rows of a `mixed_batch` (its last `n_online` from the online data) the policy's imitation
    learns from under `online_imitation: rule` (offline or rewarded; the schema says what each means)."""
    rewards = batch["rewards"]
    mask = torch.ones(rewards.shape[0], device=rewards.device)
    online = slice(rewards.shape[0] - n_online, None)
    mask[online] = (rewards[online].sum(1) > 0).float() if rule == "rewarded" else 0.0
    return mask
