"""A training step never reads a value back to the host; the log rows and saves do, and catch NaNs there."""

import pytest
import torch
from host_reads import HostReads
from test_ema import CONFIG, ToyData, ToyModel
from test_training import TINY

from diffuser import steps
from diffuser.config import validate_cell_config
from diffuser.errors import TrainingDiverged
from diffuser.registry import trainer_for
from diffuser.training.checkpoints import latest_checkpoint, load_checkpoint
from diffuser.training.trainer import Trainer

N_STEPS = 12


def make_trainer(data_dir, run_dir, device="cpu", **overrides):
    config = validate_cell_config({**TINY, "device": device, **overrides}, "test config")
    torch.manual_seed(0)
    dataset = steps.load_dataset(config, data_dir, device=device)
    model = steps.build_model(config, dataset.obs_dim, dataset.action_dim)
    return trainer_for(config)(config, dataset, model, run_dir, device=device)


MODELS = {
    "DiffusionRL": {},
    "DiffusionRL-no-critic": {"use_value_function": False},
    "BC": {"diffusion": "models.BC"},
    "IQL": {"diffusion": "models.IQL"},
    "FQL": {"diffusion": "models.FQL", "fql_hidden_dim": 32},
    "DiffusionPolicy": {"diffusion": "models.DiffusionPolicy"},
}


@pytest.mark.parametrize("model", MODELS)
def test_training_steps_read_nothing_back_to_the_host(tmp_path, tiny_maze_data, model):
    trainer = make_trainer(tiny_maze_data, tmp_path, **MODELS[model])
    trainer.advance()  # first-call work (lazy state) is not what a steady step does
    with HostReads() as reads:
        for _ in range(N_STEPS):
            trainer.advance()
    assert reads.names == []
    # the counter does see reads: the means of a log row are one
    with HostReads() as reads:
        means = trainer.metric_sums.means()
    assert reads.names and means["loss"] > 0


@pytest.mark.parametrize("target_kl", [1.0, None])
def test_online_steps_read_nothing_and_a_ppo_pass_only_its_kl_checks(tmp_path, tiny_maze_data, target_kl):
    trainer = make_trainer(tiny_maze_data, tmp_path, online_training=True, rl_target_kl=target_kl)
    trainer.collect(5)  # collection steps the environment: it reads actions back by nature
    trainer.rl_update()
    with HostReads() as reads:  # the offline-loss steps between collections, on mixed batches
        for _ in range(N_STEPS):
            trainer.metric_sums.add(trainer.train_step())
    assert reads.names == []
    # A PPO pass runs once per collection; the KL early stop (DPPO's target_kl) reads one scalar per
    # minibatch to decide whether to go on, and nothing else is read.
    trainer.collect(5)
    with HostReads() as reads:
        terms = trainer.rl_update()
    assert len(reads.names) == (int(terms["rl_minibatches"]) if target_kl is not None else 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_steps_do_not_synchronise_the_gpu(tmp_path, tiny_maze_data):
    trainer = make_trainer(tiny_maze_data, tmp_path, device="cuda")
    trainer.advance()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(N_STEPS):
            trainer.advance()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert trainer.metric_sums.means()["loss"] > 0


def test_a_run_reads_the_device_once_per_log_row_and_save(tmp_path, tiny_maze_data):
    # 30 steps, a row every 10: three reads of the sums, and the weights' finiteness before the one save
    trainer = make_trainer(tiny_maze_data, tmp_path, n_train_steps=30, log_freq=10, save_freq=30)
    with HostReads() as reads:
        trainer.train()
    assert reads.names.count("tolist") == 3
    assert len(reads.names) <= 3 + 2, reads.names  # (+ the weights' check: one scalar, seen at both layers)


def test_metric_means_resume_in_the_same_order(tmp_path, tiny_maze_data):
    trainer = make_trainer(tiny_maze_data, tmp_path)
    for _ in range(3):
        trainer.advance()
    state = trainer.metric_sums.state_dict()
    other = make_trainer(tiny_maze_data, tmp_path)
    other.metric_sums.load_state_dict(state, "cpu")
    terms = trainer.train_step()
    trainer.metric_sums.add(terms)
    other.metric_sums.add(terms)
    assert trainer.metric_sums.means() == other.metric_sums.means()


def test_nan_in_the_weights_with_finite_losses_is_caught_before_the_save(tmp_path):
    config = {**CONFIG, "n_train_steps": 40, "log_freq": 10, "save_freq": 20, "continue_training": False}
    trainer = Trainer(config, ToyData(), ToyModel(), tmp_path)
    original = trainer._update_ema

    def poisoned_ema():
        original()
        if trainer.step == 34:  # the EMA is not in the loss: only the check before a save can see it
            trainer.ema.w.data[0] = float("nan")

    trainer._update_ema = poisoned_ema
    with pytest.raises(TrainingDiverged, match="weights became NaN or infinite by step 40"):
        trainer.train()
    assert load_checkpoint(latest_checkpoint(tmp_path / "checkpoints"))["step"] == 20


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("trainer", [None, "utils.OnlineReplayTrainer"])
def test_online_collection_runs_on_the_gpu_with_the_cpu_collection_stream(tmp_path, tiny_maze_data, trainer):
    # the run's RNG streams are CPU generators; the samplers draw their noise there and move it
    online = make_trainer(tiny_maze_data, tmp_path, device="cuda", online_training=True, trainer=trainer)
    online.collect(6)
    assert online.env_steps == len(online.buffer) == 6
