"""Online + offline training: DPPO-style policy-gradient fine-tuning of the latent diffusion policy.

The offline losses run every step, as in `Trainer`. On top of them, after `rl_warmup_steps`:

- every `rl_collect_freq` steps the current model (not the EMA) acts in one persistent environment
  for `rl_collect_steps` steps. Each decision samples a denoising chain x_T .. x_0 with the
  chain policy (every transition Gaussian, std floored at `min_policy_std` and scaled by the
  learnable `chain_log_std`), decodes x_0 into an action chunk and executes it. The steps go into
  the online buffer; the decisions (condition inputs, chain, per-step log-probabilities, chunk
  reward) form the rollout of the next updates, with GAE advantages from an on-policy value network;
- every `rl_update_freq` steps one RL gradient step on the newest rollout (PPO reuses it until the
  next collection): a clipped ratio loss per denoising step (`policy_loss`), the value network's
  regression to the GAE returns (`rl_value_loss`), minus `entropy_weight` times the chain entropy,
  at `rl_learning_rate`;
- once online steps exist, `online_sample_fraction` of every offline-loss batch comes from them, so
  the VAE, diffusion and critic also learn from the policy's own data.

`value_loss` stays the critic's (IQL) value loss in both modes so offline and online curves of the same
term compare; the on-policy value network's loss is `rl_value_loss`.

The jobs live in their own modules: the buffer (buffer.py), collection and GAE (rollout.py), the RL
losses and the value network (update.py); this one is the schedule around them.

Resume: the buffer, the rollout, the RL optimizer, the value network, the collection RNG and the
counters are in every checkpoint; apart from the episode in progress (rollout.py), resume is exact.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from diffuser.datasets.sequence import VAESequenceDataset
from diffuser.envs.make import make_env
from diffuser.envs.scores import episode_scores
from diffuser.runtime.seeding import COLLECTION_STREAM, generator
from diffuser.training.online.buffer import OnlineBuffer
from diffuser.training.online.rollout import Collector, collection_steps, finish_rollout
from diffuser.training.online.update import RLUpdateConfig, make_value_net, rl_losses, rl_parameters
from diffuser.training.trainer import Trainer


class OnlineRLTrainer(Trainer):
    def __init__(self, config: dict, dataset, model: nn.Module, run_dir, evaluator=None, device="cpu"):
        super().__init__(config, dataset, model, run_dir, evaluator=evaluator, device=device)
        # Built now so a dataset whose environment cannot be built stops before any training.
        env = make_env(dataset.metadata)
        self.value_net = make_value_net(dataset.obs_dim, config["hidden_dim"]).to(self.device)
        self.rl_optimizer = torch.optim.AdamW(rl_parameters(model, self.value_net), lr=config["rl_learning_rate"],
                                              weight_decay=config["weight_decay"])
        self.rl_config = RLUpdateConfig.view(config)
        self.rl_generator = generator(config["seed"], COLLECTION_STREAM)
        self.buffer = OnlineBuffer(dataset.obs_dim, dataset.action_dim)
        self.collector = Collector(env, dataset.normalizers, config["history_horizon"], config["discount"],
                                   config["reward_scale"], config["seed"], self.device)
        self.online_dataset: VAESequenceDataset | None = None
        self.rollout: dict[str, torch.Tensor] | None = None
        self.value_initialized = False

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
            "rollout": self.rollout,
            "rl_optimizer": self.rl_optimizer.state_dict(),
            "value_net": self.value_net.state_dict(),
            "rl_rng": self.rl_generator.get_state(),
            "env_steps": self.env_steps,
            "episodes_started": self.episodes_started,
            "value_initialized": self.value_initialized,
        }

    def _load_extra_state(self, state: dict) -> None:
        self.buffer.load_state_dict(state["buffer"])
        self.rollout = state["rollout"]
        self.rl_optimizer.load_state_dict(state["rl_optimizer"])
        self.value_net.load_state_dict(state["value_net"])
        self.rl_generator.set_state(state["rl_rng"])
        self.collector.env_steps = int(state["env_steps"])
        self.collector.episodes_started = int(state["episodes_started"])
        self.value_initialized = bool(state["value_initialized"])
        self.collector.episode = None  # the episode in progress restarts
        self._rebuild_online_dataset()

    # ----------------------------------------------------------------------------- offline batches
    def _rebuild_online_dataset(self) -> None:
        arrays = self.buffer.arrays() if len(self.buffer) else None
        if arrays is None or arrays["episode_lengths"].max() < self.config["action_horizon"]:
            self.online_dataset = None
            return
        # the offline metadata, so the online data is normalized with the offline statistics
        self.online_dataset = VAESequenceDataset(
            (arrays, self.dataset.metadata),
            history_horizon=self.config["history_horizon"],
            action_horizon=self.config["action_horizon"],
            discount=self.config["discount"],
            reward_scale=self.config["reward_scale"],
            normalizer=self.config["normalizer"],
            device=self.device,
        )

    def _sample_batch(self) -> dict:
        batch_size = self.config["batch_size"]
        n_online = round(self.config["online_sample_fraction"] * batch_size) if self.online_dataset else 0
        offline = self.dataset.sample(batch_size - n_online, self.generator)
        if n_online == 0:
            return offline
        online = self.online_dataset.sample(n_online, self.generator)
        return {key: torch.cat([offline[key], online[key]]) for key in offline}

    # --------------------------------------------------------------------------------- schedule
    def _after_step(self, step: int) -> dict:
        cfg = self.config
        metrics: dict[str, float] = {}
        if collection_steps(step, cfg["rl_warmup_steps"], cfg["rl_collect_freq"]):
            metrics.update(self.collect(cfg["rl_collect_steps"]))
        if self.rollout is not None and step % cfg["rl_update_freq"] == 0:
            metrics.update(self.rl_update())
        return metrics

    def _flush_log(self, logger, elapsed: float, steps_done: int) -> None:
        self._sums["env_steps"], self._counts["env_steps"] = float(self.env_steps), 1
        super()._flush_log(logger, elapsed, steps_done)

    # ------------------------------------------------------------------------------- collection
    @torch.no_grad()
    def collect(self, n_steps: int) -> dict:
        """`n_steps` environment steps with the current chain policy; sets the rollout of the next updates."""
        if not self.value_initialized:
            critic = getattr(self.model, "critic", None)
            if critic is not None:  # start the on-policy value from the offline critic's V(s)
                self.value_net.load_state_dict(critic.value.state_dict())
            self.value_initialized = True
        self.model.eval()
        decisions, returns_done = self.collector.collect(self.model, n_steps, self.rl_generator, self.buffer)
        self.rollout = finish_rollout(decisions, self.value_net, self.config["gae_lambda"], self.device)
        self._rebuild_online_dataset()
        metrics = {}
        if returns_done:
            metadata = self.dataset.metadata
            metrics["online_episode_return"] = float(np.mean(returns_done))
            metrics["online_normalized_score"] = float(np.mean(
                episode_scores(returns_done, self.collector.successes_done, metadata)))
        return metrics

    # ---------------------------------------------------------------------------------- update
    def rl_update(self, rollout: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
        """One gradient step of the RL losses on `rollout` (default: the newest collection)."""
        self.model.train()
        terms = rl_losses(self.model, self.value_net, self.rollout if rollout is None else rollout, self.rl_config)
        self._raise_if_not_finite(terms, self.step, "lower rl_learning_rate")
        self._apply_gradients(terms["rl_loss"], self.rl_optimizer)
        self._update_ema()
        return {name: float(value.detach()) for name, value in terms.items()}

    def close(self) -> None:
        self.collector.close()

    def train(self):
        try:
            return super().train()
        finally:
            self.close()
