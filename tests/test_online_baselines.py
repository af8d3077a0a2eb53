"""Offline-to-online for models.IQL and models.FQL (diffuser/training/online/replay.py): the mode plans the
replay trainer, collections follow the online schedule into the buffer, batches mix the two sources,
exploration is seeded, and the buffer and collection state round-trip through a checkpoint."""

import numpy as np
import pytest
import torch
import yaml
from test_baselines import TRAIN

from diffuser import steps
from diffuser.config import ConfigError, cell_defaults, load_cell_config, load_spec
from diffuser.registry import trainer_for
from diffuser.training.checkpoints import latest_checkpoint, load_checkpoint
from diffuser.training.online.replay import OnlineReplayTrainer
from diffuser.training.online.trainer import OnlineRLTrainer

REPLAY_MODELS = ["models.IQL", "models.FQL"]
# DiffusionRL trains online by policy gradient unless its trainer is set to the replay one
EXPLORING_MODELS = [*REPLAY_MODELS, "models.DiffusionRL"]
REPLAY = "utils.OnlineReplayTrainer"
# collections after steps 30 and 50 of 60, 7 environment steps each
ONLINE = {**TRAIN, "online_training": True, "rl_warmup_steps": 30, "rl_collect_freq": 20, "rl_collect_steps": 7}


def cell_config(tmp_path, **overrides) -> dict:
    path = tmp_path / "cell.yaml"
    path.write_text(yaml.safe_dump({**ONLINE, **overrides}))
    return load_cell_config(path)


def make_trainer(config, data_dir, run_dir) -> OnlineReplayTrainer:
    torch.manual_seed(config["seed"])
    dataset = steps.load_dataset(config, data_dir)
    model = steps.build_model(config, dataset.obs_dim, dataset.action_dim)
    return trainer_for(config)(config, dataset, model, run_dir)


def spec_cells(tmp_path, constants: dict) -> list[dict]:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"constants": constants}))
    return [cell.config for cell in load_spec(spec).cells()]


@pytest.mark.parametrize("name", REPLAY_MODELS)
def test_online_iql_and_fql_train_with_the_replay_trainer(name, tmp_path):
    (config,) = spec_cells(tmp_path, {"diffusion": name, "online_training": True})
    assert trainer_for(config) is OnlineReplayTrainer
    (config,) = spec_cells(tmp_path, {"diffusion": "models.DiffusionRL", "online_training": True})
    assert trainer_for(config) is OnlineRLTrainer


@pytest.mark.parametrize(("constants", "message"), [
    ({"diffusion": "models.IQL", "trainer": "utils.OnlineRLTrainer"}, "fine-tunes a denoising chain"),
    ({"diffusion": "models.DiffusionPolicy", "trainer": "utils.OnlineReplayTrainer"},
     "only models.DiffusionRL, models.FQL, models.IQL have"),
    ({"diffusion": "models.FQL", "trainer": "utils.OnlineReplayTrainer", "online_training": False},
     "needs online_training: true"),
    ({"diffusion": "models.BC"}, "models.BC has no online mode"),
])
def test_a_trainer_that_does_not_fit_the_model_is_a_clear_error(constants, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        spec_cells(tmp_path, {"online_training": True, **constants})


def untrained_but_not_degenerate(config: dict):
    """A model on 4-d observations and 2-d actions with its weights jittered: an untrained DiffusionRL's
    denoiser ends in a zero layer, so every sample would be the same latent."""
    torch.manual_seed(0)
    model = steps.build_model(config, 4, 2)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model


@pytest.mark.parametrize("name", EXPLORING_MODELS)
def test_exploration_is_seeded_stochastic_and_inside_the_action_box(name):
    config = {**cell_defaults(), **TRAIN, "diffusion": name}
    model = untrained_but_not_degenerate(config)
    obs = torch.randn(64, 4)
    hist = (torch.zeros(64, 1, 4), torch.zeros(64, 1, 2), torch.zeros(64, 1, dtype=torch.bool))

    def explore(seed):
        return model.explore(obs, *hist, generator=torch.Generator().manual_seed(seed))

    a, b, c = explore(0), explore(0), explore(1)
    assert a.shape == (64, config["action_horizon"], 2)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert a.abs().max() <= 1.0


def test_diffusion_rl_explores_with_its_evaluated_sampler_choosing_by_q():
    """DiffusionRL's exploring policy is the one it is evaluated with: the best of n_action_samples latents by
    Q, so its chunks score higher under the critic than one sample each."""
    config = {**cell_defaults(), **TRAIN, "diffusion": "models.DiffusionRL"}
    obs = torch.randn(256, 4)
    hist = (torch.zeros(256, 1, 4), torch.zeros(256, 1, 2), torch.zeros(256, 1, dtype=torch.bool))
    model = untrained_but_not_degenerate(config)

    def mean_q(n_samples):
        model.n_action_samples = n_samples
        actions = model.explore(obs, *hist, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            return model.critic.q_min(obs, model.vae.encode(obs, actions)[0]).mean().item()

    assert mean_q(8) > mean_q(1)


@pytest.mark.parametrize("name", EXPLORING_MODELS)
def test_collections_fill_the_buffer_on_the_schedule_and_round_trip(name, tmp_path, tiny_maze_data):
    config = cell_config(tmp_path, diffusion=name, trainer=REPLAY)
    trainer = make_trainer(config, tiny_maze_data, tmp_path / "run")
    assert isinstance(trainer, OnlineReplayTrainer)
    trainer.train()
    assert trainer.env_steps == len(trainer.buffer) == 14
    rows = [line.split(",") for line in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]]
    env_steps = {int(step): float(value) for step, metric, value in rows if metric == "env_steps"}
    assert env_steps[20] == 0 and env_steps[40] == 7 and env_steps[60] == 14

    state = load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))
    restored = make_trainer(config, tiny_maze_data, tmp_path / "other")
    restored.load_state_dict(state)
    assert restored.env_steps == 14 and restored.episodes_started == trainer.episodes_started
    a, b = trainer.buffer.arrays(), restored.buffer.arrays()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert torch.equal(trainer.rl_generator.get_state(), restored.rl_generator.get_state())
    assert restored.online_dataset is not None and len(restored.online_dataset) == len(trainer.online_dataset)
    # what the policy did is in the buffer: actions in the environment's box, rewards of the maze
    assert np.abs(a["actions"]).max() <= 1.0 + 1e-6


@pytest.mark.parametrize("num_envs", [1, 3])
def test_a_collection_takes_exactly_its_steps_over_the_environments(num_envs, tmp_path, tiny_maze_data):
    config = cell_config(tmp_path, diffusion="models.IQL", rl_num_envs=num_envs)
    trainer = make_trainer(config, tiny_maze_data, tmp_path / "run")
    assert len(trainer.collector.envs) == num_envs
    trainer.collect(10)
    trainer.collect(7)
    assert trainer.env_steps == len(trainer.buffer) == 17
    # every environment acted, each episode's steps are its own (the buffer groups them by episode)
    assert trainer.episodes_started >= num_envs
    arrays = trainer.buffer.arrays()
    assert arrays["episode_lengths"].sum() == 17


def test_batches_take_the_online_share_from_the_buffer(tmp_path, tiny_maze_data):
    config = cell_config(tmp_path, diffusion="models.IQL", online_sample_fraction=0.25, batch_size=16)
    trainer = make_trainer(config, tiny_maze_data, tmp_path / "run")
    assert trainer.online_dataset is None and trainer._sample_batch()["observations"].shape[0] == 16
    trainer.collect(20)
    batch = trainer._sample_batch()
    online_obs = trainer.online_dataset.get(torch.arange(len(trainer.online_dataset)))["observations"]

    def from_online(row):
        return bool((row[None] == online_obs).all(-1).any())

    assert batch["observations"].shape[0] == 16
    assert all(from_online(row) for row in batch["observations"][-4:])


def test_resuming_twice_from_one_checkpoint_continues_identically(tmp_path, tiny_maze_data):
    config = cell_config(tmp_path, diffusion="models.FQL", save_freq=40)
    first = make_trainer(config, tiny_maze_data, tmp_path / "run")
    first.train()
    finals = []
    for attempt in ("a", "b"):
        trainer = make_trainer(config, tiny_maze_data, tmp_path / attempt)
        # read for each attempt: the optimizer keeps the loaded state's tensors and updates them in place
        trainer.load_state_dict(load_checkpoint(tmp_path / "run" / "checkpoints" / "state_00000040.pt"))
        while trainer.step < 60:
            trainer.advance()
        finals.append((trainer.model.state_dict(), trainer.buffer.arrays()))
    (model_a, buffer_a), (model_b, buffer_b) = finals
    assert len(buffer_a["actions"]) == 14  # one more collection after step 40
    for key in buffer_a:
        np.testing.assert_array_equal(buffer_a[key], buffer_b[key], err_msg=key)
    for key in model_a:
        assert torch.equal(model_a[key], model_b[key]), key
