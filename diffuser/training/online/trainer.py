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

Resume: the buffer, the rollout, the RL optimizer, the value network, the collection RNG and the
counters are in every checkpoint. An environment's internal state cannot be saved, so an episode in
progress when the run stopped is cut where it was and a new one starts on resume (reset seeds depend
only on the episode index); apart from that episode, resume is exact.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from diffuser.datasets.sequence import VAESequenceDataset
from diffuser.envs.make import make_env
from diffuser.envs.scores import normalized_score
from diffuser.models.denoisers import mlp
from diffuser.runtime.seeding import COLLECTION_STREAM, generator, online_reset_seed
from diffuser.training.trainer import Trainer

BUFFER_FIELDS = ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations", "episode_ids")


def collection_steps(step: int, warmup: int, collect_freq: int) -> bool:
    """True when the training step `step` (1-based) is followed by a collection: steps warmup,
    warmup + freq, warmup + 2 freq, ... (from freq on when warmup is 0)."""
    return step >= max(warmup, 1) and (step - warmup) % collect_freq == 0


def gae_advantages(rewards, values, next_values, discounts, terminals, episode_ends, lam: float) -> np.ndarray:
    """Generalized advantage estimation over one collected segment of decisions (arrays of length N).

    `discounts[i]` is discount^k for the k environment steps decision i spanned; a terminal does not
    bootstrap, an episode end (terminal or time limit) stops the recursion, and the segment's last
    decision bootstraps from its next value only.
    """
    advantages = np.zeros(len(rewards))
    running = 0.0
    for i in reversed(range(len(rewards))):
        bootstrap = 0.0 if terminals[i] else discounts[i] * next_values[i]
        delta = rewards[i] + bootstrap - values[i]
        carry = 0.0 if (episode_ends[i] or i == len(rewards) - 1) else discounts[i] * lam * running
        running = delta + carry
        advantages[i] = running
    return advantages


class OnlineBuffer:
    """The environment steps collected so far, raw (unnormalized), with an episode id per step."""

    def __init__(self, obs_dim: int, action_dim: int):
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.rows: dict[str, list] = {name: [] for name in BUFFER_FIELDS}

    def __len__(self) -> int:
        return len(self.rows["rewards"])

    def add(self, observation, action, reward, terminal, timeout, next_observation, episode_id) -> None:
        for name, value in zip(BUFFER_FIELDS, (observation, action, reward, terminal, timeout, next_observation,
                                               episode_id), strict=True):
            self.rows[name].append(value)

    def arrays(self) -> dict[str, np.ndarray]:
        """The buffer in the processed-dataset format (docs/INTERFACES.md): steps grouped by episode."""
        episode_ids = np.asarray(self.rows["episode_ids"], dtype=np.int64)
        out = {
            "observations": np.asarray(self.rows["observations"], dtype=np.float32).reshape(-1, self.obs_dim),
            "actions": np.asarray(self.rows["actions"], dtype=np.float32).reshape(-1, self.action_dim),
            "rewards": np.asarray(self.rows["rewards"], dtype=np.float32),
            "terminals": np.asarray(self.rows["terminals"], dtype=bool),
            "timeouts": np.asarray(self.rows["timeouts"], dtype=bool),
            "next_observations": np.asarray(self.rows["next_observations"], dtype=np.float32).reshape(-1, self.obs_dim),
        }
        # steps are appended in time order and an episode's steps are contiguous
        boundaries = np.flatnonzero(np.diff(episode_ids)) + 1
        starts = np.concatenate([[0], boundaries]).astype(np.int64) if len(episode_ids) else np.zeros(0, np.int64)
        out["episode_starts"] = starts
        out["episode_lengths"] = np.diff(np.concatenate([starts, [len(episode_ids)]])).astype(np.int64)
        return out

    def state_dict(self) -> dict:
        return {name: torch.as_tensor(value) for name, value in self.arrays().items()} | {
            "episode_ids": torch.as_tensor(np.asarray(self.rows["episode_ids"], dtype=np.int64))
        }

    def load_state_dict(self, state: dict) -> None:
        n = len(state["episode_ids"])
        self.rows = {name: [] for name in BUFFER_FIELDS}
        for name in BUFFER_FIELDS:
            values = state[name].numpy()
            self.rows[name] = [values[i] for i in range(n)]


class OnlineRLTrainer(Trainer):
    def __init__(self, config: dict, dataset, model: nn.Module, run_dir, evaluator=None, device="cpu"):
        super().__init__(config, dataset, model, run_dir, evaluator=evaluator, device=device)
        # Built now so a dataset whose environment cannot be built stops before any training.
        self.env = make_env(dataset.metadata)
        self.value_net = mlp(dataset.obs_dim, config["hidden_dim"], 1, activation=nn.ReLU).to(self.device)
        rl_parameters = [
            *model.denoiser.parameters(),
            *model.trajectory_encoder.parameters(),
            model.chain_log_std,
            *self.value_net.parameters(),
        ]
        self.rl_optimizer = torch.optim.AdamW(rl_parameters, lr=config["rl_learning_rate"],
                                              weight_decay=config["weight_decay"])
        self.rl_generator = generator(config["seed"], COLLECTION_STREAM)
        self.buffer = OnlineBuffer(dataset.obs_dim, dataset.action_dim)
        self.online_dataset: VAESequenceDataset | None = None
        self.rollout: dict[str, torch.Tensor] | None = None
        self.env_steps = 0
        self.episodes_started = 0
        self.value_initialized = False
        self._episode: dict | None = None  # the episode in progress (not checkpointed)

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
        self.env_steps = int(state["env_steps"])
        self.episodes_started = int(state["episodes_started"])
        self.value_initialized = bool(state["value_initialized"])
        self._episode = None  # the episode in progress restarts
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
    def _start_episode(self) -> None:
        observation, _ = self.env.reset(seed=online_reset_seed(self.config["seed"], self.episodes_started))
        h = self.config["history_horizon"]
        self._episode = {
            "id": self.episodes_started,
            "observation": np.asarray(observation, dtype=np.float64),
            "return": 0.0,
            "history_observations": torch.zeros(1, h, self.dataset.obs_dim, device=self.device),
            "history_actions": torch.zeros(1, h, self.dataset.action_dim, device=self.device),
            "history_mask": torch.zeros(1, h, dtype=torch.bool, device=self.device),
        }
        self.episodes_started += 1

    def _normalize_obs(self, observation: np.ndarray) -> torch.Tensor:
        raw = torch.as_tensor(observation, dtype=torch.float32, device=self.device)[None]
        return self.dataset.normalizers["observations"].normalize(raw)

    @torch.no_grad()
    def collect(self, n_steps: int) -> dict:
        """`n_steps` environment steps with the current chain policy; sets the rollout of the next updates."""
        model, cfg = self.model, self.config
        if not self.value_initialized:
            critic = getattr(model, "critic", None)
            if critic is not None:  # start the on-policy value from the offline critic's V(s)
                self.value_net.load_state_dict(critic.value.state_dict())
            self.value_initialized = True
        model.eval()
        action_normalizer = self.dataset.normalizers["actions"]
        discount, scale = cfg["discount"], cfg["reward_scale"]
        decisions: dict[str, list] = {k: [] for k in (
            "observations", "history_observations", "history_actions", "history_mask", "chains", "log_probs",
            "rewards", "discounts", "terminals", "episode_ends", "next_observations")}
        returns_done: list[float] = []
        done_steps = 0
        while done_steps < n_steps:
            if self._episode is None:
                self._start_episode()
            ep = self._episode
            obs = self._normalize_obs(ep["observation"])
            hist = (ep["history_observations"], ep["history_actions"], ep["history_mask"])
            cond = model.condition(obs, *hist)
            chain, _ = model.sample_latent_chain(cond, self.rl_generator)
            log_probs = model.latent_chain_log_prob(cond, chain, per_step=True)
            chunk = model.decode_latents(obs, chain[:, -1]).clamp(-1.0, 1.0)[0]  # [K, A] normalized
            reward, factor, terminal, episode_end = 0.0, 1.0, False, False
            for action in chunk:
                raw_action = action_normalizer.unnormalize(action).cpu().numpy().astype(np.float64)
                next_observation, r, terminated, truncated, _ = self.env.step(raw_action)
                self.buffer.add(ep["observation"], raw_action, float(r), bool(terminated), bool(truncated),
                                np.asarray(next_observation, dtype=np.float64), ep["id"])
                reward += factor * scale * float(r)
                factor *= discount
                ep["return"] += float(r)
                self._push_history(ep, self._normalize_obs(ep["observation"]), action)
                ep["observation"] = np.asarray(next_observation, dtype=np.float64)
                done_steps += 1
                self.env_steps += 1
                if terminated or truncated:
                    terminal, episode_end = bool(terminated), True
                    returns_done.append(ep["return"])
                    break
                if done_steps >= n_steps:
                    break
            for key, value in (("observations", obs[0]), ("history_observations", hist[0][0]),
                               ("history_actions", hist[1][0]), ("history_mask", hist[2][0]), ("chains", chain[0]),
                               ("log_probs", log_probs[0]), ("rewards", reward), ("discounts", factor),
                               ("terminals", terminal), ("episode_ends", episode_end),
                               ("next_observations", self._normalize_obs(ep["observation"])[0])):
                decisions[key].append(value)
            if episode_end:
                self._episode = None
        self.rollout = self._finish_rollout(decisions)
        self._rebuild_online_dataset()
        metrics = {}
        if returns_done:
            metadata = self.dataset.metadata
            metrics["online_episode_return"] = float(np.mean(returns_done))
            metrics["online_normalized_score"] = float(np.mean(
                normalized_score(np.asarray(returns_done), metadata["ref_min_score"], metadata["ref_max_score"])))
        return metrics

    def _push_history(self, episode: dict, obs: torch.Tensor, action: torch.Tensor) -> None:
        episode["history_observations"] = torch.cat([episode["history_observations"][:, 1:], obs[:, None]], dim=1)
        episode["history_actions"] = torch.cat([episode["history_actions"][:, 1:], action[None, None]], dim=1)
        valid = torch.ones(1, 1, dtype=torch.bool, device=self.device)
        episode["history_mask"] = torch.cat([episode["history_mask"][:, 1:], valid], dim=1)

    def _finish_rollout(self, decisions: dict[str, list]) -> dict[str, torch.Tensor]:
        rollout = {}
        for key in ("observations", "history_observations", "history_actions", "history_mask", "chains", "log_probs",
                    "next_observations"):
            rollout[key] = torch.stack(decisions[key])
        for key in ("rewards", "discounts"):
            rollout[key] = torch.tensor(decisions[key], dtype=torch.float32, device=self.device)
        for key in ("terminals", "episode_ends"):
            rollout[key] = torch.tensor(decisions[key], dtype=torch.bool, device=self.device)
        values = self.value_net(rollout["observations"]).squeeze(-1)
        next_values = self.value_net(rollout["next_observations"]).squeeze(-1)
        advantages = gae_advantages(
            rollout["rewards"].cpu().numpy(), values.cpu().numpy(), next_values.cpu().numpy(),
            rollout["discounts"].cpu().numpy(), rollout["terminals"].cpu().numpy(),
            rollout["episode_ends"].cpu().numpy(), self.config["gae_lambda"],
        )
        rollout["advantages"] = torch.as_tensor(advantages, dtype=torch.float32, device=self.device)
        rollout["returns"] = rollout["advantages"] + values
        return rollout

    # ---------------------------------------------------------------------------------- update
    def rl_losses(self, rollout: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The RL terms on a rollout: clipped policy loss per denoising step, value loss, chain entropy."""
        model, cfg = self.model, self.config
        cond = model.condition(rollout["observations"], rollout["history_observations"],
                               rollout["history_actions"], rollout["history_mask"])
        log_probs = model.latent_chain_log_prob(cond, rollout["chains"], per_step=True)  # [N, S]
        advantages = rollout["advantages"]
        if len(advantages) > 1:
            # scaled, not centred: the value baseline already centres them, and scaling keeps each sign
            advantages = advantages / (advantages.std() + 1e-8)
        ratio = torch.exp(log_probs - rollout["log_probs"])
        clipped = ratio.clamp(1.0 - cfg["ppo_clip"], 1.0 + cfg["ppo_clip"])
        policy_loss = -torch.min(ratio * advantages[:, None], clipped * advantages[:, None]).mean()
        value_loss = torch.mean((self.value_net(rollout["observations"]).squeeze(-1) - rollout["returns"]) ** 2)
        entropy = model.chain_entropy()
        rl_loss = (cfg["policy_gradient_weight"] * policy_loss + cfg["value_function_weight"] * value_loss
                   - cfg["entropy_weight"] * entropy)
        return {"rl_loss": rl_loss, "policy_loss": policy_loss, "rl_value_loss": value_loss, "entropy": entropy,
                "clip_fraction": ((ratio - 1.0).abs() > cfg["ppo_clip"]).float().mean()}

    def rl_update(self, rollout: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
        """One gradient step of the RL losses on `rollout` (default: the newest collection)."""
        self.model.train()
        terms = self.rl_losses(self.rollout if rollout is None else rollout)
        self._raise_if_not_finite(terms, self.step, "lower rl_learning_rate")
        self._apply_gradients(terms["rl_loss"], self.rl_optimizer)
        self._update_ema()
        return {name: float(value.detach()) for name, value in terms.items()}

    def close(self) -> None:
        self.env.close()

    def train(self):
        try:
            return super().train()
        finally:
            self.close()


__all__ = ["OnlineBuffer", "OnlineRLTrainer", "collection_steps", "gae_advantages"]
