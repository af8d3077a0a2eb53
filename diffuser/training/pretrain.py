"""VAE pre-training: a model's action VAE alone, on (state, action-chunk) batches, through Trainer's loop.

The same loop as a training run (gradient step, finiteness check, metric rows, checkpoints and exact
resume), for `vae_pretrain_steps` steps at the constant `learning_rate` (the cell's schedule is for
its own `n_train_steps`). Writes the VAE's weights, not their EMA: the training run warm-starts from
them and keeps its own EMA.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from diffuser.training.checkpoints import save_checkpoint
from diffuser.training.trainer import Trainer, make_scheduler


class VAEPretrainer(Trainer):
    """Trains `vae` (an ActionVAE) into `out` (vae.pt), with checkpoints/ and metrics.csv beside it."""

    progress_label = "pretrain_vae"
    progress_metric = "vae_loss"

    def __init__(self, config: dict, dataset, vae: torch.nn.Module, out: str | os.PathLike, device="cpu"):
        self.out = Path(out)
        super().__init__(config, dataset, vae, self.out.parent, device=device)

    def total_steps(self) -> int:
        return self.config["vae_pretrain_steps"]

    def _make_scheduler(self) -> torch.optim.lr_scheduler.LambdaLR:
        return make_scheduler(self.optimizer, "constant", self.total_steps())

    def _loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.model.loss(batch["observations"], batch["actions"])

    def _after_optimizer_step(self) -> None:
        """Nothing to update: the VAE has no target networks."""

    def write_final(self) -> Path:
        return save_checkpoint(self.out, {"vae": self.model.state_dict(), "config": self.config, "steps": self.step})
