"""Policy expansion (`offline_policy_candidates`, models.DiffusionRL online): at the first collection the EMA
policy is frozen, and from then on k of the n_action_samples candidates come from it; the critic picks among
all, and the frozen policy survives training and a checkpoint round trip."""

import pytest
import torch
from test_diffusion_rl import ACTION_DIM, OBS_DIM, act_inputs, synthetic_batch, tiny_config
from test_online_baselines import REPLAY, cell_config, make_trainer

from diffuser.config import ConfigError
from diffuser.models import DiffusionRL

ONLINE = {"online_training": True, "offline_policy_candidates": 2}  # 2 of tiny_config's 4 candidates


def frozen_model(seed: int = 0) -> DiffusionRL:
    torch.manual_seed(seed)
    model = DiffusionRL(OBS_DIM, ACTION_DIM, tiny_config(**ONLINE)).eval()
    model.freeze_offline_policy(model)
    return model


def act(model: DiffusionRL, batch: dict, seed: int = 1) -> torch.Tensor:
    return model.act(*act_inputs(batch), generator=torch.Generator().manual_seed(seed))


def prefer_candidates(model: DiffusionRL, monkeypatch, frozen: bool) -> None:
    """Make the critic rate the last (the frozen policy's) candidates of each state highest, or the first."""
    n = model.n_action_samples

    def q_min(observations, latents, target=False):
        order = torch.arange(n, dtype=torch.float32).repeat(observations.shape[0] // n)
        return order if frozen else -order

    monkeypatch.setattr(model.critic, "q_min", q_min)


def test_before_the_freeze_the_key_changes_neither_weights_nor_actions():
    torch.manual_seed(0)
    plain = DiffusionRL(OBS_DIM, ACTION_DIM, tiny_config(online_training=True)).eval()
    torch.manual_seed(0)
    expanded = DiffusionRL(OBS_DIM, ACTION_DIM, tiny_config(**ONLINE)).eval()
    mine = expanded.state_dict()
    for name, value in plain.state_dict().items():
        assert torch.equal(value, mine[name]), name
    batch = synthetic_batch(6)
    assert torch.equal(act(plain, batch), act(expanded, batch))


@pytest.mark.parametrize("frozen", [True, False])
def test_the_critic_picks_between_the_frozen_and_the_trained_policy(monkeypatch, frozen):
    model = frozen_model()
    prefer_candidates(model, monkeypatch, frozen)
    batch = synthetic_batch(6)
    before = act(model, batch)
    model.denoiser.input.weight.data.add_(1.0)
    model.vae.decoder[0].weight.data.add_(1.0)
    after = act(model, batch)
    # the frozen policy's chunks do not depend on the trained weights; the trained policy's do
    assert torch.equal(before, after) is frozen
    assert after.shape == (6, model.vae.action_horizon, ACTION_DIM) and after.abs().max() <= 1.0


@pytest.mark.parametrize("q_prefers_frozen", [True, False])
def test_the_value_gate_lets_the_trained_policy_act_where_v_reaches_it_and_the_frozen_one_elsewhere(
        monkeypatch, q_prefers_frozen):
    torch.manual_seed(0)
    model = DiffusionRL(OBS_DIM, ACTION_DIM, tiny_config(**ONLINE, offline_policy_value_gate=1.5)).eval()
    model.freeze_offline_policy(model)
    prefer_candidates(model, monkeypatch, q_prefers_frozen)  # Q's preference must not matter under the gate
    values = torch.tensor([3.0, 1.5, 0.0, -2.0, 1.49, 7.0])  # V(s) of the 6 states: at or above 1.5 -> trained
    monkeypatch.setattr(model.critic, "v", lambda observations: values.view(-1, 1))
    batch = synthetic_batch(6)
    before = act(model, batch)
    model.denoiser.input.weight.data.add_(1.0)
    model.vae.decoder[0].weight.data.add_(1.0)
    changed = (act(model, batch) != before).flatten(1).any(dim=1)
    # only the trained policy's chunks depend on the trained weights
    assert changed.tolist() == (values >= 1.5).tolist()


def test_collection_ignores_the_value_gate_and_lets_q_choose(monkeypatch):
    torch.manual_seed(0)
    model = DiffusionRL(OBS_DIM, ACTION_DIM, tiny_config(**ONLINE, offline_policy_value_gate=1.5)).eval()
    model.freeze_offline_policy(model)
    prefer_candidates(model, monkeypatch, frozen=False)  # Q prefers the trained policy's candidates
    monkeypatch.setattr(model.critic, "v", lambda observations: torch.full((observations.shape[0], 1), -5.0))
    batch = synthetic_batch(4)

    def explore():
        return model.explore(*act_inputs(batch), generator=torch.Generator().manual_seed(1))

    explored, acted = explore(), act(model, batch)  # act: V below the gate everywhere, the frozen policy acts
    model.denoiser.input.weight.data.add_(1.0)
    model.vae.decoder[0].weight.data.add_(1.0)
    assert (explore() != explored).flatten(1).any(dim=1).all()  # every state collected with the trained policy
    assert torch.equal(act(model, batch), acted)


def test_freezing_happens_once_and_the_state_round_trips():
    model = frozen_model()
    snapshot = {name: value.clone() for name, value in model.offline_policy.state_dict().items()}
    model.denoiser.input.weight.data.add_(1.0)
    model.freeze_offline_policy(model)  # a second call keeps the first copy
    for name, value in model.offline_policy.state_dict().items():
        assert torch.equal(value, snapshot[name]), name
    torch.manual_seed(5)
    restored = DiffusionRL(OBS_DIM, ACTION_DIM, tiny_config(**ONLINE)).eval()
    assert not restored._expansion_active()
    restored.load_state_dict(model.state_dict())
    assert restored._expansion_active()
    batch = synthetic_batch(4)
    assert torch.equal(act(model, batch), act(restored, batch))


def test_the_trainer_freezes_the_ema_policy_at_the_first_collection_and_training_leaves_it(tmp_path,
                                                                                            tiny_maze_data):
    config = cell_config(tmp_path, diffusion="models.DiffusionRL", trainer=REPLAY, offline_policy_candidates=1)
    trainer = make_trainer(config, tiny_maze_data, tmp_path / "run")
    assert not trainer.model._expansion_active()
    ema_denoiser = {name: value.clone() for name, value in trainer.ema.denoiser.state_dict().items()}
    trainer.collect(7)
    assert trainer.model._expansion_active() and trainer.ema._expansion_active()
    for model in (trainer.model, trainer.ema):
        for name, value in model.offline_policy["denoiser"].state_dict().items():
            assert torch.equal(value, ema_denoiser[name]), name
    for _ in range(5):
        trainer.train_step()
    assert not torch.equal(trainer.model.denoiser.input.weight, ema_denoiser["input.weight"])
    for model in (trainer.model, trainer.ema):
        for name, value in model.offline_policy["denoiser"].state_dict().items():
            assert torch.equal(value, ema_denoiser[name]), name


@pytest.mark.parametrize(("overrides", "message"), [
    ({"offline_policy_candidates": 2}, r"must be below n_action_samples \(2\)"),
    ({"offline_policy_candidates": 4, "online_training": False}, "which this cell never does"),
    ({"offline_policy_candidates": 4, "diffusion": "models.IQL"}, "which this cell never does"),
    ({"offline_policy_candidates": 4, "sampling_temperature": 0.0}, "needs the critic to choose"),
    ({"offline_policy_value_gate": 10.0}, r"needs offline_policy_candidates above 0"),
])
def test_impossible_expansion_is_refused_before_training(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        cell_config(tmp_path, **{"diffusion": "models.DiffusionRL", "trainer": None, **overrides})


def test_a_resumed_run_keeps_the_frozen_policy_of_the_first_collection(tmp_path, tiny_maze_data):
    from diffuser.training.checkpoints import latest_checkpoint, load_checkpoint

    config = cell_config(tmp_path, diffusion="models.DiffusionRL", trainer=REPLAY, offline_policy_candidates=1)
    trainer = make_trainer(config, tiny_maze_data, tmp_path / "run")
    trainer.train()  # two collections; the copy is taken at the first
    frozen = trainer.ema.offline_policy.state_dict()
    assert not torch.equal(frozen["denoiser.input.weight"], trainer.ema.denoiser.input.weight)
    restored = make_trainer(config, tiny_maze_data, tmp_path / "other")
    restored.load_state_dict(load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints")))
    restored.collect(7)  # a collection after the resume must not take a new copy
    for model in (restored.model, restored.ema):
        assert model._expansion_active()
        for name, value in model.offline_policy.state_dict().items():
            assert torch.equal(value, frozen[name]), name
