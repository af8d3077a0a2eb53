"""The batched evaluator against an environment whose returns are known by hand.

`CountdownEnv` (registered here) starts an episode from reset seed s with observation [s, 0]; the
t-th step (t = 1, 2, ...) pays action * t and the episode terminates after 1 + s % 5 steps, while
the time limit (max_episode_steps 4) cuts the longer ones. The scripted policy plays 0.1 * s, so
an episode of length L pays 0.1 * s * L (L + 1) / 2. Seeds 10..14 give:

    seed  length  terminated  return
    10    1       yes         1.0 * 1  = 1.0
    11    2       yes         1.1 * 3  = 3.3
    12    3       yes         1.2 * 6  = 7.2
    13    4       yes (and the time limit) 1.3 * 10 = 13.0
    14    4       no, cut     1.4 * 10 = 14.0

Episodes that end early keep being stepped (auto-reset, new seeds, large rewards) while the others
run on, so an evaluator that adds rewards after an episode's end or ignores `terminated` gets other
returns, as does one that resets every episode with the same seed.
"""

import gymnasium as gym
import numpy as np
import pytest

from diffuser.envs.scores import reference_scores
from diffuser.evaluation.evaluator import MADEvaluator

ENV_ID = "DiffuserTestCountdown-v0"
SEEDS = [10, 11, 12, 13, 14]
RETURNS = [1.0, 3.3, 7.2, 13.0, 14.0]
LENGTHS = [1, 2, 3, 4, 4]
TERMINATED = [True, True, True, True, False]
REF_MIN, REF_MAX = 2.0, 12.0
# 100 * (R - 2) / (12 - 2)
NORMALIZED = [-10.0, 13.0, 52.0, 110.0, 120.0]


class CountdownEnv(gym.Env):
    observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float64)
    action_space = gym.spaces.Box(-100.0, 100.0, shape=(1,), dtype=np.float64)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        # an auto-reset (no seed) starts far from the evaluated seeds, so its rewards would show
        self.start = float(seed) if seed is not None else float(self.np_random.integers(100, 200))
        self.t = 0
        return np.array([self.start, 0.0]), {}

    def step(self, action):
        self.t += 1
        reward = float(action[0]) * self.t
        terminated = self.t >= 1 + int(self.start) % 5
        return np.array([self.start, float(self.t)]), reward, terminated, False, {"success": terminated}


if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point=CountdownEnv)

METADATA = {"env_id": ENV_ID, "max_episode_steps": 4, "obs_dim": 2, "action_dim": 1,
            "ref_min_score": REF_MIN, "ref_max_score": REF_MAX}


class ScriptedPolicy:
    """Plays 0.1 * s; records every batch of observations it is shown."""

    def __init__(self):
        self.seen = []

    def reset(self, num_envs, obs_dim, action_dim):
        self.num_envs = num_envs
        self.seen = []

    def act(self, observations):
        assert observations.shape == (self.num_envs, 2)
        self.seen.append(np.array(observations))
        return 0.1 * observations[:, :1]


def evaluate(num_eval, seed):
    evaluator = MADEvaluator(METADATA, num_eval=num_eval, seed=seed)
    policy = ScriptedPolicy()
    try:
        return evaluator.evaluate(policy), policy
    finally:
        evaluator.close()


def test_batched_evaluation_returns_the_hand_computed_returns():
    result, policy = evaluate(len(SEEDS), seed=SEEDS[0])
    np.testing.assert_allclose(result["returns"], RETURNS)
    assert result["episode_lengths"] == LENGTHS
    assert result["successes"] == TERMINATED
    assert result["mean_return"] == pytest.approx(np.mean(RETURNS))
    assert result["success_rate"] == pytest.approx(0.8)
    assert result["num_episodes"] == 5 and result["seed"] == SEEDS[0]
    # every episode starts from its own reset seed, seed + i
    np.testing.assert_array_equal(policy.seen[0][:, 0], SEEDS)
    assert len(policy.seen) == max(LENGTHS), "the loop stops when the longest episode ends"


def test_one_episode_at_a_time_gives_the_same_returns_as_the_batch():
    batched, _ = evaluate(len(SEEDS), seed=SEEDS[0])
    single = [evaluate(1, seed=seed)[0] for seed in SEEDS]
    assert [r["returns"][0] for r in single] == pytest.approx(batched["returns"])
    assert [r["episode_lengths"][0] for r in single] == batched["episode_lengths"] == LENGTHS
    assert [r["normalized_scores"][0] for r in single] == pytest.approx(batched["normalized_scores"])


def test_normalized_score_uses_ref_min_as_0_and_ref_max_as_100():
    result, _ = evaluate(len(SEEDS), seed=SEEDS[0])
    np.testing.assert_allclose(result["normalized_scores"], NORMALIZED)
    assert result["mean_normalized_score"] == pytest.approx(np.mean(NORMALIZED))
    assert result["std_normalized_score"] == pytest.approx(np.std(NORMALIZED))


def test_an_evaluator_reused_for_a_second_evaluation_starts_the_same_episodes():
    evaluator = MADEvaluator(METADATA, num_eval=len(SEEDS), seed=SEEDS[0])
    try:
        first = evaluator.evaluate(ScriptedPolicy())
        second = evaluator.evaluate(ScriptedPolicy())
    finally:
        evaluator.close()
    np.testing.assert_allclose(second["returns"], first["returns"])
    np.testing.assert_allclose(first["returns"], RETURNS)


@pytest.mark.parametrize(("name", "ref_min", "ref_max"), [
    # D4RL's d4rl/infos.py REF_MIN_SCORE / REF_MAX_SCORE
    ("maze2d-umaze-v1", 23.85, 161.86), ("maze2d-medium-v1", 13.13, 277.39), ("maze2d-large-v1", 6.7, 273.99),
    ("hopper-medium-v2", -20.272305, 3234.3), ("halfcheetah-expert-v2", -280.178953, 12135.0),
    ("walker2d-random-v2", 1.629008, 4592.3), ("gen-hopper-random", -20.272305, 3234.3),
    # measured by diffuser.envs.compute_reference_scores (README table)
    ("gen-maze2d-umaze", 21.52, 243.20), ("gen-maze2d-medium", 11.60, 495.72), ("gen-maze2d-large", 9.00, 632.34),
])
def test_reference_scores_are_the_published_and_measured_values(name, ref_min, ref_max):
    assert reference_scores(name)[:2] == (ref_min, ref_max)


BLINK_ID = "DiffuserTestBlink-v0"
# reset seed -> the steps (1-based) at which the blinking task counts as solved, over 6 steps
BLINK_SUCCESS_STEPS = {0: (2, 3, 5), 1: (), 2: (6,), 3: (1, 2, 3, 4, 5, 6)}


class BlinkEnv(gym.Env):
    """Six steps; `success` holds at the steps BLINK_SUCCESS_STEPS lists for the reset seed."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float64)
    action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float64)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.solved_at = BLINK_SUCCESS_STEPS.get(seed, ())
        self.t = 0
        return np.zeros(2), {}

    def step(self, action):
        self.t += 1
        return np.zeros(2), 0.0, False, self.t >= 6, {"success": self.t in self.solved_at}


if BLINK_ID not in gym.registry:
    gym.register(BLINK_ID, entry_point=BlinkEnv)


def test_first_success_step_and_hold_share_count_the_steps_after_the_first_success():
    metadata = {"env_id": BLINK_ID, "max_episode_steps": 6, "obs_dim": 2, "action_dim": 1,
                "ref_min_score": 0.0, "ref_max_score": 1.0}
    evaluator = MADEvaluator(metadata, num_eval=4, seed=0)
    policy = ScriptedPolicy()
    try:
        result = evaluator.evaluate(policy)
    finally:
        evaluator.close()
    assert result["successes"] == [True, False, True, True]
    assert result["first_success_steps"] == [2, None, 6, 1]
    # seed 0: solved at 3 of the 5 steps 2..6; seed 2: 1 of 1 (step 6); seed 3: 6 of 6; seed 1 never solved
    assert result["mean_first_success_step"] == pytest.approx((2 + 6 + 1) / 3)
    assert result["mean_success_hold_share"] == pytest.approx((3 / 5 + 1 + 1) / 3)


def test_hold_share_is_absent_when_no_episode_succeeds():
    result, _ = evaluate(1, seed=SEEDS[-1])  # seed 14: cut by the time limit, never a success
    assert result["first_success_steps"] == [None]
    assert result["mean_first_success_step"] is None and result["mean_success_hold_share"] is None
