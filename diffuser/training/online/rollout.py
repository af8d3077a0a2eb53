"""Collection: the current chain policy acting in one persistent environment, and the rollout it leaves.

Each decision samples a denoising chain x_T .. x_0 with the chain policy, decodes x_0 into an action
chunk and executes it; the steps go into the online buffer, the decisions (condition inputs, chain,
per-step log-probabilities, chunk reward) form the rollout of the next RL updates, with GAE
advantages from the on-policy value network.

An environment's internal state cannot be saved, so an episode in progress when a run stops is cut
there and a new one starts on resume (reset seeds depend only on the episode index).
"""

from __future__ import annotations

import numpy as np
import torch

from diffuser.evaluation.policy import HistoryWindow
from diffuser.runtime.seeding import online_reset_seed
from diffuser.training.online.buffer import OnlineBuffer

DECISION_FIELDS = ("observations", "history_observations", "history_actions", "history_mask", "chains", "log_probs",
                   "rewards", "discounts", "terminals", "episode_ends", "next_observations")
STACKED_FIELDS = ("observations", "history_observations", "history_actions", "history_mask", "chains", "log_probs",
                  "next_observations")


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


class Collector:
    """Steps one environment with a model's chain policy, keeping the episode in progress between calls."""

    def __init__(self, env, normalizers: dict, history_horizon: int, discount: float, reward_scale: float, seed: int,
                 device):
        self.env = env
        self.obs_normalizer = normalizers["observations"]
        self.action_normalizer = normalizers["actions"]
        self.history_horizon = history_horizon
        self.discount, self.reward_scale, self.seed = discount, reward_scale, seed
        self.device = device
        self.env_steps = 0
        self.episodes_started = 0
        self.episode: dict | None = None  # the episode in progress (not checkpointed)
        self.successes_done: list[bool] = []  # success of each episode the last `collect` ended

    def _start_episode(self) -> None:
        observation, _ = self.env.reset(seed=online_reset_seed(self.seed, self.episodes_started))
        obs_dim, action_dim = self.obs_normalizer.dim, self.action_normalizer.dim
        self.episode = {
            "id": self.episodes_started,
            "observation": np.asarray(observation, dtype=np.float64),
            "return": 0.0,
            "success": False,
            "history": HistoryWindow(1, self.history_horizon, obs_dim, action_dim, self.device),
        }
        self.episodes_started += 1

    def _normalize_obs(self, observation: np.ndarray) -> torch.Tensor:
        raw = torch.as_tensor(observation, dtype=torch.float32, device=self.device)[None]
        return self.obs_normalizer.normalize(raw)

    @torch.no_grad()
    def collect(self, model, n_steps: int, generator: torch.Generator, buffer: OnlineBuffer):
        """`n_steps` environment steps with `model`'s chain policy, appended to `buffer`.

        Returns (decisions: DECISION_FIELDS -> list per decision, returns of the episodes that ended);
        `successes_done` then holds whether each of those episodes succeeded (the env's `success`).
        """
        decisions: dict[str, list] = {key: [] for key in DECISION_FIELDS}
        returns_done: list[float] = []
        self.successes_done = []
        done_steps = 0
        while done_steps < n_steps:
            if self.episode is None:
                self._start_episode()
            ep = self.episode
            obs = self._normalize_obs(ep["observation"])
            hist = ep["history"].tensors()
            cond = model.condition(obs, *hist)
            chain, _ = model.sample_latent_chain(cond, generator)
            log_probs = model.latent_chain_log_prob(cond, chain, per_step=True)
            chunk = model.decode_latents(obs, chain[:, -1]).clamp(-1.0, 1.0)[0]  # [K, A] normalized
            reward, factor, terminal, episode_end = 0.0, 1.0, False, False
            for action in chunk:
                raw_action = self.action_normalizer.unnormalize(action).cpu().numpy().astype(np.float64)
                next_observation, r, terminated, truncated, info = self.env.step(raw_action)
                buffer.add(ep["observation"], raw_action, float(r), bool(terminated), bool(truncated),
                           np.asarray(next_observation, dtype=np.float64), ep["id"])
                reward += factor * self.reward_scale * float(r)
                factor *= self.discount
                ep["return"] += float(r)
                ep["success"] |= bool(info.get("success", False))
                ep["history"].push(self._normalize_obs(ep["observation"]), action[None])
                ep["observation"] = np.asarray(next_observation, dtype=np.float64)
                done_steps += 1
                self.env_steps += 1
                if terminated or truncated:
                    terminal, episode_end = bool(terminated), True
                    returns_done.append(ep["return"])
                    self.successes_done.append(ep["success"])
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
                self.episode = None
        return decisions, returns_done

    def close(self) -> None:
        self.env.close()


@torch.no_grad()
def finish_rollout(decisions: dict[str, list], value_net, gae_lambda: float, device) -> dict[str, torch.Tensor]:
    """The decisions as tensors, with GAE advantages and returns from the on-policy `value_net`."""
    rollout = {key: torch.stack(decisions[key]) for key in STACKED_FIELDS}
    for key in ("rewards", "discounts"):
        rollout[key] = torch.tensor(decisions[key], dtype=torch.float32, device=device)
    for key in ("terminals", "episode_ends"):
        rollout[key] = torch.tensor(decisions[key], dtype=torch.bool, device=device)
    values = value_net(rollout["observations"]).squeeze(-1)
    next_values = value_net(rollout["next_observations"]).squeeze(-1)
    advantages = gae_advantages(
        rollout["rewards"].cpu().numpy(), values.cpu().numpy(), next_values.cpu().numpy(),
        rollout["discounts"].cpu().numpy(), rollout["terminals"].cpu().numpy(),
        rollout["episode_ends"].cpu().numpy(), gae_lambda,
    )
    rollout["advantages"] = torch.as_tensor(advantages, dtype=torch.float32, device=device)
    rollout["returns"] = rollout["advantages"] + values
    return rollout
