"""The random streams of a run (diffuser/runtime/seeding.py): distinct across seeds and streams."""

from __future__ import annotations

import torch

from diffuser.runtime.seeding import BATCH_STREAM, COLLECTION_STREAM, VALUE_NET_STREAM, generator, stream_seed

STREAMS = (BATCH_STREAM, COLLECTION_STREAM, VALUE_NET_STREAM)


def test_no_stream_of_one_seed_is_a_stream_of_another():
    seeds = {(seed, stream): stream_seed(seed, stream) for seed in range(50) for stream in STREAMS}
    assert len(set(seeds.values())) == len(seeds)
    # the draws too: seed s's collection noise is not seed s + 1's batch order
    first = torch.rand(4, generator=generator(3, COLLECTION_STREAM))
    assert not torch.equal(first, torch.rand(4, generator=generator(4, BATCH_STREAM)))


def test_the_batch_stream_is_the_run_seed_and_every_stream_repeats():
    assert generator(7, BATCH_STREAM).initial_seed() == 7  # offline cells draw the batches they always drew
    for stream in STREAMS:
        assert 0 <= stream_seed(1000, stream) < 2**63
        a = torch.rand(3, generator=generator(1000, stream))
        assert torch.equal(a, torch.rand(3, generator=generator(1000, stream)))
