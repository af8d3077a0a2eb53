"""Online + offline training: DPPO-style policy-gradient fine-tuning of the latent diffusion policy.

The offline losses run every step, as in `Trainer`. On top of them, after `rl_warmup_steps`:

- every `rl_collect_freq` steps the current model (not the EMA) acts in `rl_num_envs` persistent
  environments for `rl_collect_steps` environment steps in all (rollout.py). Each decision samples a
  denoising chain x_T .. x_0 with the chain policy (every transition Gaussian, std floored at
  `min_policy_std` and scaled by the learnable `chain_log_std`), decodes x_0 into an action chunk and
  executes it. The steps go into the online buffer; the decisions form the rollout of the next PPO
  pass, with GAE advantages from an on-policy value network. At the first collection the value
  network starts from the offline critic's V(s) and the first n_sampling_steps - ft_denoising_steps
  denoising steps are frozen at the current encoder and denoiser (DPPO's frozen base policy);
- each rollout feeds one PPO pass (update.py: `rl_update_epochs` epochs over minibatches of
  (decision, fine-tuned denoising step) pairs, `policy_loss`, `rl_value_loss`, minus `entropy_weight`
  times the chain entropy; the policy at `rl_learning_rate`, the value network at `rl_value_learning_rate`). It runs at the first training step at or after the
  collection that is a multiple of `rl_update_freq`: with the default schedule (and whenever
  rl_update_freq divides rl_warmup_steps and rl_collect_freq) that is the collection's own step, so the
  pass starts from the policy that collected and its ratios start at 1. Running the whole pass at once,
  rather than one minibatch every rl_update_freq steps with offline steps between them, is what DPPO
  does and what its small clip ranges need: the offline diffusion loss moves the denoiser further
  than a 0.001-0.01 per-dimension ratio allows (the seed's one step per rl_update_freq measured a
  median clip fraction of 0.36);
- once online steps exist, `online_sample_fraction` of every offline-loss batch comes from them, so
  the VAE, diffusion and critic also learn from the policy's own data.

Per PPO pass it logs `clip_fraction`, `clip_fraction_first` (the first minibatch's: 0 unless the
policy moved between collection and pass), `approx_kl`, `rl_minibatches`; per collection
`explained_variance`, `online_success_rate`, `online_episode_return`, `online_normalized_score`;
every log row `env_steps`.

`value_loss` stays the critic's (IQL) value loss in both modes so offline and online curves of the same
term compare; the on-policy value network's loss is `rl_value_loss`.

Resume: the buffer, the rollout (and whether its pass ran), the RL optimizer, the value network, the
collection RNG, the counters and the frozen base (in the model's weights) are in every checkpoint;
apart from the episodes in progress (rollout.py), resume is exact.
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
from diffuser.training.online.mixing import mixed_batch, online_sequence_dataset
from diffuser.training.online.rollout import Collector, collection_steps, explained_variance, finish_rollout
from diffuser.training.online.update import (
    RLUpdateConfig,
    make_value_net,
    ppo_pass,
    rl_parameter_groups,
    rollout_log_probs,
)
from diffuser.training.trainer import Trainer, make_optimizer


class OnlineRLTrainer(Trainer):
    divergence_remedy = ("lower learning_rate (rl_learning_rate for policy_loss and entropy, rl_value_learning_rate for "
                         "rl_value_loss) or check the data")

    def __init__(self, config: dict, dataset, model: nn.Module, run_dir, evaluator=None, device="cpu"):
        super().__init__(config, dataset, model, run_dir, evaluator=evaluator, device=device)
        # Built now so a dataset whose environment cannot be built stops before any training.
        envs = [make_env(dataset.metadata) for _ in range(config["rl_num_envs"])]
        self.value_net = make_value_net(dataset.obs_dim, config["hidden_dim"]).to(self.device)
        self.rl_optimizer = make_optimizer(rl_parameter_groups(model, self.value_net, config["rl_value_learning_rate"]),
                                           config, config["rl_learning_rate"])
        self.rl_config = RLUpdateConfig.view(config)
        self.rl_generator = generator(config["seed"], COLLECTION_STREAM)
        self.buffer = OnlineBuffer(dataset.obs_dim, dataset.action_dim)
        self.collector = Collector(envs, dataset.normalizers, config["history_horizon"], config["discount"],
                                   config["reward_scale"], config["seed"], self.device)
        self.online_dataset: VAESequenceDataset | None = None
        self.rollout: dict[str, torch.Tensor] | None = None
        self.rollout_used = False  # whether the newest rollout's PPO pass has run
        self.collections = 0
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
            "rollout_used": self.rollout_used,
            "collections": self.collections,
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
        self.rollout_used = bool(state["rollout_used"])
        self.collections = int(state["collections"])
        self.rl_optimizer.load_state_dict(state["rl_optimizer"])
        self.value_net.load_state_dict(state["value_net"])
        self.rl_generator.set_state(state["rl_rng"])
        self.collector.env_steps = int(state["env_steps"])
        self.collector.episodes_started = int(state["episodes_started"])
        self.value_initialized = bool(state["value_initialized"])
        self.collector.restart_episodes()
        self._rebuild_online_dataset()

    # ----------------------------------------------------------------------------- offline batches
    def _rebuild_online_dataset(self) -> None:
        self.online_dataset = online_sequence_dataset(self.buffer, self.dataset, self.config, self.device)

    def _sample_batch(self) -> dict:
        return mixed_batch(self.dataset, self.online_dataset, self.config["online_sample_fraction"],
                           self.config["batch_size"], self.generator)

    # --------------------------------------------------------------------------------- schedule
    def _after_step(self, step: int) -> dict:
        cfg = self.config
        metrics: dict = {}
        if collection_steps(step, cfg["rl_warmup_steps"], cfg["rl_collect_freq"]):
            metrics.update(self.collect(cfg["rl_collect_steps"]))
        if self.rollout is not None and not self.rollout_used and step % cfg["rl_update_freq"] == 0:
            metrics.update(self.rl_update())
        return metrics

    def _flush_log(self, logger, last_time: float, last_step: int) -> dict[str, float]:
        self.metric_sums.add({"env_steps": float(self.env_steps)})
        return super()._flush_log(logger, last_time, last_step)

    def _checked_weights(self) -> list[torch.Tensor]:
        return [*super()._checked_weights(), *self.value_net.parameters()]

    # ------------------------------------------------------------------------------- collection
    @torch.no_grad()
    def collect(self, n_steps: int) -> dict:
        """`n_steps` environment steps with the current chain policy; sets the rollout of the next PPO pass."""
        if not self.value_initialized:
            critic = getattr(self.model, "critic", None)
            if critic is not None:  # start the on-policy value from the offline critic's V(s)
                self.value_net.load_state_dict(critic.value.state_dict())
            self.model.freeze_base()
            self.ema.freeze_base(source=self.model)
            self.value_initialized = True
        self.model.eval()
        decisions, returns_done = self.collector.collect(self.model, n_steps, self.rl_generator, self.buffer)
        self.rollout = finish_rollout(decisions, self.value_net, self.config["gae_lambda"])
        self.rollout["log_probs"] = rollout_log_probs(self.model, self.rollout)
        self.rollout_used = False
        self.collections += 1
        self._rebuild_online_dataset()
        metrics = {}
        explained = explained_variance(self.rollout["values"], self.rollout["returns"])
        if explained is not None:
            metrics["explained_variance"] = explained
        if returns_done:
            metadata = self.dataset.metadata
            metrics["online_episode_return"] = float(np.mean(returns_done))
            metrics["online_success_rate"] = float(np.mean(self.collector.successes_done))
            metrics["online_normalized_score"] = float(np.mean(
                episode_scores(returns_done, self.collector.successes_done, metadata)))
        return metrics

    # ---------------------------------------------------------------------------------- update
    def rl_update(self, rollout: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The PPO pass over `rollout` (default: the newest collection, which it marks used); returns the means
        of its minibatches' terms, `clip_fraction_first` and `rl_minibatches` (left on the device: the log
        rows check them)."""
        self.model.train()
        critic_only = self.collections <= self.config["rl_critic_warmup_collections"]

        def apply(loss: torch.Tensor) -> None:
            self._apply_gradients(loss, self.rl_optimizer)
            self._update_ema()

        done = ppo_pass(self.model, self.value_net, self.rollout if rollout is None else rollout, self.rl_config,
                        critic_only, self.rl_generator, apply)
        if rollout is None:
            self.rollout_used = True
        means = {name: torch.stack([terms[name] for terms in done]).mean() for name in done[0]}
        if critic_only:  # no policy step was taken: its terms would describe a policy loss never applied
            return {"rl_value_loss": means["rl_value_loss"], "rl_minibatches": float(len(done))}
        return {**means, "clip_fraction_first": done[0]["clip_fraction"], "rl_minibatches": float(len(done))}

    def close(self) -> None:
        self.collector.close()

    def train(self):
        try:
            return super().train()
        finally:
            self.close()
