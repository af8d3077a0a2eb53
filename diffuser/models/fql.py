"""FQL: flow Q-learning (Park, Li, Levine, "Flow Q-Learning", ICML 2025).

Three parts, trained together:
- a behaviour flow policy: a velocity field v(s, x_t, t) trained by flow matching on the data's
  action chunks (x_t = (1 - t) x_0 + t a, x_0 ~ N(0, I), target a - x_0; `bc_flow_loss`); its
  actions come from `fql_flow_steps` Euler steps from noise;
- a one-step policy mu(s, z), z ~ N(0, I), that maximises Q while staying close to the flow policy:
  the squared distance to the flow's action from the same noise z (`distill_loss`, weighted by
  `fql_alpha`) plus -Q(s, mu(s, z)) (`actor_q_loss`; the critic is held fixed in this term);
- an ensemble of two Q(s, a) with target copies, trained by TD to r + discount * Q_target(s', mu(s', z'))
  with the ensemble aggregated by `fql_q_aggregation` (`q_loss`).
It acts with the one-step policy on fresh noise, clipped to [-1, 1], as the paper evaluates. An action
chunk of K steps is one action: its reward is the discounted sum over the chunk, bootstrapped with
discount^K (as the IQL critic here does).

Published settings (the paper's hyper-parameter table and the authors' configuration): MLPs of 4 x 512
(GELU; LayerNorm in the critic only), Adam at 3e-4, batch 256, discount 0.99, target rate 0.005, 10
flow steps, Q aggregated by the mean, the Q term not normalised; alpha is tuned per task:
`fql_alpha: null` (the schema default) takes the authors' value for the dataset's task
(PUBLISHED_ALPHAS) and their default, 10, for any other dataset.
Where this differs, because one trainer trains every model: one optimizer over the summed losses
(they touch disjoint parameters, so this matches separate Adam optimizers except for the shared
`grad_clip` norm and `lr_schedule`), and the evaluated policy is the EMA copy (`ema_decay`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from diffuser.models.ensembles import EnsembleMLP
from diffuser.models.settings import Settings
from diffuser.runtime.seeding import gaussian_noise

# The paper's networks: 4 hidden layers (of `fql_hidden_dim` units) for the policies and the critic.
HIDDEN_LAYERS = 4
N_CRITICS = 2
ACTION_BOUND = 1.0  # actions are scaled to [-1, 1] by the dataset
# The authors' per-task alpha (dataset-name prefix -> alpha), from the offline commands in the README of
# github.com/seohongpark/fql (the values behind the paper's tables); the first matching prefix wins.
PUBLISHED_ALPHAS = (
    ("ogbench:cube-", 300.0), ("ogbench:scene-", 300.0), ("ogbench:puzzle-", 1000.0),
    ("ogbench:humanoidmaze-", 30.0), ("ogbench:antsoccer-", 10.0), ("ogbench:antmaze-giant-", 10.0),
    ("antmaze-large-", 3.0), ("antmaze-medium-", 10.0), ("antmaze-umaze", 10.0),
)
AUTHORS_DEFAULT_ALPHA = 10.0  # their configuration's default, for tasks they did not tune


def published_alpha(dataset: str) -> float:
    """The authors' alpha for `dataset` (a cell's `dataset` value), or their default where none is published."""
    return next((alpha for prefix, alpha in PUBLISHED_ALPHAS if dataset.startswith(prefix)), AUTHORS_DEFAULT_ALPHA)


def network(in_dim: int, hidden_dim: int, out_dim: int, layer_norm: bool) -> nn.Sequential:
    """HIDDEN_LAYERS x (Linear, GELU[, LayerNorm]), then a Linear to `out_dim`: the authors' MLP."""
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(HIDDEN_LAYERS):
        layers += [nn.Linear(width, hidden_dim), nn.GELU()]
        if layer_norm:
            layers.append(nn.LayerNorm(hidden_dim))
        width = hidden_dim
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


class QEnsemble(EnsembleMLP):
    """N_CRITICS independent Q(s, a) networks (`network`'s layers, with LayerNorm), as the paper's critic,
    run as one batched module (ensembles.py)."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_dim: int):
        super().__init__(N_CRITICS, obs_dim + action_dim, hidden_dim, 1, HIDDEN_LAYERS, F.gelu, layer_norm=True)

    def forward(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """[B, obs_dim], [B, action_dim] -> [N_CRITICS, B]."""
        return super().forward(torch.cat([observations, actions], dim=-1)).squeeze(-1)


@dataclass(frozen=True)
class FQLConfig(Settings):
    action_horizon: int
    fql_hidden_dim: int
    fql_learning_rate: float
    fql_alpha: float | None
    dataset: str
    fql_flow_steps: int
    fql_q_aggregation: str
    discount: float
    target_update_rate: float


class FQL(nn.Module):
    """Loss terms: `loss` (the sum), `bc_flow_loss`, `distill_loss`, `actor_q_loss`, `q_loss`."""

    def __init__(self, obs_dim: int, action_dim: int, config: FQLConfig | dict):
        """`config`: the typed view, or a cell config it is read from."""
        super().__init__()
        cfg = FQLConfig.view(config)
        self.action_horizon = cfg.action_horizon
        self.action_dim = action_dim
        self.alpha = cfg.fql_alpha if cfg.fql_alpha is not None else published_alpha(cfg.dataset)
        self.flow_steps = cfg.fql_flow_steps
        self.q_aggregation = cfg.fql_q_aggregation
        self.target_update_rate = cfg.target_update_rate
        self.chunk_bootstrap = cfg.discount**cfg.action_horizon
        # read by the Trainer: FQL trains at its published learning rate, not the diffusion models' one
        self.learning_rate = cfg.fql_learning_rate
        chunk_dim = cfg.action_horizon * action_dim
        self.velocity = network(obs_dim + chunk_dim + 1, cfg.fql_hidden_dim, chunk_dim, layer_norm=False)
        self.one_step_policy = network(obs_dim + chunk_dim, cfg.fql_hidden_dim, chunk_dim, layer_norm=False)
        self.q = QEnsemble(obs_dim, chunk_dim, cfg.fql_hidden_dim)
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.register_buffer("chunk_discounts", cfg.discount ** torch.arange(cfg.action_horizon, dtype=torch.float32),
                             persistent=False)

    # ------------------------------------------------------------------------------------ policies
    def one_step_actions(self, observations: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """[N, obs_dim], [N, K*A] -> [N, K*A], not clipped (the distillation compares raw outputs)."""
        return self.one_step_policy(torch.cat([observations, noise], dim=-1))

    def flow_actions(self, observations: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """[N, K*A]: the behaviour flow's action from `noise`, by `fql_flow_steps` Euler steps, clipped."""
        x = noise
        for step in range(self.flow_steps):
            t = torch.full_like(x[:, :1], step / self.flow_steps)
            x = x + self.velocity(torch.cat([observations, x, t], dim=-1)) / self.flow_steps
        return x.clamp(-ACTION_BOUND, ACTION_BOUND)

    def aggregate(self, q_values: torch.Tensor) -> torch.Tensor:
        """[N_CRITICS, B] -> [B] by `fql_q_aggregation`."""
        return q_values.mean(0) if self.q_aggregation == "mean" else q_values.min(0).values

    # ------------------------------------------------------------------------------------- training
    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        observations = batch["observations"]
        actions = batch["actions"].flatten(1)  # [B, K*A]: a chunk is one action

        with torch.no_grad():
            next_observations = batch["next_observations"]
            next_actions = self.one_step_actions(next_observations, torch.randn_like(actions))
            next_q = self.aggregate(self.q_target(next_observations, next_actions.clamp(-ACTION_BOUND, ACTION_BOUND)))
            target = (batch["rewards"] * self.chunk_discounts).sum(-1) + self.chunk_bootstrap * (1.0 - batch["dones"]) * next_q
        q_loss = torch.mean((self.q(observations, actions) - target[None]) ** 2)

        noise = torch.randn_like(actions)
        t = torch.rand_like(actions[:, :1])
        x_t = (1.0 - t) * noise + t * actions
        predicted_velocity = self.velocity(torch.cat([observations, x_t, t], dim=-1))
        bc_flow_loss = torch.mean((predicted_velocity - (actions - noise)) ** 2)

        noise = torch.randn_like(actions)
        with torch.no_grad():
            flow_targets = self.flow_actions(observations, noise)
        policy_actions = self.one_step_actions(observations, noise)
        distill_loss = torch.mean((policy_actions - flow_targets) ** 2)
        actor_q_loss = -self.fixed_critic_q(observations, policy_actions.clamp(-ACTION_BOUND, ACTION_BOUND))

        total = bc_flow_loss + self.alpha * distill_loss + actor_q_loss + q_loss
        return total, {"loss": total, "bc_flow_loss": bc_flow_loss, "distill_loss": distill_loss,
                       "actor_q_loss": actor_q_loss, "q_loss": q_loss}

    def fixed_critic_q(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Mean over the batch and the ensemble of Q(s, actions), differentiable in `actions` only: the
        policy's Q term must not train the critic (one optimizer steps both)."""
        frozen = {name: p.detach() for name, p in self.q.named_parameters()}
        return torch.func.functional_call(self.q, frozen, (observations, actions)).mean()

    def after_optimizer_step(self) -> None:
        with torch.no_grad():
            torch._foreach_lerp_(list(self.q_target.parameters()), list(self.q.parameters()), self.target_update_rate)

    # --------------------------------------------------------------------------------------- acting
    @torch.no_grad()
    def act(self, observations, history_observations, history_actions, history_mask,
            generator: torch.Generator | None = None) -> torch.Tensor:
        """Same signature as DiffusionRL.act; the history is not used. The one-step policy on fresh noise."""
        noise = gaussian_noise((observations.shape[0], self.action_horizon * self.action_dim), generator,
                               observations.device)
        actions = self.one_step_actions(observations, noise).clamp(-ACTION_BOUND, ACTION_BOUND)
        return actions.view(-1, self.action_horizon, self.action_dim)

    # FQL's policy is stochastic through its input noise: it explores online exactly as it acts.
    explore = act
