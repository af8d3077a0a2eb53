import numpy as np
import pytest
import torch

from diffuser.datasets.episodes import compute_stats, save_processed
from diffuser.datasets.sequence import VAESequenceDataset, discounted_return_floors, discounted_returns_to_go

OBS_DIM, ACTION_DIM = 3, 2
# Varied lengths with length-1 episodes at the start, in the middle and next to each other.
EPISODE_LENGTHS = [1, 6, 2, 1, 1, 9, 3, 1, 12, 4, 5]
# How each episode ends: a terminal, a time-limit cut, or (the last one) cut by the end of the data.
ENDINGS = [
    "terminal",
    "timeout",
    "terminal",
    "timeout",
    "terminal",
    "terminal",
    "timeout",
    "terminal",
    "timeout",
    "terminal",
    "partial",
]


def synthetic(lengths=EPISODE_LENGTHS, endings=ENDINGS, seed=0) -> tuple[dict, dict]:
    """(arrays, metadata) in the processed format, with random values."""
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths, dtype=np.int64)
    n_steps = int(lengths.sum())
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    last_steps = starts + lengths - 1
    terminals = np.zeros(n_steps, dtype=bool)
    timeouts = np.zeros(n_steps, dtype=bool)
    for last, ending in zip(last_steps, endings, strict=True):
        terminals[last] = ending == "terminal"
        timeouts[last] = ending == "timeout"
    arrays = {
        "observations": rng.normal(2.0, 3.0, size=(n_steps, OBS_DIM)).astype(np.float32),
        "actions": rng.uniform(-1.0, 1.0, size=(n_steps, ACTION_DIM)).astype(np.float32),
        "rewards": rng.normal(size=n_steps).astype(np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
        "next_observations": rng.normal(2.0, 3.0, size=(n_steps, OBS_DIM)).astype(np.float32),
        "episode_starts": starts,
        "episode_lengths": lengths,
    }
    metadata = {
        "name": "synthetic",
        "obs_dim": OBS_DIM,
        "action_dim": ACTION_DIM,
        "action_low": [-1.0] * ACTION_DIM,
        "action_high": [1.0] * ACTION_DIM,
        "n_episodes": len(lengths),
        "n_steps": n_steps,
        "stats": compute_stats(arrays),
    }
    return arrays, metadata


def episode_bounds(arrays) -> list[tuple[int, int]]:
    """(first step, one past the last step) of every episode."""
    return [
        (int(s), int(s + n)) for s, n in zip(arrays["episode_starts"], arrays["episode_lengths"], strict=True)
    ]


def reference_item(arrays, dataset, t: int) -> dict:
    """One item built step by step from the raw arrays: the brute-force specification of a batch row."""
    H, K = dataset.history_horizon, dataset.action_horizon
    start, stop = next((s, e) for s, e in episode_bounds(arrays) if s <= t < e)
    obs_norm = dataset.normalizers["observations"].normalize
    act_norm = dataset.normalizers["actions"].normalize
    history_obs = np.zeros((H, OBS_DIM), dtype=np.float32)
    history_act = np.zeros((H, ACTION_DIM), dtype=np.float32)
    mask = np.zeros(H, dtype=bool)
    for j in range(H):
        u = t - H + j
        if u >= start:
            history_obs[j] = obs_norm(arrays["observations"][u])
            history_act[j] = act_norm(arrays["actions"][u])
            mask[j] = True
    scaled = dataset.reward_scale * arrays["rewards"].astype(np.float64)
    returns = sum(dataset.discount ** (u - t) * scaled[u] for u in range(t, stop))
    # cut short (a timeout, or the data's end): the worst rest, every later step at the lowest reward (or 0)
    rest = 0.0 if arrays["terminals"][stop - 1] else (
        dataset.discount ** (stop - t) * min(scaled.min(), 0.0) / (1 - dataset.discount))
    return {
        "history_observations": history_obs,
        "history_actions": history_act,
        "history_mask": mask,
        "observations": obs_norm(arrays["observations"][t]),
        "actions": np.stack([act_norm(arrays["actions"][t + k]) for k in range(K)]),
        "rewards": np.array([scaled[t + k] for k in range(K)], dtype=np.float32),
        "next_observations": obs_norm(arrays["next_observations"][t + K - 1]),
        "dones": float(any(arrays["terminals"][t + k] for k in range(K))),
        "returns_to_go": returns,
        "return_floors": returns + rest,
    }


def make_dataset(source=None, **kwargs) -> VAESequenceDataset:
    options = {"history_horizon": 3, "action_horizon": 2, "discount": 0.9, "reward_scale": 2.0, "normalizer": "gaussian"} | kwargs
    return VAESequenceDataset(source if source is not None else synthetic(), **options)


@pytest.mark.parametrize("history_horizon,action_horizon", [(1, 1), (4, 1), (3, 4), (7, 3)])
@pytest.mark.parametrize("normalizer", ["gaussian", "minmax"])
def test_every_key_matches_a_per_item_reference(history_horizon, action_horizon, normalizer):
    arrays, metadata = synthetic()
    dataset = make_dataset(
        (arrays, metadata),
        history_horizon=history_horizon,
        action_horizon=action_horizon,
        normalizer=normalizer,
    )
    positions = torch.randint(len(dataset), (64,), generator=torch.Generator().manual_seed(1))
    batch = dataset.get(positions)
    for row, position in enumerate(positions.tolist()):
        expected = reference_item(arrays, dataset, int(dataset.valid_steps[position]))
        for key, value in expected.items():
            np.testing.assert_allclose(batch[key][row].numpy(), value, rtol=1e-5, atol=1e-6, err_msg=key)


def test_batch_has_the_contract_shapes_and_dtypes():
    dataset = make_dataset(history_horizon=4, action_horizon=3)
    batch = dataset.sample(5, torch.Generator().manual_seed(0))
    shapes = {
        "history_observations": (5, 4, OBS_DIM),
        "history_actions": (5, 4, ACTION_DIM),
        "history_mask": (5, 4),
        "observations": (5, OBS_DIM),
        "actions": (5, 3, ACTION_DIM),
        "rewards": (5, 3),
        "next_observations": (5, OBS_DIM),
        "dones": (5,),
        "returns_to_go": (5,),
        "return_floors": (5,),
    }
    assert {key: tuple(value.shape) for key, value in batch.items()} == shapes
    assert batch["history_mask"].dtype == torch.bool
    assert all(value.dtype == torch.float32 for key, value in batch.items() if key != "history_mask")
    assert (dataset.obs_dim, dataset.action_dim) == (OBS_DIM, ACTION_DIM)


@pytest.mark.parametrize("action_horizon", [1, 2, 4])
def test_valid_steps_are_those_whose_chunk_stays_in_the_episode(action_horizon):
    arrays, metadata = synthetic()
    dataset = make_dataset((arrays, metadata), action_horizon=action_horizon)
    expected = [t for s, e in episode_bounds(arrays) for t in range(s, e) if t + action_horizon - 1 < e]
    assert dataset.valid_steps.tolist() == expected
    assert len(dataset) == len(expected)
    # The last valid step of each long-enough episode ends its chunk exactly on the episode's last step.
    valid = set(expected)
    for s, e in episode_bounds(arrays):
        if e - s >= action_horizon:
            assert e - action_horizon in valid
            assert not valid.intersection(range(e - action_horizon + 1, e))


def test_history_mask_opens_one_step_at_a_time_from_the_episode_start():
    H = 4
    arrays, metadata = synthetic()
    dataset = make_dataset((arrays, metadata), history_horizon=H, action_horizon=1)
    position_of = {t: i for i, t in enumerate(dataset.valid_steps.tolist())}
    for start, stop in episode_bounds(arrays):
        for offset in range(min(stop - start, H + 2)):
            batch = dataset.get(torch.tensor([position_of[start + offset]]))
            inside = min(offset, H)
            expected = [False] * (H - inside) + [True] * inside
            assert batch["history_mask"][0].tolist() == expected
            masked = ~batch["history_mask"][0]
            assert (batch["history_observations"][0][masked] == 0).all()
            assert (batch["history_actions"][0][masked] == 0).all()


def test_dones_only_where_a_terminal_lies_in_the_chunk():
    arrays, metadata = synthetic()
    dataset = make_dataset((arrays, metadata), action_horizon=2)
    batch = dataset.get(torch.arange(len(dataset)))
    terminal_last_steps = {
        e - 1 for (s, e), ending in zip(episode_bounds(arrays), ENDINGS, strict=True) if ending == "terminal"
    }
    chunk_ends = (dataset.valid_steps + 1).tolist()
    expected = [float(end in terminal_last_steps) for end in chunk_ends]
    assert batch["dones"].tolist() == expected
    assert 0 < sum(expected) < len(expected)


def test_returns_to_go_match_a_direct_sum_per_episode():
    rng = np.random.default_rng(3)
    lengths = np.array([1, 700, 1, 1, 37, 2, 300])
    rewards = rng.normal(size=lengths.sum())
    got = discounted_returns_to_go(rewards, lengths, 0.97)
    expected = []
    for start, stop in zip(np.cumsum(lengths) - lengths, np.cumsum(lengths), strict=True):
        for t in range(start, stop):
            expected.append(sum(0.97 ** (u - t) * rewards[u] for u in range(t, stop)))
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_return_floors_bound_every_continuation_of_a_cut_episode_from_below():
    """A timeout-cut episode, continued in any way whose rewards stay at or above the floor, returns at least
    its floor; the tightest continuation (all steps at the floor) returns exactly it; an episode ending in a
    terminal has the exact return as floor. A given reward_floor (the offline data's) replaces the data's own."""
    rng = np.random.default_rng(4)
    rewards = -rng.uniform(0.0, 1.0, size=30)  # one 20-step cut episode, one 10-step one ending in a terminal
    terminals = np.zeros(30, dtype=bool)
    terminals[29] = True
    floors = discounted_return_floors(rewards, terminals, np.array([20, 10]), 0.9, -1.0)
    np.testing.assert_allclose(floors[20:], discounted_returns_to_go(rewards[20:], np.array([10]), 0.9))
    for _ in range(20):
        rest = -rng.uniform(0.0, 1.0, size=400)
        continued = discounted_returns_to_go(np.concatenate([rewards[:20], rest]), np.array([420]), 0.9)[:20]
        assert np.all(continued >= floors[:20] - 1e-9)
    worst = discounted_returns_to_go(np.concatenate([rewards[:20], -np.ones(400)]), np.array([420]), 0.9)[:20]
    np.testing.assert_allclose(worst, floors[:20], atol=1e-6)

    arrays, metadata = synthetic()
    own, given = make_dataset((arrays, metadata)), make_dataset((arrays, metadata), reward_floor=-50.0)
    assert own.reward_floor == pytest.approx(2.0 * arrays["rewards"].min())
    cut = ~arrays["terminals"][np.repeat(np.cumsum(EPISODE_LENGTHS) - 1, EPISODE_LENGTHS)][own.valid_steps.numpy()]
    assert torch.all(given._return_floors[cut] < own._return_floors[cut])
    assert torch.equal(given._return_floors[~cut], own._return_floors[~cut])


def test_sample_is_deterministic_for_a_generator_seed():
    dataset = make_dataset()
    first = dataset.sample(32, torch.Generator().manual_seed(7))
    again = dataset.sample(32, torch.Generator().manual_seed(7))
    other = dataset.sample(32, torch.Generator().manual_seed(8))
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first["observations"], other["observations"])


def test_a_processed_directory_gives_the_same_batches(tmp_path):
    arrays, metadata = synthetic()
    save_processed(tmp_path / "synthetic", arrays, metadata)
    from_memory = make_dataset((arrays, metadata))
    from_disk = make_dataset(tmp_path / "synthetic")
    positions = torch.arange(len(from_memory))
    expected, got = from_memory.get(positions), from_disk.get(positions)
    assert all(torch.equal(expected[key], got[key]) for key in expected)
    assert from_disk.metadata["format_version"] == 1


def test_an_action_horizon_longer_than_every_episode_is_rejected():
    with pytest.raises(ValueError, match="lower `action_horizon`"):
        make_dataset(synthetic(lengths=[1, 3, 2], endings=["terminal"] * 3), action_horizon=4)


def test_a_source_of_another_type_is_a_clear_error():
    with pytest.raises(TypeError, match=r"directory or an \(arrays, metadata\) tuple, not dict"):
        make_dataset({"arrays": {}, "metadata": {}}, history_horizon=1, action_horizon=1)
