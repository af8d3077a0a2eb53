"""PolicyRunner against a scripted model: chunk replay, the history window it keeps, normalization."""

import numpy as np
import pytest
import torch

from diffuser.datasets.normalization import GaussianNormalizer, MinMaxNormalizer
from diffuser.evaluation.policy import PolicyRunner

N_ENVS, OBS_DIM, ACTION_DIM = 2, 2, 1
HISTORY, CHUNK = 2, 3
OBS_MEAN, OBS_STD = np.array([1.0, -2.0]), np.array([2.0, 4.0])
ACTION_LOW, ACTION_HIGH = -3.0, 5.0  # raw = 4 * normalized + 1


class ScriptedModel:
    """Plans chunk value 0.4 k + 0.5 n - 0.8 c (call c, env n, chunk step k), some outside [-1, 1]; records its inputs."""

    def __init__(self):
        self.calls = []

    def act(self, observations, history_observations, history_actions, history_mask):
        c = len(self.calls)
        self.calls.append([x.clone() for x in (observations, history_observations, history_actions, history_mask)])
        k = torch.arange(CHUNK, dtype=torch.float32)
        n = torch.arange(N_ENVS, dtype=torch.float32)
        return (0.4 * k[None, :] + 0.5 * n[:, None] - 0.8 * c)[..., None]  # [N, K, A]


def planned(c, n, k):
    return 0.4 * k + 0.5 * n - 0.8 * c


def raw_observation(step):
    return np.array([[step + n, 2.0 * step - n] for n in range(N_ENVS)])


def normalized_observation(step):
    return (raw_observation(step) - OBS_MEAN) / OBS_STD


def make_runner():
    model = ScriptedModel()
    normalizers = {"observations": GaussianNormalizer(OBS_MEAN, OBS_STD),
                   "actions": MinMaxNormalizer([ACTION_LOW], [ACTION_HIGH])}
    runner = PolicyRunner(model, normalizers, history_horizon=HISTORY, action_horizon=CHUNK)
    runner.reset(N_ENVS, OBS_DIM, ACTION_DIM)
    return runner, model


def executed(step):
    """The normalized action each env executes at `step`: the plan of call step // K, clamped to [-1, 1]."""
    return np.array([[min(1.0, max(-1.0, planned(step // CHUNK, n, step % CHUNK)))] for n in range(N_ENVS)])


def test_a_chunk_is_replayed_before_the_model_plans_again():
    runner, model = make_runner()
    actions = [runner.act(raw_observation(step)) for step in range(7)]
    assert len(model.calls) == 3, "7 steps with chunks of 3 need plans at steps 0, 3 and 6"
    for step, action in enumerate(actions):
        np.testing.assert_allclose(action, 4.0 * executed(step) + 1.0, rtol=1e-6, err_msg=f"step {step}")
    assert actions[2][1, 0] == pytest.approx(ACTION_HIGH), "a planned 1.3 is clamped to the upper bound"
    assert actions[6][0, 0] == pytest.approx(ACTION_LOW), "a planned -1.6 is clamped to the lower bound"
    for call, step in zip(model.calls, (0, 3, 6), strict=True):
        np.testing.assert_allclose(call[0].numpy(), normalized_observation(step), rtol=1e-6)


def test_the_model_sees_the_last_steps_observations_and_executed_actions():
    runner, model = make_runner()
    for step in range(7):
        runner.act(raw_observation(step))
    for call, step in zip(model.calls, (0, 3, 6), strict=True):
        _, history_obs, history_actions, mask = (x.numpy() for x in call)
        assert history_obs.shape == (N_ENVS, HISTORY, OBS_DIM) and history_actions.shape == (N_ENVS, HISTORY, ACTION_DIM)
        for slot, past in enumerate(range(step - HISTORY, step)):  # oldest first
            if past < 0:
                assert not mask[:, slot].any(), f"call at step {step}: slot {slot} is before the episode start"
                assert (history_obs[:, slot] == 0).all() and (history_actions[:, slot] == 0).all()
            else:
                assert mask[:, slot].all(), f"call at step {step}: step {past} is in the window"
                np.testing.assert_allclose(history_obs[:, slot], normalized_observation(past), rtol=1e-6)
                np.testing.assert_allclose(history_actions[:, slot], executed(past), rtol=1e-6)


def test_reset_starts_a_new_episode_with_an_empty_window_and_a_new_plan():
    runner, model = make_runner()
    for step in range(4):
        runner.act(raw_observation(step))
    runner.reset(N_ENVS, OBS_DIM, ACTION_DIM)
    runner.act(raw_observation(0))
    assert len(model.calls) == 3, "the first step after a reset plans, even mid-chunk"
    _, history_obs, history_actions, mask = model.calls[-1]
    assert not mask.any() and not history_obs.any() and not history_actions.any()
