"""Batches per second of VAESequenceDataset.sample against a per-item Dataset + DataLoader.

The baseline is the usual way of writing a sequence dataset: `__getitem__` slices one item out of
normalized numpy arrays with Python code and a DataLoader (batch 256, shuffled, no workers) collates
them. Both run on the same synthetic dataset of 100k steps, H = 4 and K = 4 (and K = 1); before timing,
the benchmark checks that both build identical items for the same indices.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_sampler.py [--quick]

`--quick` (for `make bench` and the tests): 20k steps, 2 repeats, a fifth of the batches.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from diffuser.datasets.episodes import compute_stats
from diffuser.datasets.sequence import VAESequenceDataset

N_STEPS = 100_000
QUICK_N_STEPS = 20_000
OBS_DIM, ACTION_DIM = 6, 2
MAX_EPISODE_LENGTH = 600
HISTORY_HORIZON = 4
ACTION_HORIZONS = (4, 1)
BATCH_SIZE = 256
REPEATS = 5
QUICK_REPEATS = 2
QUICK_BATCH_FRACTION = 5  # --quick times a fifth of the batches
LOADER_BATCHES = 100  # per repeat, within one epoch (~390 batches)
SAMPLER_BATCHES = 2000
DISCOUNT = 0.99


def synthetic_dataset(n_steps: int = N_STEPS, seed: int = 0) -> tuple[dict, dict]:
    """(arrays, metadata) in the processed format: episodes of 1 .. MAX_EPISODE_LENGTH steps, half terminal."""
    rng = np.random.default_rng(seed)
    lengths = []
    while sum(lengths) < n_steps:
        lengths.append(int(rng.integers(1, MAX_EPISODE_LENGTH + 1)))
    lengths[-1] -= sum(lengths) - n_steps
    lengths = np.array(lengths, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    last_steps = starts + lengths - 1
    ends_in_terminal = rng.random(len(lengths)) < 0.5
    terminals = np.zeros(n_steps, dtype=bool)
    timeouts = np.zeros(n_steps, dtype=bool)
    terminals[last_steps[ends_in_terminal]] = True
    timeouts[last_steps[~ends_in_terminal]] = True
    arrays = {
        "observations": rng.normal(size=(n_steps, OBS_DIM)).astype(np.float32),
        "actions": rng.uniform(-1.0, 1.0, size=(n_steps, ACTION_DIM)).astype(np.float32),
        "rewards": rng.normal(size=n_steps).astype(np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
        "next_observations": rng.normal(size=(n_steps, OBS_DIM)).astype(np.float32),
        "episode_starts": starts,
        "episode_lengths": lengths,
    }
    metadata = {
        "name": "bench-synthetic",
        "obs_dim": OBS_DIM,
        "action_dim": ACTION_DIM,
        "action_low": [-1.0] * ACTION_DIM,
        "action_high": [1.0] * ACTION_DIM,
        "stats": compute_stats(arrays),
    }
    return arrays, metadata


class PerItemSequenceDataset(Dataset):
    """The baseline: item i is valid step i, sliced out of the normalized arrays in Python."""

    def __init__(self, arrays: dict, normalizers: dict, history_horizon: int, action_horizon: int):
        self.history_horizon = history_horizon
        self.action_horizon = action_horizon
        self.observations = normalizers["observations"].normalize(arrays["observations"])
        self.actions = normalizers["actions"].normalize(arrays["actions"])
        self.next_observations = normalizers["observations"].normalize(arrays["next_observations"])
        self.rewards = arrays["rewards"]
        self.terminals = arrays["terminals"]
        self.reward_floor = min(float(self.rewards.min()), 0.0)  # the sampler's default floor
        self.items = []  # (step, episode start, episode stop) of each valid step
        for start, length in zip(arrays["episode_starts"], arrays["episode_lengths"], strict=True):
            stop = int(start + length)
            self.items.extend((t, int(start), stop) for t in range(int(start), stop - action_horizon + 1))
        self.discounts = DISCOUNT ** np.arange(MAX_EPISODE_LENGTH, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        t, start, stop = self.items[index]
        H, K = self.history_horizon, self.action_horizon
        first = max(t - H, start)
        pad = H - (t - first)
        history_obs = np.zeros((H, OBS_DIM), dtype=np.float32)
        history_act = np.zeros((H, ACTION_DIM), dtype=np.float32)
        history_obs[pad:] = self.observations[first:t]
        history_act[pad:] = self.actions[first:t]
        mask = np.arange(H) >= pad
        rewards = self.rewards[t:stop].astype(np.float64)
        returns = rewards @ self.discounts[: len(rewards)]
        # cut short: the worst rest, every step after the episode at the lowest reward
        rest = 0.0 if self.terminals[stop - 1] else DISCOUNT ** (stop - t) * self.reward_floor / (1 - DISCOUNT)
        return {
            "history_observations": history_obs,
            "history_actions": history_act,
            "history_mask": mask,
            "observations": self.observations[t],
            "actions": self.actions[t : t + K],
            "rewards": self.rewards[t : t + K],
            "next_observations": self.next_observations[t + K - 1],
            "dones": np.float32(self.terminals[t : t + K].any()),
            "returns_to_go": np.float32(returns),
            "return_floors": np.float32(returns + rest),
        }


def check_identical_items(sampler: VAESequenceDataset, baseline: PerItemSequenceDataset) -> None:
    positions = torch.randint(len(sampler), (2048,), generator=torch.Generator().manual_seed(0))
    fast = sampler.get(positions)
    slow = torch.utils.data.default_collate([baseline[i] for i in positions.tolist()])
    for key, value in fast.items():
        if key in ("returns_to_go", "return_floors"):  # summed in a different order: equal up to float32 rounding
            torch.testing.assert_close(slow[key], value, rtol=1e-5, atol=1e-5)
        elif not torch.equal(slow[key], value):
            raise AssertionError(f"`{key}` differs between the sampler and the per-item dataset")


def batches_per_second(draw_batch, n_batches: int) -> float:
    begin = time.perf_counter()
    for _ in range(n_batches):
        draw_batch()
    return n_batches / (time.perf_counter() - begin)


def measure(arrays: dict, metadata: dict, action_horizon: int, repeats: int = REPEATS,
            loader_batches: int = LOADER_BATCHES, sampler_batches: int = SAMPLER_BATCHES) -> tuple[float, float]:
    sampler = VAESequenceDataset(
        (arrays, metadata), history_horizon=HISTORY_HORIZON, action_horizon=action_horizon, discount=DISCOUNT,
        reward_scale=1.0, normalizer="gaussian",
    )
    baseline = PerItemSequenceDataset(arrays, sampler.normalizers, HISTORY_HORIZON, action_horizon)
    assert len(baseline) == len(sampler)
    check_identical_items(sampler, baseline)

    generator = torch.Generator().manual_seed(0)
    loader = DataLoader(
        baseline,
        batch_size=BATCH_SIZE,
        shuffle=True,
        num_workers=0,
        generator=torch.Generator().manual_seed(0),
    )
    loader_rates, sampler_rates = [], []
    for _ in range(repeats):
        loader_rates.append(batches_per_second(iter(loader).__next__, loader_batches))
        sampler_rates.append(
            batches_per_second(lambda: sampler.sample(BATCH_SIZE, generator), sampler_batches)
        )
    return statistics.median(loader_rates), statistics.median(sampler_rates)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller dataset, fewer repeats and batches")
    args = parser.parse_args(argv)
    n_steps, repeats, fraction = (QUICK_N_STEPS, QUICK_REPEATS, QUICK_BATCH_FRACTION) if args.quick else (N_STEPS, REPEATS, 1)
    torch.set_num_threads(1)
    arrays, metadata = synthetic_dataset(n_steps)
    print(
        f"{n_steps} steps, {len(arrays['episode_lengths'])} episodes, batch {BATCH_SIZE}, "
        f"history_horizon {HISTORY_HORIZON}, median of {repeats} repeats, 1 torch thread"
    )
    print(f"{'K':>3} {'DataLoader batches/s':>22} {'sample() batches/s':>20} {'ratio':>8}")
    rows = []
    for action_horizon in ACTION_HORIZONS:
        loader_rate, sampler_rate = measure(arrays, metadata, action_horizon, repeats,
                                            LOADER_BATCHES // fraction, SAMPLER_BATCHES // fraction)
        print(
            f"{action_horizon:>3} {loader_rate:>22.1f} {sampler_rate:>20.1f} {sampler_rate / loader_rate:>7.1f}x"
        )
        rows.append({"action_horizon": action_horizon, "loader_batches_per_second": loader_rate,
                     "sampler_batches_per_second": sampler_rate, "ratio": sampler_rate / loader_rate})
    print("items identical for the same indices: yes")
    return rows


if __name__ == "__main__":
    main()
