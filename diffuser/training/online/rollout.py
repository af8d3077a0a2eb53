"""Collection: the current chain policy acting in `rl_num_envs` persistent environments, and the rollout it leaves.

The environments are stepped in lock-step, a plain list rather than gymnasium's SyncVectorEnv: its
autoreset and its one seed per `reset` call do not fit per-episode reset seeds. Each round samples
one denoising chain x_T .. x_0 per environment in a single batched call (the policy condition, the
chain and the decoding all batched over the environments), decodes x_0 into an action chunk and
executes the chunks action by action across the environments. The steps go into the online buffer;
the decisions (condition inputs, chain, chunk reward, environment index) form the rollout of the
next RL update, with GAE advantages from the on-policy value network computed per environment
(each environment's decisions are their own sequence).

A collection takes exactly `n_steps` environment steps summed over the environments. The budget is
spent action index by action index, environments in order, so in the last round the first
environments may take one more action of their chunk than the later ones; a chunk cut short by the
budget is a decision over fewer steps (its discount says how many) that bootstraps from the value
where it stopped, and its episode continues in the next collection.

Episodes are numbered in the order they start (environments in order within a round) and episode i
resets with `online_reset_seed(seed, i)`, so collection is reproducible for any number of
environments. An environment's internal state cannot be saved, so the episodes in progress when a
run stops are cut there and new ones start on resume.
"""

from __future__ import annotations

import numpy as np
import torch

from diffuser.evaluation.policy import HistoryWindow
from diffuser.runtime.seeding import online_reset_seed
from diffuser.training.online.buffer import OnlineBuffer

# Per decision: its inputs, what the chunk earned, and which environment took it (plus what the policy
# records of how it decided: the chain policy's sampled chain, `chains`).
DECISION_FIELDS = ("observations", "history_observations", "history_actions", "history_mask",
                   "rewards", "discounts", "terminals", "episode_ends", "next_observations", "env_ids")


def collection_steps(step: int, warmup: int, collect_freq: int) -> bool:
    """True when the training step `step` (1-based) is followed by a collection: steps warmup,
    warmup + freq, warmup + 2 freq, ... (from freq on when warmup is 0)."""
    return step >= max(warmup, 1) and (step - warmup) % collect_freq == 0


def gae_advantages(rewards, values, next_values, discounts, terminals, episode_ends, lam: float) -> np.ndarray:
    """Generalized advantage estimation over one environment's collected decisions (arrays of length N).

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


class Collector:
    """Steps a list of environments with a model's chain policy, keeping their episodes in progress between calls.

    `decide` is the policy: subclasses act otherwise (ExplorationCollector: the baselines' `explore`)."""

    def __init__(self, envs: list, normalizers: dict, history_horizon: int, discount: float, reward_scale: float,
                 seed: int, device):
        self.envs = envs
        self.obs_normalizer = normalizers["observations"]
        self.action_normalizer = normalizers["actions"]
        self.discount, self.reward_scale, self.seed = discount, reward_scale, seed
        self.device = device
        self.env_steps = 0
        self.episodes_started = 0
        n, obs_dim = len(envs), self.obs_normalizer.dim
        # the episodes in progress (not checkpointed): id (-1: none), raw observation, return, success
        self.episode_ids = np.full(n, -1, dtype=np.int64)
        self.observations = np.zeros((n, obs_dim))
        self.returns = np.zeros(n)
        self.successes = np.zeros(n, dtype=bool)
        self.history = HistoryWindow(n, history_horizon, obs_dim, self.action_normalizer.dim, device)
        self.successes_done: list[bool] = []  # success of each episode the last `collect` ended

    @property
    def num_envs(self) -> int:
        return len(self.envs)

    def restart_episodes(self) -> None:
        """Drop the episodes in progress (after a resume): every environment starts a new one next."""
        self.episode_ids[:] = -1

    def _start_episodes(self) -> None:
        idle = self.episode_ids < 0
        for i in np.flatnonzero(idle):
            observation, _ = self.envs[i].reset(seed=online_reset_seed(self.seed, self.episodes_started))
            self.episode_ids[i] = self.episodes_started
            self.episodes_started += 1
            self.observations[i] = observation
            self.returns[i], self.successes[i] = 0.0, False
        if idle.any():
            self.history.clear(torch.as_tensor(idle, device=self.device))

    def _normalize_obs(self, observations: np.ndarray) -> torch.Tensor:
        raw = torch.as_tensor(observations, dtype=torch.float32, device=self.device)
        return self.obs_normalizer.normalize(raw)

    def decide(self, model, obs: torch.Tensor, hist: tuple, generator: torch.Generator):
        """(normalized action chunks [N, K, A] in [-1, 1], per-environment records kept with each decision):
        one denoising chain per environment, decoded; the chain is recorded for the policy gradient."""
        chain, _ = model.sample_latent_chain(model.policy_condition(obs, *hist), generator)  # [N, S+1, D]
        return model.decode_latents(obs, chain[:, -1]).clamp(-1.0, 1.0), {"chains": chain}

    @torch.no_grad()
    def collect(self, model, n_steps: int, generator: torch.Generator, buffer: OnlineBuffer):
        """`n_steps` environment steps (summed over the environments) with `model`'s chain policy, appended to
        `buffer`.

        Returns (decisions: DECISION_FIELDS and `decide`'s records -> tensor stacked over decisions, each environment's in time
        order, returns of the episodes that ended); `successes_done` then holds whether each of those
        episodes succeeded (the env's `success`).
        """
        rounds: dict[str, list[torch.Tensor]] = {}
        returns_done: list[float] = []
        self.successes_done = []
        done_steps = 0
        n = self.num_envs
        while done_steps < n_steps:
            self._start_episodes()
            obs = self._normalize_obs(self.observations)  # [N, obs_dim]
            hist = self.history.tensors()
            chunks, records = self.decide(model, obs, hist, generator)  # [N, K, A] normalized
            raw_chunks = self.action_normalizer.unnormalize(chunks).cpu().numpy().astype(np.float64)
            rewards, factors = np.zeros(n), np.ones(n)
            spans = np.zeros(n, dtype=np.int64)
            terminals, ends = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
            acting = np.ones(n, dtype=bool)
            for k in range(chunks.shape[1]):
                stepped = np.zeros(n, dtype=bool)
                before = self.observations.copy()
                for i in np.flatnonzero(acting):
                    if done_steps >= n_steps:
                        break
                    next_observation, r, terminated, truncated, info = self.envs[i].step(raw_chunks[i, k])
                    buffer.add(before[i], raw_chunks[i, k], float(r), bool(terminated), bool(truncated),
                               np.asarray(next_observation, dtype=np.float64), int(self.episode_ids[i]))
                    rewards[i] += factors[i] * self.reward_scale * float(r)
                    factors[i] *= self.discount
                    self.returns[i] += float(r)
                    self.successes[i] |= bool(info.get("success", False))
                    self.observations[i] = next_observation
                    stepped[i], spans[i] = True, spans[i] + 1
                    done_steps += 1
                    if terminated or truncated:
                        terminals[i], ends[i] = bool(terminated), True
                        acting[i] = False
                self.history.push(self._normalize_obs(before), chunks[:, k],
                                  rows=torch.as_tensor(stepped, device=self.device))
                acting &= stepped  # an environment the budget stopped takes no further action this round
                if not acting.any():
                    break
            took = torch.as_tensor(spans > 0, device=self.device)
            for key, value in (("observations", obs), ("history_observations", hist[0]), ("history_actions", hist[1]),
                               ("history_mask", hist[2]), *records.items(),
                               ("rewards", torch.as_tensor(rewards, dtype=torch.float32)),
                               ("discounts", torch.as_tensor(factors, dtype=torch.float32)),
                               ("terminals", torch.as_tensor(terminals)), ("episode_ends", torch.as_tensor(ends)),
                               ("next_observations", self._normalize_obs(self.observations)),
                               ("env_ids", torch.arange(n))):
                rounds.setdefault(key, []).append(value.to(self.device)[took])
            for i in np.flatnonzero(ends):
                returns_done.append(float(self.returns[i]))
                self.successes_done.append(bool(self.successes[i]))
                self.episode_ids[i] = -1
        self.env_steps += done_steps
        return {key: torch.cat(values) for key, values in rounds.items()}, returns_done

    def close(self) -> None:
        for env in self.envs:
            env.close()


class ExplorationCollector(Collector):
    """The same collection with a model's exploring policy (`model.explore`: IQL samples its Gaussian,
    FQL its one-step policy on fresh noise, DiffusionRL its evaluated best-of-n sampler); it records
    nothing for a policy gradient."""

    def decide(self, model, obs: torch.Tensor, hist: tuple, generator: torch.Generator):
        return model.explore(obs, *hist, generator=generator).clamp(-1.0, 1.0), {}


@torch.no_grad()
def finish_rollout(decisions: dict[str, torch.Tensor], value_net, gae_lambda: float) -> dict[str, torch.Tensor]:
    """The decisions with their values, GAE advantages (per environment) and returns from the on-policy `value_net`."""
    rollout = dict(decisions)
    values = value_net(rollout["observations"]).squeeze(-1)
    next_values = value_net(rollout["next_observations"]).squeeze(-1)
    host = {key: rollout[key].cpu().numpy() for key in ("rewards", "discounts", "terminals", "episode_ends", "env_ids")}
    values_np, next_np = values.cpu().numpy(), next_values.cpu().numpy()
    advantages = np.zeros(len(values_np))
    for env in np.unique(host["env_ids"]):
        rows = np.flatnonzero(host["env_ids"] == env)  # this environment's decisions, in time order
        advantages[rows] = gae_advantages(host["rewards"][rows], values_np[rows], next_np[rows],
                                          host["discounts"][rows], host["terminals"][rows],
                                          host["episode_ends"][rows], gae_lambda)
    rollout["values"] = values
    rollout["advantages"] = torch.as_tensor(advantages, dtype=torch.float32, device=values.device)
    rollout["returns"] = rollout["advantages"] + values
    return rollout


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> float | None:
    """1 - Var(returns - values) / Var(returns): the share of the returns' variance the value function
    explains (1 perfect, 0 no better than a constant); None when the returns do not vary."""
    var = returns.var(unbiased=False)
    if var == 0:
        return None
    return float(1.0 - (returns - values).var(unbiased=False) / var)
