"""`online_imitation`: which rows of a batch DiffusionRL's diffusion loss learns from (offline: the offline
rows only; rewarded: those and the online rows whose chunk earned reward); the critic and the VAE learn from
every row (diffuser/training/online/mixing.py's mask, the model's loss)."""

import pytest
import torch
from test_diffusion_rl import ACTION_DIM, OBS_DIM, fixed_noise_loss, synthetic_batch, tiny_config
from test_online_baselines import REPLAY, cell_config, make_trainer

from diffuser.config import ConfigError
from diffuser.models import DiffusionRL
from diffuser.training.online.mixing import imitation_mask


def test_masked_rows_do_not_reach_the_diffusion_loss_but_reach_the_vae():
    model = DiffusionRL(OBS_DIM, ACTION_DIM, tiny_config(advantage_weight_beta=2.0))
    batch = synthetic_batch(32)
    changed = {key: value.clone() for key, value in batch.items()}
    changed["actions"][16:] = -changed["actions"][16:]  # the last 16 rows, as if online, act otherwise
    mask = torch.cat([torch.ones(16), torch.zeros(16)])
    masked, masked_changed = (fixed_noise_loss(model, {**b, "imitation_mask": mask})[1] for b in (batch, changed))
    assert torch.equal(masked["diffusion_loss"], masked_changed["diffusion_loss"])
    assert not torch.isclose(masked["vae_loss"], masked_changed["vae_loss"])
    # without the mask the same change reaches the diffusion loss
    assert not torch.isclose(fixed_noise_loss(model, batch)[1]["diffusion_loss"],
                             fixed_noise_loss(model, changed)[1]["diffusion_loss"])


@pytest.mark.parametrize("rule", ["offline", "rewarded"])
def test_the_trainer_masks_the_online_rows_the_rule_leaves_out(tmp_path, tiny_maze_data, rule):
    config = cell_config(tmp_path, diffusion="models.DiffusionRL", trainer=REPLAY, online_imitation=rule,
                         online_sample_fraction=0.25, batch_size=16)
    trainer = make_trainer(config, tiny_maze_data, tmp_path / "run")
    assert "imitation_mask" not in trainer._sample_batch()  # no online data yet
    trainer.collect(20)
    batch = trainer._sample_batch()
    online_obs = trainer.online_dataset.get(torch.arange(len(trainer.online_dataset)))["observations"]
    from_online = torch.tensor([bool((row[None] == online_obs).all(-1).any()) for row in batch["observations"]])
    rewarded = batch["rewards"].sum(1) > 0
    kept = [not online or (rule == "rewarded" and bool(hit)) for online, hit in zip(from_online, rewarded, strict=True)]
    assert batch["imitation_mask"].tolist() == [float(k) for k in kept]
    assert from_online.sum() == 4
    assert torch.isfinite(trainer.model.loss(batch)[0])


def test_rewarded_keeps_the_online_rows_whose_chunk_earned_reward():
    rewards = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert imitation_mask({"rewards": rewards}, "rewarded", 3).tolist() == [1.0, 1.0, 0.0, 1.0, 1.0]
    assert imitation_mask({"rewards": rewards}, "offline", 3).tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert imitation_mask({"rewards": rewards}, "offline", 0).tolist() == [1.0] * 5


def test_online_imitation_off_is_refused_for_a_model_without_a_diffusion_loss(tmp_path):
    with pytest.raises(ConfigError, match="online_imitation: offline acts on models.DiffusionRL"):
        cell_config(tmp_path, diffusion="models.IQL", online_imitation="offline")
