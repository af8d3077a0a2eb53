"""What both online trainers share: the environments and their collector, the online buffer, offline-loss
batches that mix in the online data, the collection schedule, `env_steps` in every log row, and the
checkpointed state of all of these (the episodes in progress are cut on resume: rollout.py)."""

from __future__ import annotations

import numpy as np
import torch

from diffuser.envs.make import make_env
from diffuser.envs.scores import episode_scores
from diffuser.runtime.seeding import COLLECTION_STREAM, generator
from diffuser.training.online.buffer import OnlineBuffer
from diffuser.training.online.mixing import (
    imitation_mask,
    mixed_batch,
    online_row_count,
    online_sequence_dataset,
)
from diffuser.training.online.relabel import GoalRelabeller
from diffuser.training.online.rollout import Collector, collection_steps
from diffuser.training.trainer import Trainer


class OnlineTrainer(Trainer):
    """`Trainer` plus collections every `rl_collect_freq` steps after `rl_warmup_steps`; a subclass says
    which collector acts (`collector_class`) and what a collection feeds (`collect`)."""

    collector_class: type[Collector] = Collector

    def __init__(self, config: dict, dataset, model, run_dir, evaluator=None, device="cpu",
                 read_saved_config=None):
        super().__init__(config, dataset, model, run_dir, evaluator=evaluator, device=device,
                         read_saved_config=read_saved_config)
        # Built now so a dataset whose environment cannot be built stops before any training.
        envs = [make_env(dataset.metadata) for _ in range(config["rl_num_envs"])]
        self.rl_generator = generator(config["seed"], COLLECTION_STREAM)
        self.buffer = OnlineBuffer(dataset.obs_dim, dataset.action_dim)
        self.collector = self.collector_class(envs, dataset.normalizers, config["history_horizon"], config["discount"],
                                              config["reward_scale"], config["seed"], self.device)
        self.relabel = (GoalRelabeller(dataset.metadata, config["online_goal_relabelling"], config["seed"])
                        if config["online_goal_relabelling"] else None)
        self.online_dataset = None

    @property
    def env_steps(self) -> int:
        return self.collector.env_steps

    @property
    def episodes_started(self) -> int:
        return self.collector.episodes_started

    # -------------------------------------------------------------------------------------- state
    def _extra_state(self) -> dict:
        return {
            "buffer": self.buffer.state_dict(),
            "rl_rng": self.rl_generator.get_state(),
            "env_steps": self.env_steps,
            "episodes_started": self.episodes_started,
        }

    def _load_extra_state(self, state: dict) -> None:
        self.buffer.load_state_dict(state["buffer"])
        self.rl_generator.set_state(state["rl_rng"])
        self.collector.env_steps = int(state["env_steps"])
        self.collector.episodes_started = int(state["episodes_started"])
        self.collector.restart_episodes()  # the episodes in progress restart
        self._rebuild_online_dataset()

    # ----------------------------------------------------------------------------- offline batches
    def _rebuild_online_dataset(self) -> None:
        self.online_dataset = online_sequence_dataset(self.buffer, self.dataset, self.config, self.device,
                                                      self.relabel)

    def _sample_batch(self) -> dict:
        batch = mixed_batch(self.dataset, self.online_dataset, self.config["online_sample_fraction"],
                            self.config["batch_size"], self.generator)
        if self.config["online_imitation"] != "all" and self.online_dataset is not None:
            batch["imitation_mask"] = imitation_mask(batch, self.config["online_imitation"],
                                                     online_row_count(self.online_dataset,
                                                                      self.config["online_sample_fraction"],
                                                                      self.config["batch_size"]))
        return batch

    # --------------------------------------------------------------------------------- schedule
    def _after_step(self, step: int) -> dict:
        cfg = self.config
        if collection_steps(step, cfg["rl_warmup_steps"], cfg["rl_collect_freq"]):
            return self.collect(cfg["rl_collect_steps"])
        return {}

    def _flush_log(self, logger, last_time: float, last_step: int) -> dict[str, float]:
        self.metric_sums.add({"env_steps": float(self.env_steps)})
        return super()._flush_log(logger, last_time, last_step)

    # ------------------------------------------------------------------------------- collection
    @torch.no_grad()
    def _collect_steps(self, n_steps: int) -> tuple[dict, dict]:
        """`n_steps` environment steps with the current model (not the EMA) into the buffer; returns (the
        collector's decisions, the metrics of the episodes that ended)."""
        self.model.eval()
        if hasattr(self.model, "freeze_offline_policy"):  # policy expansion: the EMA policy, frozen at the first
            self.model.freeze_offline_policy(self.ema)     # collection (a no-op later and without the key)
            self.ema.freeze_offline_policy(self.ema)
        decisions, returns = self.collector.collect(self.model, n_steps, self.rl_generator, self.buffer)
        self._rebuild_online_dataset()
        metrics = {}
        if returns:
            successes = self.collector.successes_done
            metrics["online_episode_return"] = float(np.mean(returns))
            metrics["online_success_rate"] = float(np.mean(successes))
            metrics["online_normalized_score"] = float(np.mean(episode_scores(returns, successes,
                                                                                self.dataset.metadata)))
        return decisions, metrics

    def collect(self, n_steps: int) -> dict:
        """One collection of `n_steps` environment steps; returns metrics to log."""
        return self._collect_steps(n_steps)[1]

    def close(self) -> None:
        self.collector.close()

    def train(self):
        try:
            return super().train()
        finally:
            self.close()
