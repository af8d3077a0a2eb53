"""Every random stream of a run, seeded here and nowhere else, so a seed means the same everywhere.

The streams of one training run with seed s:
- the torch global RNG (weight initialisation, the noise inside the losses): `seed_global(s)`;
- the batch sampler: `generator(s, BATCH_STREAM)`, seeded with s itself;
- online collection (the policy's sampling noise): `generator(s, COLLECTION_STREAM)`, its own stream
  so collecting never shifts which batches are drawn;
- the online PPO value network's initial weights: the global RNG seeded with
  `stream_seed(s, VALUE_NET_STREAM)` inside `isolated_rng`, so building it leaves the training stream where
  it was and an online cell's offline phase repeats its offline twin's exactly;
- the online episodes' resets: `online_reset_seed(s, i)` for the i-th episode;
- evaluation: episode i resets with `evaluation_reset_seeds(s, n)[i]`, and the policy's sampling
  noise comes from `isolated_rng(s)`, a fork of the global RNG that leaves the training stream
  where it was (exact resume) and gives every evaluation the same noise.
Generated datasets draw their action noise from `numpy_generator(dataset_seed)` and reset their
environment with the same seed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

BATCH_STREAM = 0
COLLECTION_STREAM = 1
VALUE_NET_STREAM = 2
# Online episode i of a run with seed s resets with s * ONLINE_EPISODE_STRIDE + i: a prime stride
# keeps the episodes of runs with nearby seeds apart.
ONLINE_EPISODE_STRIDE = 1_000_003


def seed_global(seed: int) -> None:
    torch.manual_seed(seed)


def stream_seed(seed: int, stream: int) -> int:
    """The seed of one stream of a run with `seed`. The batch stream is the run's seed itself (every cell
    draws the batches it drew before streams were mixed); the others mix (seed, stream) through numpy's
    SeedSequence, so no stream of one seed is a stream of another (with seed + stream, seed s's collection
    noise was seed s + 1's batch order, and the cells of a sweep were not independent)."""
    if stream == BATCH_STREAM:
        return seed
    return int(np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)[0] >> 1)


def generator(seed: int, stream: int = BATCH_STREAM) -> torch.Generator:
    """A CPU torch generator for one stream of a run."""
    return torch.Generator(device="cpu").manual_seed(stream_seed(seed, stream))


def gaussian_noise(shape: tuple[int, ...], generator: torch.Generator | None, device) -> torch.Tensor:
    """Standard normal noise of `shape` on `device`, drawn where `generator` lives (a run's streams are CPU
    generators; torch refuses a CPU generator for a CUDA draw) and moved; the global RNG without one."""
    if generator is None:
        return torch.randn(shape, device=device)
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def numpy_generator(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


@contextmanager
def isolated_rng(seed: int) -> Iterator[None]:
    """The torch global RNG seeded with `seed` inside the block and restored after it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def evaluation_reset_seeds(seed: int, num_episodes: int) -> list[int]:
    return [seed + i for i in range(num_episodes)]


def online_reset_seed(seed: int, episode: int) -> int:
    return seed * ONLINE_EPISODE_STRIDE + episode
