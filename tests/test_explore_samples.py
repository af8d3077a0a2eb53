"""`explore_action_samples`: how many candidates models.DiffusionRL's replay-mode collection (`explore`) picks
among by Q; evaluation (`act`) keeps n_action_samples."""

import pytest
import torch
from test_diffusion_rl import ACTION_DIM, OBS_DIM, act_inputs, synthetic_batch, tiny_config
from test_online_baselines import REPLAY, cell_config

from diffuser.config import ConfigError
from diffuser.models import DiffusionRL


def model_with(explore_action_samples):
    torch.manual_seed(0)
    return DiffusionRL(OBS_DIM, ACTION_DIM, tiny_config(explore_action_samples=explore_action_samples)).eval()


def count_scored(model, monkeypatch) -> list[int]:
    """Record how many candidates per state the critic scores in each call."""
    scored, q_min = [], model.critic.q_min

    def counting(observations, latents, target=False):
        scored.append(observations.shape[0])
        return q_min(observations, latents, target)

    monkeypatch.setattr(model.critic, "q_min", counting)
    return scored


def test_one_sample_explores_with_the_diffusions_own_draw_while_evaluation_asks_the_critic(monkeypatch):
    model, batch = model_with(1), synthetic_batch(8)
    scored = count_scored(model, monkeypatch)
    explored = model.explore(*act_inputs(batch), generator=torch.Generator().manual_seed(3))
    assert scored == []
    cond = model.policy_condition(*act_inputs(batch))
    own = model.decode_latents(batch["observations"],
                               model._draw(model._chain_denoiser, cond, 1, model.clip, torch.Generator().manual_seed(3)))
    torch.testing.assert_close(explored, own)
    model.act(*act_inputs(batch), generator=torch.Generator().manual_seed(3))
    assert scored == [8 * model.n_action_samples]


@pytest.mark.parametrize(("samples", "scored_per_state"), [(None, 4), (3, 3)])
def test_collection_scores_the_set_number_of_candidates(monkeypatch, samples, scored_per_state):
    model, batch = model_with(samples), synthetic_batch(8)
    scored = count_scored(model, monkeypatch)
    model.explore(*act_inputs(batch), generator=torch.Generator().manual_seed(3))
    assert scored == [8 * scored_per_state]


@pytest.mark.parametrize(("overrides", "message"), [
    ({"diffusion": "models.IQL"}, "does not use; set explore_action_samples: null"),
    ({"diffusion": "models.DiffusionRL", "trainer": None}, "does not use; set explore_action_samples: null"),
    ({"diffusion": "models.DiffusionRL", "offline_policy_candidates": 4}, "set one of them"),
])
def test_the_key_is_refused_where_collection_would_not_read_it(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        cell_config(tmp_path, **{"trainer": REPLAY, "online_training": True, "explore_action_samples": 1,
                                 **overrides})
