"""`critic_return_floor`: models.DiffusionRL and models.IQL hold their critic's Q target at or above the
batch's return floors (the learning itself: tests/test_critics.py; the floors: tests/test_sequence_dataset.py);
`critic_initial_value` and `critic_max_value`: they start their critic there and bound it (the learning: tests/
test_critics.py); each key is refused where no IQL critic would read it."""

import pytest
import torch
from test_diffusion_rl import ACTION_DIM, OBS_DIM, synthetic_batch, tiny_config
from test_online_baselines import REPLAY, cell_config, make_trainer

from diffuser.config import ConfigError
from diffuser.models import IQL, DiffusionRL


def q_loss_and_terms(model_class, floors: float | None, **overrides):
    torch.manual_seed(0)
    model = model_class(OBS_DIM, ACTION_DIM, tiny_config(**overrides))
    batch = synthetic_batch()
    if floors is not None:
        batch["return_floors"] = torch.full((len(batch["dones"]),), floors)
    torch.manual_seed(123)
    return model.loss(batch)[1]


@pytest.mark.parametrize("model_class", [DiffusionRL, IQL])
def test_floors_above_every_td_target_raise_every_target(model_class):
    plain = q_loss_and_terms(model_class, None)
    assert "return_floor_share" not in plain
    floored = q_loss_and_terms(model_class, 1e3, critic_return_floor=True)
    assert floored["return_floor_share"].item() == 1.0
    # every target is 1e3: the untrained Q's squared error to it, not to the TD target near 0
    assert floored["q_loss"] > 1e5 > plain["q_loss"]
    # floors below every TD target leave the loss as it was
    low = q_loss_and_terms(model_class, -1e3, critic_return_floor=True)
    assert low["return_floor_share"].item() == 0.0
    torch.testing.assert_close(low["q_loss"], plain["q_loss"])


# the critic keys, each with a value that acts and the start of the line that refuses it where no IQL critic reads it
CRITIC_KEYS = [("critic_return_floor", True, "critic_return_floor raises the IQL critic's Q targets"),
               ("critic_initial_value", -100.0, "critic_initial_value sets where the IQL critic starts"),
               ("critic_max_value", 0.0, "critic_max_value holds the IQL critic's values under a ceiling")]


@pytest.mark.parametrize(("key", "value", "refusal"), CRITIC_KEYS)
@pytest.mark.parametrize("overrides", [
    {"diffusion": "models.BC"},
    {"diffusion": "models.FQL"},
    {"diffusion": "models.DiffusionRL", "use_value_function": False},
])
def test_the_key_is_refused_where_no_iql_critic_reads_it(tmp_path, overrides, key, value, refusal):
    with pytest.raises(ConfigError, match=refusal):
        cell_config(tmp_path, **{"trainer": None, "online_training": False, key: value, **overrides})


@pytest.mark.parametrize(("key", "value", "refusal"), CRITIC_KEYS)
@pytest.mark.parametrize("model", ["models.DiffusionRL", "models.IQL"])
def test_the_key_is_accepted_where_an_iql_critic_reads_it(tmp_path, model, key, value, refusal):
    config = cell_config(tmp_path, diffusion=model, trainer=None, online_training=False, **{key: value})
    assert config[key] == value


@pytest.mark.parametrize("model_class", [DiffusionRL, IQL])
def test_both_models_start_their_critic_at_the_initial_value_and_under_the_ceiling(model_class):
    torch.manual_seed(0)
    model = model_class(OBS_DIM, ACTION_DIM, tiny_config(critic_initial_value=-100.0))
    batch = synthetic_batch()
    observations = batch["observations"]
    latents = torch.zeros(len(observations), model.critic.q.weights[0].shape[1] - OBS_DIM)
    with torch.no_grad():
        for start in (model.critic.v(observations), model.critic.q(observations, latents)):
            assert (start + 100.0).abs().max() < 2.0
    # started above a ceiling of -100, both read as just under it
    model = model_class(OBS_DIM, ACTION_DIM, tiny_config(critic_initial_value=0.0, critic_max_value=-100.0))
    with torch.no_grad():
        for bounded in (model.critic.v(observations), model.critic.q_twins(observations, latents)):
            assert bounded.max() <= -100.0 and bounded.min() > -101.0


def test_online_rows_are_floored_with_the_offline_datas_lowest_reward(tmp_path, tiny_maze_data):
    """The online data's floors use the offline data's reward floor (online episodes may not yet have met
    the lowest reward), and a training step on a mixed batch reads them."""
    config = cell_config(tmp_path, diffusion="models.DiffusionRL", trainer=REPLAY, critic_return_floor=True,
                         online_sample_fraction=0.5, batch_size=16)
    trainer = make_trainer(config, tiny_maze_data, tmp_path / "run")
    trainer.dataset.reward_floor = -5.0  # as if the offline data held a reward of -5; the maze's are 0 and 1
    trainer.collect(20)
    online = trainer.online_dataset
    assert online.reward_floor == -5.0
    rows = online.get(torch.arange(len(online)))
    # 20 steps end no episode of the tiny maze in a terminal: every floor is the return-to-go plus a negative rest
    assert torch.all(rows["return_floors"] < rows["returns_to_go"])
    terms = trainer.train_step()
    assert 0.0 <= terms["return_floor_share"].item() <= 1.0 and torch.isfinite(terms["q_loss"])
