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

import torch
from torch import nn

from diffuser.runtime.seeding import VALUE_NET_STREAM, isolated_rng, stream_seed
from diffuser.training.online.base import OnlineTrainer
from diffuser.training.online.rollout import explained_variance, finish_rollout
from diffuser.training.online.update import (
    RLUpdateConfig,
    make_value_net,
    ppo_pass,
    rl_parameter_groups,
    rollout_log_probs,
)
from diffuser.training.trainer import make_optimizer


class OnlineRLTrainer(OnlineTrainer):
    divergence_remedy = ("lower learning_rate (rl_learning_rate for policy_loss and entropy, rl_value_learning_rate for "
                         "rl_value_loss) or check the data")

    def __init__(self, config: dict, dataset, model: nn.Module, run_dir, evaluator=None, device="cpu",
                 read_saved_config=None):
        super().__init__(config, dataset, model, run_dir, evaluator=evaluator, device=device,
                         read_saved_config=read_saved_config)
        # built on its own stream: the training stream stays the offline twin's
        with isolated_rng(stream_seed(config["seed"], VALUE_NET_STREAM)):
            self.value_net = make_value_net(dataset.obs_dim, config["hidden_dim"]).to(self.device)
        self.rl_optimizer = make_optimizer(rl_parameter_groups(model, self.value_net, config["rl_value_learning_rate"]),
                                           config, config["rl_learning_rate"])
        self.rl_config = RLUpdateConfig.view(config)
        self.rollout: dict[str, torch.Tensor] | None = None
        self.rollout_used = False  # whether the newest rollout's PPO pass has run
        self.collections = 0
        self.value_initialized = False

    # -------------------------------------------------------------------------------------- state
    def _extra_state(self) -> dict:
        return {
            **super()._extra_state(),
            "rollout": self.rollout,
            "rollout_used": self.rollout_used,
            "collections": self.collections,
            "rl_optimizer": self.rl_optimizer.state_dict(),
            "value_net": self.value_net.state_dict(),
            "value_initialized": self.value_initialized,
        }

    def _load_extra_state(self, state: dict) -> None:
        super()._load_extra_state(state)
        self.rollout = state["rollout"]
        self.rollout_used = bool(state["rollout_used"])
        self.collections = int(state["collections"])
        self.rl_optimizer.load_state_dict(state["rl_optimizer"])
        self.value_net.load_state_dict(state["value_net"])
        self.value_initialized = bool(state["value_initialized"])

    # --------------------------------------------------------------------------------- schedule
    def _after_step(self, step: int) -> dict:
        metrics = super()._after_step(step)  # a collection, on the schedule
        if self.rollout is not None and not self.rollout_used and step % self.config["rl_update_freq"] == 0:
            metrics.update(self.rl_update())
        return metrics

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
        decisions, metrics = self._collect_steps(n_steps)
        self.rollout = finish_rollout(decisions, self.value_net, self.config["gae_lambda"])
        self.rollout["log_probs"] = rollout_log_probs(self.model, self.rollout)
        self.rollout_used = False
        self.collections += 1
        explained = explained_variance(self.rollout["values"], self.rollout["returns"])
        if explained is not None:
            metrics["explained_variance"] = explained
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
