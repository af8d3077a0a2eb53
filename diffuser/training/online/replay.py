"""Offline-to-online for the baselines (models.IQL, models.FQL): their own losses, on batches that mix
offline data with the steps the policy collects, as their papers fine-tune online.

IQL (Kostrikov, Nair, Levine, ICLR 2022, section 5.3) and FQL (Park, Li, Levine, 2025, offline-to-online
experiments) keep every offline loss and hyper-parameter online and add the new transitions to the
replay buffer that holds the offline data; there is no separate policy-gradient update. Here, with the
same schedule keys as DiffusionRL's online mode so the comparison is like for like:

- after `rl_warmup_steps` offline steps, every `rl_collect_freq` training steps the current model (not
  the EMA) acts with its exploring policy (`explore`: IQL samples its Gaussian, FQL its one-step policy
  on fresh noise) for `rl_collect_steps` environment steps in one persistent environment, executing
  each sampled action chunk as it does when evaluated; the steps go into the online buffer.
  `rl_collect_freq` / `rl_collect_steps` is the number of gradient steps per environment step (1 in
  both papers);
- once online steps exist, `online_sample_fraction` of every batch comes from them. The papers sample
  uniformly from the union of the offline and online data, so their online share grows from 0 toward
  a half over a run of as many online as offline steps; a fixed share is the same knob DiffusionRL's
  online mode has.

The PPO keys (`rl_update_freq`, `rl_learning_rate`, `ppo_clip`, `gae_lambda`, `policy_gradient_weight`,
`value_function_weight`, `entropy_weight`) are not read. Resume: the buffer, the collection RNG and
the counters are in every checkpoint; apart from the episode in progress (cut when a run stops, as in
rollout.py), resume is exact.
"""

from __future__ import annotations

import numpy as np
import torch

from diffuser.envs.make import make_env
from diffuser.envs.scores import episode_scores
from diffuser.evaluation.policy import HistoryWindow
from diffuser.runtime.seeding import COLLECTION_STREAM, generator, online_reset_seed
from diffuser.training.online.buffer import OnlineBuffer
from diffuser.training.online.mixing import mixed_batch, online_sequence_dataset
from diffuser.training.online.rollout import collection_steps
from diffuser.training.trainer import Trainer


class ExplorationCollector:
    """Steps one environment with a model's `explore` policy, chunk by chunk, keeping the episode in
    progress (and the rest of its chunk) between calls."""

    def __init__(self, env, normalizers: dict, history_horizon: int, seed: int, device):
        self.env = env
        self.obs_normalizer = normalizers["observations"]
        self.action_normalizer = normalizers["actions"]
        self.history_horizon = history_horizon
        self.seed = seed
        self.device = device
        self.env_steps = 0
        self.episodes_started = 0
        self.episode: dict | None = None  # the episode in progress (not checkpointed)

    def _start_episode(self) -> None:
        observation, _ = self.env.reset(seed=online_reset_seed(self.seed, self.episodes_started))
        self.episode = {
            "id": self.episodes_started,
            "observation": np.asarray(observation, dtype=np.float64),
            "return": 0.0,
            "success": False,
            "history": HistoryWindow(1, self.history_horizon, self.obs_normalizer.dim, self.action_normalizer.dim,
                                     self.device),
            "chunk": [],  # the normalized actions of the current chunk still to execute
        }
        self.episodes_started += 1

    def _normalized(self, observation: np.ndarray) -> torch.Tensor:
        raw = torch.as_tensor(observation, dtype=torch.float32, device=self.device)[None]
        return self.obs_normalizer.normalize(raw)

    @torch.no_grad()
    def collect(self, model, n_steps: int, rng: torch.Generator, buffer: OnlineBuffer):
        """`n_steps` environment steps appended to `buffer`; (returns, successes) of the episodes that ended."""
        returns, successes = [], []
        for _ in range(n_steps):
            if self.episode is None:
                self._start_episode()
            ep = self.episode
            obs = self._normalized(ep["observation"])
            if not ep["chunk"]:
                ep["chunk"] = list(model.explore(obs, *ep["history"].tensors(), generator=rng)[0].clamp(-1.0, 1.0))
            action = ep["chunk"].pop(0)
            raw_action = self.action_normalizer.unnormalize(action).cpu().numpy().astype(np.float64)
            next_observation, reward, terminated, truncated, info = self.env.step(raw_action)
            buffer.add(ep["observation"], raw_action, float(reward), bool(terminated), bool(truncated),
                       np.asarray(next_observation, dtype=np.float64), ep["id"])
            ep["return"] += float(reward)
            ep["success"] |= bool(info.get("success", False))
            ep["history"].push(obs, action[None])
            ep["observation"] = np.asarray(next_observation, dtype=np.float64)
            self.env_steps += 1
            if terminated or truncated:
                returns.append(ep["return"])
                successes.append(ep["success"])
                self.episode = None
        return returns, successes

    def close(self) -> None:
        self.env.close()


class OnlineReplayTrainer(Trainer):
    """A baseline's offline losses on offline + online batches, with collections on the online schedule."""

    def __init__(self, config: dict, dataset, model, run_dir, evaluator=None, device="cpu"):
        super().__init__(config, dataset, model, run_dir, evaluator=evaluator, device=device)
        # Built now so a dataset whose environment cannot be built stops before any training.
        env = make_env(dataset.metadata)
        self.rl_generator = generator(config["seed"], COLLECTION_STREAM)
        self.buffer = OnlineBuffer(dataset.obs_dim, dataset.action_dim)
        self.collector = ExplorationCollector(env, dataset.normalizers, config["history_horizon"], config["seed"],
                                              self.device)
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
        self.collector.episode = None  # the episode in progress restarts
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
        returns, successes = self.collector.collect(self.model, n_steps, self.rl_generator, self.buffer)
        self.online_dataset = online_sequence_dataset(self.buffer, self.dataset, self.config, self.device)
        if not returns:
            return {}
        return {"online_episode_return": float(np.mean(returns)),
                "online_normalized_score": float(np.mean(episode_scores(returns, successes, self.dataset.metadata)))}

    def close(self) -> None:
        self.collector.close()

    def train(self):
        try:
            return super().train()
        finally:
            self.close()
