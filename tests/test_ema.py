"""The EMA of the policy weights, which every evaluation and final.pt use.

After N optimizer steps from weights theta_0 with weights theta_1 .. theta_N, an EMA with decay d is
    d^N theta_0 + sum_k (1 - d) d^(N - k) theta_k.
"""

import pytest
import torch
from torch import nn

from diffuser.datasets.normalization import GaussianNormalizer, MinMaxNormalizer
from diffuser.training.checkpoints import load_checkpoint
from diffuser.training.trainer import Trainer

DECAY = 0.9
STEPS = 6
CONFIG = {"seed": 0, "learning_rate": 0.1, "weight_decay": 0.0, "n_train_steps": STEPS, "lr_schedule": "constant",
          "ema_decay": DECAY, "grad_clip": 0.0, "batch_size": 4, "diffusion": "models.BC", "history_horizon": 1,
          "action_horizon": 1, "loggers": ["csv"], "wandb_project": None, "compile": False}


class ToyModel(nn.Module):
    """Three weights pulled toward the batch's targets; a buffer counting optimizer steps."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
        self.register_buffer("updates", torch.zeros(()))

    def loss(self, batch):
        loss = ((self.w - batch["targets"]) ** 2).mean(0).sum()
        return loss, {"loss": loss}

    def after_optimizer_step(self):
        self.updates += 1


class ToyData:
    obs_dim, action_dim = 1, 1
    metadata = {"name": "toy"}
    normalizers = {"observations": GaussianNormalizer([0.0], [1.0]), "actions": MinMaxNormalizer([-1.0], [1.0])}

    def sample(self, batch_size, generator):
        return {"targets": torch.randn(batch_size, 3, generator=generator) + torch.tensor([3.0, 0.0, -1.0])}


@pytest.fixture()
def trained(tmp_path):
    """(trainer after STEPS steps, the weights theta_0 .. theta_N)."""
    trainer = Trainer(CONFIG, ToyData(), ToyModel(), tmp_path)
    weights = [trainer.model.w.detach().clone()]
    for _ in range(STEPS):
        trainer.train_step()
        weights.append(trainer.model.w.detach().clone())
    return trainer, weights


def closed_form_ema(weights, decay):
    n = len(weights) - 1
    return decay**n * weights[0] + sum((1 - decay) * decay ** (n - k) * weights[k] for k in range(1, n + 1))


def test_ema_is_the_closed_form_average_of_the_weights(trained):
    trainer, weights = trained
    expected = closed_form_ema(weights, DECAY)
    torch.testing.assert_close(trainer.ema.w, expected)
    # the EMA lags: it is not the last weights, nor the first
    assert not torch.allclose(expected, weights[-1], atol=1e-2) and not torch.allclose(expected, weights[0], atol=1e-2)
    assert trainer.ema.updates.item() == trainer.model.updates.item() == STEPS, "buffers are copied, not averaged"


def test_final_checkpoint_and_evaluation_use_the_ema_weights(trained, tmp_path):
    trainer, weights = trained
    expected = closed_form_ema(weights, DECAY)
    final = load_checkpoint(trainer.write_final())
    torch.testing.assert_close(final["ema"]["w"], expected)
    assert final["step"] == STEPS

    class RecordingEvaluator:
        def evaluate(self, runner):
            self.weights = runner.model.w.detach().clone()
            return {"mean_return": 0.0, "mean_normalized_score": 0.0, "success_rate": 0.0}

    trainer.evaluator = RecordingEvaluator()
    result = trainer.evaluate()
    torch.testing.assert_close(trainer.evaluator.weights, expected)
    assert result["ema"] is True and result["step"] == STEPS
