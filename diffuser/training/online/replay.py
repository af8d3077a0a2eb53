"""Offline-to-online for the baselines (models.IQL, models.FQL): their own losses, on batches that mix
offline data with the steps the policy collects, as their papers fine-tune online.

IQL (Kostrikov, Nair, Levine, ICLR 2022, section 5.3) and FQL (Park, Li, Levine, 2025, offline-to-online
experiments) keep every offline loss and hyper-parameter online and add the new transitions to the
replay buffer that holds the offline data; there is no separate policy-gradient update. Here, with the
same schedule keys as DiffusionRL's online mode so the comparison is like for like:

- after `rl_warmup_steps` offline steps, every `rl_collect_freq` training steps the current model (not
  the EMA) acts with its exploring policy (`explore`: IQL samples its Gaussian, FQL its one-step policy
  on fresh noise) for `rl_collect_steps` environment steps summed over `rl_num_envs` persistent
  environments (rollout.py's collection, the same as DiffusionRL's; the papers use one), executing
  each sampled action chunk as it does when evaluated; the steps go into the online buffer.
  `rl_collect_freq` / `rl_collect_steps` is the number of gradient steps per environment step (1 in
  both papers);
- once online steps exist, `online_sample_fraction` of every batch comes from them. The papers sample
  uniformly from the union of the offline and online data, so their online share grows from 0 toward
  a half over a run of as many online as offline steps; a fixed share is the same knob DiffusionRL's
  online mode has.

The policy-gradient keys (what utils.OnlineRLTrainer reads beyond the schedule: `rl_update_freq`, the
learning rates, PPO, GAE, value, entropy and denoising keys) are not read. Resume: the buffer, the collection RNG and
the counters are in every checkpoint; apart from the episodes in progress (cut when a run stops, as in
rollout.py), resume is exact.
"""

from __future__ import annotations

import numpy as np
import torch

from diffuser.envs.make import make_env
from diffuser.envs.scores import episode_scores
from diffuser.runtime.seeding import COLLECTION_STREAM, generator
from diffuser.training.online.buffer import OnlineBuffer
from diffuser.training.online.mixing import mixed_batch, online_sequence_dataset
from diffuser.training.online.rollout import ExplorationCollector, collection_steps
from diffuser.training.trainer import Trainer


class OnlineReplayTrainer(Trainer):
    """A baseline's offline losses on offline + online batches, with collections on the online schedule."""

    def __init__(self, config: dict, dataset, model, run_dir, evaluator=None, device="cpu"):
        super().__init__(config, dataset, model, run_dir, evaluator=evaluator, device=device)
        # Built now so a dataset whose environment cannot be built stops before any training.
        envs = [make_env(dataset.metadata) for _ in range(config["rl_num_envs"])]
        self.rl_generator = generator(config["seed"], COLLECTION_STREAM)
        self.buffer = OnlineBuffer(dataset.obs_dim, dataset.action_dim)
        self.collector = ExplorationCollector(envs, dataset.normalizers, config["history_horizon"], config["discount"],
                                              config["reward_scale"], config["seed"], self.device)
        self.online_dataset = None

    @property
    def env_steps(self) -> int:
        return self.collector.env_steps

    @property
    def episodes_started(self) -> int:
        return self.collector.episodes_started

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
        self.online_dataset = online_sequence_dataset(self.buffer, self.dataset, self.config, self.device)

    def _sample_batch(self) -> dict:
        return mixed_batch(self.dataset, self.online_dataset, self.config["online_sample_fraction"],
                           self.config["batch_size"], self.generator)

    def _after_step(self, step: int) -> dict:
        cfg = self.config
        if collection_steps(step, cfg["rl_warmup_steps"], cfg["rl_collect_freq"]):
            return self.collect(cfg["rl_collect_steps"])
        return {}

    def _flush_log(self, logger, last_time: float, last_step: int) -> dict[str, float]:
        self.metric_sums.add({"env_steps": float(self.env_steps)})
        return super()._flush_log(logger, last_time, last_step)

    @torch.no_grad()
    def collect(self, n_steps: int) -> dict:
        """`n_steps` environment steps with the current model's exploring policy, into the buffer."""
        self.model.eval()
        _, returns = self.collector.collect(self.model, n_steps, self.rl_generator, self.buffer)
        successes = self.collector.successes_done
        self.online_dataset = online_sequence_dataset(self.buffer, self.dataset, self.config, self.device)
        if not returns:
            return {}
        return {"online_episode_return": float(np.mean(returns)),
                "online_success_rate": float(np.mean(successes)),
                "online_normalized_score": float(np.mean(episode_scores(returns, successes, self.dataset.metadata)))}

    def close(self) -> None:
        self.collector.close()

    def train(self):
        try:
            return super().train()
        finally:
            self.close()
