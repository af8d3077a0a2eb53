"""Offline training of a policy model (DiffusionRL or a baseline) with exact resume.

Everything random in a run comes from two places that the checkpoint stores: the torch global
RNG (weight init, noise inside the losses) and the batch generator. Evaluation forks the RNG, so a
run killed and resumed from its last checkpoint ends with the same weights, bit for bit on CPU.

A training step never waits for the host: its loss terms are summed on their device
(`MetricSums`) and read once per log row. Finiteness is checked there, at every log row and
before every save (the sums of the terms since the last row, and the weights), so a NaN is
reported with its term and step range and the newest checkpoint is always a finite one.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from diffuser.errors import TrainingDiverged
from diffuser.evaluation.policy import PolicyRunner
from diffuser.runtime.console import announce
from diffuser.runtime.progress import progress_bar
from diffuser.runtime.seeding import BATCH_STREAM, generator
from diffuser.training.checkpoints import (
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    step_checkpoint_path,
)
from diffuser.training.compiled import CompiledOrEager
from diffuser.training.loggers import RunLoggers
from diffuser.training.metrics import MetricSums

# Config keys a resumed run may change without changing what it computes (a longer run extends a shorter one).
RESUMABLE_KEYS = frozenset({
    "n_train_steps", "eval_freq", "num_eval", "log_freq", "save_freq", "device", "num_threads", "continue_training",
    "loggers", "wandb_project",
})


def changed_result_keys(saved: dict, current: dict) -> list[str]:
    """Keys, outside RESUMABLE_KEYS, whose values differ between a checkpoint's config and the current one."""
    keys = (set(saved) | set(current)) - RESUMABLE_KEYS
    if "cosine" in (saved.get("lr_schedule"), current.get("lr_schedule")):
        keys.add("n_train_steps")  # the schedule's length
    return sorted(key for key in keys if saved.get(key) != current.get(key))


def make_optimizer(parameters, config: dict, learning_rate: float | None = None) -> torch.optim.Optimizer:
    # fused: one kernel for all parameters instead of ~10 small ops per tensor; a DiffusionRL step's
    # optimizer update went from ~6 ms to ~1.8 ms on the 2-core CPU (87 parameter tensors).
    return torch.optim.AdamW(
        parameters, lr=learning_rate or config["learning_rate"], weight_decay=config["weight_decay"], fused=True
    )


def make_scheduler(optimizer, schedule: str, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning-rate schedule `schedule` ("cosine" or "constant") over `total` steps."""
    if schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)


class Trainer:
    """Trains `model` on `dataset` into `run_dir` (checkpoints/, metrics.csv, final.pt).

    Hooks for subclasses (the online trainer, the VAE pre-training): `total_steps()`, `_make_scheduler()`,
    `_loss(batch)`, `_after_optimizer_step()`, `_after_step(step)`, `_sample_batch()`,
    `_extra_state()` / `_load_extra_state(state)`, `write_final()`.
    """

    keep_checkpoints = 2
    progress_label = "train"
    progress_metric = "loss"  # the loss term shown beside the progress bar
    divergence_remedy = "lower learning_rate or check the data"

    def __init__(self, config: dict, dataset, model: torch.nn.Module, run_dir, evaluator=None, device="cpu",
                 read_saved_config: Callable[[dict], dict] | None = None):
        """`read_saved_config`: a checkpoint's config -> the config it ran with, keys the schema gained since it
        was written filled in (config.saved_cell_config); resume compares that with `config`."""
        self.config = config
        self.read_saved_config = read_saved_config or dict
        self.dataset = dataset
        self.model = model.to(device)
        self.run_dir = Path(run_dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.evaluator = evaluator
        self.device = torch.device(device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        # a model with its own published learning rate (IQL, FQL) says so; the others train at learning_rate
        self.optimizer = make_optimizer(self.model.parameters(), config, getattr(model, "learning_rate", None))
        self.scheduler = self._make_scheduler()
        self.generator = generator(config["seed"], BATCH_STREAM)
        self.step = 0
        self.resumed_from: int | None = None  # the checkpoint step this attempt started from
        self.metric_sums = MetricSums()  # the metrics of the steps since the last log row
        self._sums_since = 0  # the step of the last log row
        self._loss_fn = CompiledOrEager(self._loss, "the training loss") if config["compile"] else self._loss

    def total_steps(self) -> int:
        return self.config["n_train_steps"]

    def _make_scheduler(self) -> torch.optim.lr_scheduler.LambdaLR:
        return make_scheduler(self.optimizer, self.config["lr_schedule"], self.total_steps())

    # ----------------------------------------------------------------------------------------- state
    def _header(self) -> dict:
        """What a checkpoint and final.pt both hold besides weights: enough to rebuild the policy."""
        return {
            "step": self.step,
            "config": self.config,
            "model_class": self.config["diffusion"],
            "obs_dim": self.dataset.obs_dim,
            "action_dim": self.dataset.action_dim,
            "normalizers": {k: v.state_dict() for k, v in self.dataset.normalizers.items()},
            "metadata": self.dataset.metadata,
        }

    def state_dict(self) -> dict:
        return {
            **self._header(),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "batch_rng": self.generator.get_state(),
            "log_sums": self.metric_sums.state_dict(),
            "log_since": self._sums_since,
            "extra": self._extra_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        self.generator.set_state(state["batch_rng"])
        self.metric_sums.load_state_dict(state["log_sums"], self.device)
        self._sums_since = int(state["log_since"])
        self._load_extra_state(state["extra"])

    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, state: dict) -> None:
        pass

    def save(self) -> Path:
        """Checkpoint the current step, after checking that its losses and weights are finite."""
        self._checked_means()
        self._raise_if_weights_not_finite()
        path = save_checkpoint(step_checkpoint_path(self.checkpoint_dir, self.step), self.state_dict())
        prune_checkpoints(self.checkpoint_dir, keep=self.keep_checkpoints)
        return path

    def resume_if_possible(self) -> bool:
        """Load the newest checkpoint when `continue_training` is set; True if one was loaded."""
        if not self.config["continue_training"]:
            return False
        path = latest_checkpoint(self.checkpoint_dir)
        if path is None:
            return False
        state = load_checkpoint(path, map_location=self.device)
        changed = changed_result_keys(self.read_saved_config(state["config"]), self.config)
        if changed:
            self._set_checkpoints_aside(f"were written with other values of {', '.join(changed)}")
            return False
        fresh = copy.deepcopy(self.state_dict())
        try:
            self.load_state_dict(state)
        except (KeyError, ValueError, RuntimeError) as err:
            # e.g. a layout an older version wrote (separate twin-Q networks, per-term metric sums)
            self.load_state_dict(fresh)
            self._set_checkpoints_aside(f"do not fit this version's model or trainer ({type(err).__name__})")
            return False
        self.resumed_from = self.step
        announce(f"resumed from step {self.step} (checkpoint {path})")
        return True

    # -------------------------------------------------------------------------------------- training
    def _set_checkpoints_aside(self, why: str) -> None:
        aside = self.checkpoint_dir.with_name(f"checkpoints.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        self.checkpoint_dir.rename(aside)
        print(f"warning: the checkpoints in {self.checkpoint_dir} {why}; training starts over and the old "
              f"checkpoints are kept in {aside}.", file=sys.stderr)

    def _sample_batch(self) -> dict:
        return self.dataset.sample(self.config["batch_size"], self.generator)

    def _loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.model.loss(batch)

    def _after_optimizer_step(self) -> None:
        self.model.after_optimizer_step()

    def _after_step(self, step: int) -> dict:
        """Extra work after gradient step `step` (1-based); returns metrics to log."""
        return {}

    def _update_ema(self) -> None:
        decay = self.config["ema_decay"]
        with torch.no_grad():
            torch._foreach_lerp_(list(self.ema.parameters()), list(self.model.parameters()), 1.0 - decay)
            for e, b in zip(self.ema.buffers(), self.model.buffers(), strict=True):
                e.copy_(b)

    def _checked_means(self) -> dict[str, float]:
        """The metrics' means since the last log row (one host read); raises if one is NaN or infinite."""
        means = self.metric_sums.means()
        bad = [name for name, value in means.items() if not math.isfinite(value)]
        if bad:
            raise TrainingDiverged(
                f"Loss term(s) {', '.join(bad)} became NaN or infinite between step {self._sums_since + 1} and "
                f"step {self.step}; the last good checkpoint is kept in {self.checkpoint_dir}: {self.divergence_remedy}."
            )
        return means

    def _checked_weights(self) -> list[torch.Tensor]:
        """The trained weights a checkpoint must not hold non-finite: the model's and their EMA."""
        return [*self.model.parameters(), *self.ema.parameters()]

    def _raise_if_weights_not_finite(self) -> None:
        # a non-finite gradient can spoil the weights of the step whose loss was still finite
        finite = torch.stack([torch.isfinite(w).all() for w in self._checked_weights()]).all()
        if not finite:
            raise TrainingDiverged(
                f"The weights became NaN or infinite by step {self.step} (the loss terms were finite); the last good "
                f"checkpoint is kept in {self.checkpoint_dir}: {self.divergence_remedy}."
            )

    def _apply_gradients(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward, clip the gradient norm of the optimizer's parameters at `grad_clip`, step."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config["grad_clip"] > 0:
            parameters = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(parameters, self.config["grad_clip"])
        optimizer.step()

    def train_step(self) -> dict[str, torch.Tensor]:
        self.model.train()
        batch = self._sample_batch()
        total, terms = self._loss_fn(batch)
        self._apply_gradients(total, self.optimizer)
        self.scheduler.step()
        self._after_optimizer_step()
        self._update_ema()
        self.step += 1
        return terms

    def advance(self) -> None:
        """One training step and whatever follows it (`_after_step`), their metrics added to the sums;
        reads nothing back to the host unless `_after_step` must (environment steps)."""
        self.metric_sums.add(self.train_step())
        self.metric_sums.add(self._after_step(self.step))

    def _flush_log(self, logger: RunLoggers, last_time: float, last_step: int) -> dict[str, float]:
        """Log the means since the last row (checked finite) with the rate since `last_time`; returns the row."""
        row = self._checked_means()  # waits for the device: the rate below counts the steps' real time
        elapsed, steps_done = time.perf_counter() - last_time, self.step - last_step
        row["learning_rate"] = self.optimizer.param_groups[0]["lr"]
        if elapsed > 0 and steps_done > 0:
            row["steps_per_second"] = steps_done / elapsed
        logger.log(self.step, row)
        self.metric_sums.reset()
        self._sums_since = self.step
        return row

    def policy(self, use_ema: bool = True) -> PolicyRunner:
        model = self.ema if use_ema else self.model
        model.eval()
        return PolicyRunner(
            model,
            self.dataset.normalizers,
            history_horizon=self.config["history_horizon"],
            action_horizon=self.config["action_horizon"],
            device=self.device,
        )

    def evaluate(self, logger: RunLoggers | None = None) -> dict:
        result = self.evaluator.evaluate(self.policy(use_ema=True))
        result.update(step=self.step, ema=True)
        if logger is not None:
            logger.log(self.step, {
                "eval_return": result["mean_return"],
                "eval_normalized_score": result["mean_normalized_score"],
                "eval_success_rate": result["success_rate"],
            })
        return result

    def train(self) -> Path:
        """Run until `total_steps()`, resuming first if possible; returns the path `write_final` wrote."""
        cfg = self.config
        resumed = self.resume_if_possible()
        logger = RunLoggers(self.run_dir, cfg, resume_step=self.step if resumed else None)
        try:
            start_step = self.step
            last_log_time, last_log_step = time.perf_counter(), self.step
            with progress_bar(total=self.total_steps(), initial=self.step, desc=self.progress_label) as bar:
                while self.step < self.total_steps():  # read each step: a benchmark's deadline may shorten it
                    self.advance()
                    bar.update(1)
                    if self.step % cfg["log_freq"] == 0:
                        row = self._flush_log(logger, last_log_time, last_log_step)
                        last_log_time, last_log_step = time.perf_counter(), self.step
                        if self.progress_metric in row:
                            bar.set_postfix({self.progress_metric: f"{row[self.progress_metric]:.4f}"})
                    if self.evaluator is not None and self.step % cfg["eval_freq"] == 0:
                        self.evaluate(logger)
                    if self.step % cfg["save_freq"] == 0:
                        self.save()
            if self.metric_sums:
                self._flush_log(logger, last_log_time, last_log_step)
            if self.step > start_step and self.step % cfg["save_freq"] != 0:
                self.save()
        finally:
            logger.close()
        return self.write_final()

    def write_final(self) -> Path:
        """The evaluation artefact: EMA weights, normalizers and the config, loadable without code."""
        return save_checkpoint(self.run_dir / "final.pt", {**self._header(), "ema": self.ema.state_dict()})
