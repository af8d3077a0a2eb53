"""IQL: implicit Q-learning (Kostrikov, Nair, Levine, "Offline Reinforcement Learning with Implicit
Q-Learning", ICLR 2022) with a Gaussian policy extracted by advantage-weighted regression.

The critic is the package's IQLCritic (diffuser/models/critics.py) over flattened action chunks
instead of VAE latents: V(s) is the `expectile` of min target-Q(s, a_data), Q bootstraps from V(s'),
and the target Q copies follow at `target_update_rate`. The policy is the paper's: a Gaussian whose
mean is tanh of an MLP and whose log-std is one learned vector, not a function of the state (the
authors' implementation, NormalTanhPolicy with state_dependent_std=False and no tanh-squashed
distribution), trained by maximising exp(beta * (min target-Q - V)) * log pi(a_data | s) with the
weights capped at 100. It acts with the mean, as the paper evaluates.

Published settings (the paper's appendix on experimental details): 2-layer MLPs of 256 units for the
policy, Q and V; Adam at 3e-4 for all of them; target rate 0.005; discount 0.99; expectile 0.7 and
beta 3 on MuJoCo locomotion, 0.9 and 10 on AntMaze. The schema holds these as `iql_hidden_dim`,
`iql_learning_rate`, `expectile`, `advantage_weight_beta`, `target_update_rate`, `discount`.
Where this differs from the paper, because one trainer trains every model: one optimizer over the
summed losses (the three losses touch disjoint parameters and Adam scales each parameter on its own,
so that matches three optimizers, except for the shared `grad_clip` norm and the cell's
`lr_schedule`, which here applies to the critics as well as the policy), and the evaluated policy is
the EMA copy (`ema_decay`), as for every model here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from diffuser.models.critics import IQLCritic
from diffuser.models.denoisers import mlp
from diffuser.models.settings import Settings
from diffuser.runtime.seeding import gaussian_noise

# The paper's networks have two hidden layers; IQLCritic's V and Q are built with two as well.
HIDDEN_LAYERS = 2
# The authors' implementation clamps the policy's log-std to this range.
LOG_STD_RANGE = (-5.0, 2.0)
# The paper caps the advantage weights exp(beta * A) at 100, so one sample cannot outweigh a batch.
MAX_ADVANTAGE_WEIGHT = 100.0


@dataclass(frozen=True)
class IQLConfig(Settings):
    action_horizon: int
    iql_hidden_dim: int
    iql_learning_rate: float
    expectile: float
    advantage_weight_beta: float
    discount: float
    target_update_rate: float
    critic_return_floor: bool
    critic_initial_value: float | None
    critic_max_value: float | None


class IQL(nn.Module):
    """Loss terms: `loss` (the sum), `actor_loss` (AWR), `value_loss` (expectile), `q_loss` (TD)."""

    def __init__(self, obs_dim: int, action_dim: int, config: IQLConfig | dict):
        """`config`: the typed view, or a cell config it is read from."""
        super().__init__()
        cfg = IQLConfig.view(config)
        self.action_horizon = cfg.action_horizon
        self.action_dim = action_dim
        self.beta = cfg.advantage_weight_beta
        self.return_floor = cfg.critic_return_floor
        # read by the Trainer: IQL trains at its published learning rate, not the diffusion models' one
        self.learning_rate = cfg.iql_learning_rate
        chunk_dim = cfg.action_horizon * action_dim
        self.policy_mean = mlp(obs_dim, cfg.iql_hidden_dim, chunk_dim, HIDDEN_LAYERS, activation=nn.ReLU)
        self.policy_log_std = nn.Parameter(torch.zeros(chunk_dim))
        self.critic = IQLCritic(obs_dim, chunk_dim, cfg.iql_hidden_dim, cfg.expectile, cfg.discount,
                                cfg.action_horizon, cfg.target_update_rate, cfg.critic_initial_value,
                                cfg.critic_max_value)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        """[N, obs_dim] -> the policy's mean action chunks [N, K, A] in [-1, 1]."""
        return torch.tanh(self.policy_mean(observations)).view(-1, self.action_horizon, self.action_dim)

    def log_prob(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """[N] log pi(actions | observations) for action chunks [N, K, A]."""
        std = self.policy_log_std.clamp(*LOG_STD_RANGE).exp()
        # validate_args=False: the argument checks read values back to the host, a GPU sync every step
        distribution = torch.distributions.Normal(self(observations).flatten(1), std, validate_args=False)
        return distribution.log_prob(actions.flatten(1)).sum(-1)

    @torch.no_grad()
    def advantage_weights(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """[B] exp(beta * (min target-Q(s, a) - V(s))), capped at MAX_ADVANTAGE_WEIGHT."""
        advantages = self.critic.q_min(observations, actions, target=True) - self.critic.v(observations)
        return torch.exp(self.beta * advantages).clamp(max=MAX_ADVANTAGE_WEIGHT)

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        observations = batch["observations"]
        actions = batch["actions"].flatten(1)  # [B, K*A]: a chunk is one action of the critic
        value_loss = self.critic.value_loss(observations, actions)
        q_terms = self.critic.q_loss_terms(observations, actions, batch, self.return_floor)
        weights = self.advantage_weights(observations, actions)
        actor_loss = -torch.mean(weights * self.log_prob(observations, batch["actions"]))
        total = actor_loss + value_loss + q_terms["q_loss"]
        return total, {"loss": total, "actor_loss": actor_loss, "value_loss": value_loss, **q_terms}

    @torch.no_grad()
    def act(self, observations, history_observations, history_actions, history_mask) -> torch.Tensor:
        """Same signature as DiffusionRL.act; the history is not used. The mean action, as IQL evaluates."""
        return self(observations)

    @torch.no_grad()
    def explore(self, observations, history_observations, history_actions, history_mask,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """[N, K, A]: a sample of the Gaussian policy, clipped to the action box; how IQL acts while it
        fine-tunes online (the paper's online phase samples from the policy; it evaluates with the mean)."""
        mean = self(observations).flatten(1)
        std = self.policy_log_std.clamp(*LOG_STD_RANGE).exp()
        noise = gaussian_noise(tuple(mean.shape), generator, mean.device)
        return (mean + std * noise).clamp(-1.0, 1.0).view(-1, self.action_horizon, self.action_dim)

    def after_optimizer_step(self) -> None:
        self.critic.update_targets()
