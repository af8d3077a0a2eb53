"""`online_imitation: successful`: the online buffer records which episodes succeeded, the online batches
carry imitation weights (1 for a successful episode's steps, 0 otherwise, 1 for the offline rows), and
DiffusionRL's diffusion loss ignores the zero-weight rows while its VAE and critic still learn from them."""

import numpy as np
import torch
from test_online_collection import EPISODE_STEPS, ScriptedRewards, scripted_trainer

from diffuser.training.online.buffer import OnlineBuffer
from diffuser.training.online.mixing import mixed_batch, online_sequence_dataset


class ScriptedSuccess(ScriptedRewards):
    """ScriptedRewards whose even-numbered episodes (per environment) report success at their 3rd step."""

    episodes = -1

    def reset(self, **kwargs):
        self.episodes += 1
        return super().reset(**kwargs)

    def step(self, action):
        observation, reward, terminated, truncated, info = super().step(action)
        return observation, reward, terminated, truncated, {**info, "success": self.episodes % 2 == 0 and self.t == 3}


def successful_trainer(tmp_path, data, **overrides):
    trainer = scripted_trainer(tmp_path, data, 1, online_imitation="successful", **overrides)
    trainer.collector.envs = [ScriptedSuccess(env.env) for env in trainer.collector.envs]
    return trainer


def test_the_buffer_knows_which_episodes_succeeded_once_they_end(tmp_path, tiny_maze_data):
    trainer = successful_trainer(tmp_path, tiny_maze_data)
    trainer.collect(12)  # episodes 0 (success), 1 (failure), and 2 steps of episode 2 (in progress)
    assert trainer.buffer.successful_episodes == {0}
    assert trainer.buffer.arrays(successes=True)["successes"].tolist() == [True] * 5 + [False] * 7
    trainer.collect(4)  # episode 2 ends (a success), episode 3 starts
    assert trainer.buffer.arrays(successes=True)["successes"].tolist() == \
        [True] * 5 + [False] * 5 + [True] * EPISODE_STEPS + [False]
    assert "successes" not in trainer.buffer.arrays()


def test_successes_round_trip_through_the_buffer_state(tmp_path, tiny_maze_data):
    trainer = successful_trainer(tmp_path, tiny_maze_data)
    trainer.collect(16)
    state = trainer.buffer.state_dict()
    restored = OnlineBuffer(trainer.buffer.obs_dim, trainer.buffer.action_dim)
    restored.load_state_dict(state)
    assert restored.successful_episodes == {0, 2}
    np.testing.assert_array_equal(restored.arrays(successes=True)["successes"],
                                  trainer.buffer.arrays(successes=True)["successes"])
    del state["successful_episodes"]  # a checkpoint written before successes were recorded
    restored.load_state_dict(state)
    assert restored.successful_episodes == set() and len(restored) == 16


def test_online_rows_are_weighted_by_their_episodes_success(tmp_path, tiny_maze_data):
    trainer = successful_trainer(tmp_path, tiny_maze_data)
    trainer.collect(16)
    online = online_sequence_dataset(trainer.buffer, trainer.dataset, trainer.config, "cpu")
    # chunks of 2: 4 valid steps in each 5-step episode, none in the 1-step episode 3
    weights = online.get(torch.arange(len(online)))["imitation_weights"]
    assert weights.tolist() == [1.0] * 4 + [0.0] * 4 + [1.0] * 4
    batch = mixed_batch(trainer.dataset, online, 0.25, 16, torch.Generator().manual_seed(0))
    assert batch["imitation_weights"][:12].tolist() == [1.0] * 12  # the offline rows
    assert set(batch["imitation_weights"][12:].tolist()) <= {0.0, 1.0}
    # under the default, online batches carry no weights: every row is imitated
    default = online_sequence_dataset(trainer.buffer, trainer.dataset, {**trainer.config, "online_imitation": "all"},
                                      "cpu")
    assert "imitation_weights" not in default.get(torch.arange(3))


def losses(model, batch, seed=0):
    torch.manual_seed(seed)
    return model.loss(batch)[1]


def test_the_diffusion_loss_ignores_rows_of_weight_zero(tmp_path, tiny_maze_data):
    trainer = successful_trainer(tmp_path, tiny_maze_data)
    trainer.collect(16)
    model = trainer.model
    online = online_sequence_dataset(trainer.buffer, trainer.dataset, trainer.config, "cpu")
    batch = online.get(torch.arange(len(online)))
    failed = batch["imitation_weights"] == 0
    changed = {**batch, "actions": torch.where(failed[:, None, None], -batch["actions"], batch["actions"])}
    before, after = losses(model, batch), losses(model, changed)
    assert torch.equal(before["diffusion_loss"], after["diffusion_loss"])
    assert not torch.equal(before["vae_loss"], after["vae_loss"])  # the VAE learns from every step
    assert not torch.equal(before["q_loss"], after["q_loss"])  # and so does the critic
    # the same change counts once the rows are imitated
    imitated = {key: {**b, "imitation_weights": torch.ones_like(b["imitation_weights"])} for key, b in
                (("before", batch), ("after", changed))}
    assert not torch.equal(losses(model, imitated["before"])["diffusion_loss"],
                           losses(model, imitated["after"])["diffusion_loss"])
    none = {**batch, "imitation_weights": torch.zeros_like(batch["imitation_weights"])}
    assert losses(model, none)["diffusion_loss"] == 0  # no imitated row: no diffusion loss, and no NaN
