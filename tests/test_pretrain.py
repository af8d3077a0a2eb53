"""VAE pre-training runs through the training loop: it learns, resumes exactly, and its VAE warm-starts the model."""

import shutil

import pandas as pd
import pytest
import torch

from diffuser import steps
from diffuser.config import validate_cell_config
from diffuser.errors import ConfigError
from diffuser.training.checkpoints import load_checkpoint

TINY = {
    "dataset": "gen-maze2d-umaze",
    "dataset_steps": 3000,
    "hidden_dim": 32,
    "vae_latent_dim": 4,
    "batch_size": 64,
    "num_threads": 1,
    "device": "cpu",
    "log_freq": 20,
    "vae_pretrain_steps": 120,
    "save_freq": 60,
}


def pretrained(tmp_path, data_dir, **overrides):
    config = validate_cell_config({**TINY, **overrides})
    return config, steps.pretrain_vae(config, tmp_path / "vae.pt", data_dir)


def metric(path, name) -> dict[int, float]:
    table = pd.read_csv(path)
    rows = table[table.metric == name]
    return dict(zip(rows.step.astype(int), rows.value.astype(float), strict=True))


def test_pretraining_learns_and_its_vae_loads_into_the_model(tmp_path, tiny_maze_data):
    config, out = pretrained(tmp_path, tiny_maze_data)
    state = load_checkpoint(out)
    assert state["steps"] == 120
    recon = metric(tmp_path / "metrics.csv", "vae_recon_loss")
    assert sorted(recon) == [20, 40, 60, 80, 100, 120]
    assert recon[120] < 0.8 * recon[20]
    model = steps.build_model(config, 6, 2)
    model.vae.load_state_dict(state["vae"])  # strict: the pre-trained VAE is exactly the model's VAE
    # constant learning rate: the cell's schedule is for its own n_train_steps
    assert set(metric(tmp_path / "metrics.csv", "learning_rate").values()) == {config["learning_rate"]}


def test_pretraining_resumes_exactly_from_its_checkpoint(tmp_path, tiny_maze_data):
    _, straight = pretrained(tmp_path / "straight", tiny_maze_data)
    interrupted = tmp_path / "interrupted" / "checkpoints"
    interrupted.mkdir(parents=True)
    shutil.copy(tmp_path / "straight" / "checkpoints" / "state_00000060.pt", interrupted)
    _, resumed = pretrained(tmp_path / "interrupted", tiny_maze_data)
    a, b = load_checkpoint(straight)["vae"], load_checkpoint(resumed)["vae"]
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_a_model_without_a_vae_is_refused(tmp_path, tiny_maze_data):
    with pytest.raises(ConfigError, match="models.BC has no action VAE"):
        pretrained(tmp_path, tiny_maze_data, diffusion="models.BC")
