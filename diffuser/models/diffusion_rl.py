"""DiffusionRL: the latent diffusion policy (ActionVAE + TrajectoryEncoder + diffusion + IQL critic).

Acting: encode the history into c_t, sample latents from the diffusion conditioned on [c_t, s_t],
decode them into an action chunk. Sampling a generative policy re-adds the noise of the data it
imitates. A low `sampling_temperature` moves samples toward the mode; at 0 the DDIM path from
x_T = 0 is deterministic and lands near the conditional mean of the data's latents. Above 0, with
`use_value_function`, the policy draws `n_action_samples` latents per state and keeps the one whose
decoded chunk has the highest min-Q (at 0 all candidates would be equal, so one is drawn).
The default is temperature 1 (the learned distribution itself) with the best of 16 by Q: the critic
needs diverse candidates to choose among. Same trained weights (default config, 20000 steps, seeds
0-2, 20 episodes each), normalized score at temperature 0.3 / 1.0: generated UMaze 89.5 / 91.0,
generated Medium 47.2 / 69.4; on Medium the gain is at the goal (share of steps at the goal after
first reaching it 0.76 at 1.0, seed 0), which the data never shows held.

Training: one total loss for one optimizer. The diffusion's targets are the VAE encoder's means,
detached, so the diffusion loss cannot pull the VAE toward latents that are easy to denoise (e.g.
all equal) and collapse it; the VAE learns from its own loss only. The same detached latents are the
critic's actions. The diffusion loss weighs each sample by exp(advantage_weight_beta * (Q - V)) (AWR /
IQL policy extraction), so the policy imitates the data's better latents more than its worse ones;
Q-selection at acting time then chooses among candidates already tilted toward them. Same protocol
as above, beta 0 / 3: UMaze 91.0 / 95.9, Medium 69.4 / 75.6 (share of steps at the goal after first
reaching it, seed 0: UMaze 0.90 / 0.97, BC 0.96). A batch's `imitation_mask` (0 on its online rows
under `online_imitation` other than all) multiplies these weights: the diffusion then imitates only the
rows it keeps, while the critic and the VAE learn from every row.

Policy expansion (`offline_policy_candidates` k > 0, online only; Zhang, Xu and Yu, "Policy Expansion for
Bridging Offline-to-Online Reinforcement Learning", ICLR 2023): at the first collection the policy as it
stands (the EMA's encoder, denoiser and VAE) is copied and frozen; from then on k of the `n_action_samples`
candidates per decision come from that frozen offline policy and the rest from the policy training goes on
with, and the critic picks among all of them when evaluated and when the replay mode collects (the PPO
mode collects with the chain policy, which expansion leaves alone). Where online training
loses something the offline policy did well, the critic can still choose the offline policy's action there.
Two departures from PEX: its policy set picks by sampling in proportion to exp(Q / temperature), here by
the argmax over candidates DiffusionRL already uses; and its new policy starts fresh, here training goes on
from the offline weights. With `offline_policy_value_gate` g the choice between the two policies is made by
the state instead of by Q when the policy is evaluated: where the critic's V(s) is at least g the trained
policy acts (the best of its candidates by Q), below g the frozen one does; collection (`explore`) keeps
Q's choice among all candidates, so the trained policy still gathers its own data everywhere. Online
training sharpens the critic where the policy earns reward (near the goal of a maze) and leaves it flat
elsewhere, where Q's choice between the two policies is noise; there the offline policy, which online
training has not narrowed, keeps its way round walls.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from diffuser.models.critics import IQLCritic
from diffuser.models.denoisers import LatentDenoiser
from diffuser.models.diffusion import GaussianDiffusion
from diffuser.models.encoders import TrajectoryEncoder
from diffuser.models.settings import Settings
from diffuser.models.vae import ActionVAE

# The chain policy used for policy-gradient fine-tuning injects the DDPM posterior noise (eta = 1),
# floored at min_policy_std, as DPPO does.
CHAIN_ETA = 1.0
# The denoiser predicts the clean latent, not the noise. Acting follows a deterministic or
# low-temperature path from x_T near 0, where alpha_bar is ~1e-4: a noise prediction there is turned
# into x_0 by dividing by sqrt(alpha_bar), so its error is amplified ~100x (and clamped), while a
# clean-latent prediction is the conditional mean of the data latent directly. Measured on the
# generated UMaze data (hidden 128, 4000 steps, one seed): normalized score 33 with "epsilon",
# 33 with "v", 57 with "sample"; the deterministic action's MSE to a BC policy's fell from 0.048 to 0.026.
PREDICTION = "sample"
# The chain policy's stds are scaled by exp(chain_log_std), learned by the RL update only (the entropy
# bonus widens it, the policy gradient narrows it), kept within [1, e^2] times the floored stds.
CHAIN_LOG_STD_RANGE = (0.0, 2.0)
# Advantage weights exp(beta * A) are capped here, as in AWR and IQL's policy extraction (100 there):
# one sample must not outweigh a whole batch.
MAX_ADVANTAGE_WEIGHT = 100.0


def best_candidates(candidates: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """[N, ...]: each state's candidate (of `candidates` [N, n, ...]) with the highest of its `scores` [N, n]."""
    best = scores.argmax(dim=1)
    return candidates[torch.arange(best.shape[0], device=best.device), best]


@dataclass(frozen=True)
class DiffusionRLConfig(Settings):
    # the action VAE
    action_horizon: int
    vae_latent_dim: int
    hidden_dim: int
    vae_kl_weight: float
    vae_weight: float
    # the trajectory encoder
    history_horizon: int
    trajectory_latent_dim: int
    encoder_type: str
    history_actions: bool
    # the latent diffusion and how it acts
    denoiser_blocks: int
    n_diffusion_steps: int
    beta_schedule: str
    n_sampling_steps: int
    sampler: str
    ddim_eta: float
    sampling_temperature: float
    clip_denoised: bool
    min_policy_std: float
    # the critic
    use_value_function: bool
    n_action_samples: int
    advantage_weight_beta: float
    expectile: float
    discount: float
    target_update_rate: float
    critic_return_floor: bool
    critic_initial_value: float | None
    critic_max_value: float | None
    # online fine-tuning
    online_training: bool
    ft_denoising_steps: int
    offline_policy_candidates: int
    offline_policy_value_gate: float | None


class DiffusionRL(nn.Module):
    def __init__(self, obs_dim: int, action_dim: int, config: DiffusionRLConfig | dict):
        """`config`: the typed view, or a cell config it is read from."""
        super().__init__()
        cfg = DiffusionRLConfig.view(config)
        self.obs_dim = obs_dim
        self.action_dim = action_dim
        self.vae_weight = cfg.vae_weight
        self.n_sampling_steps = cfg.n_sampling_steps
        self.sampler = cfg.sampler
        self.ddim_eta = cfg.ddim_eta
        self.sampling_temperature = cfg.sampling_temperature
        self.min_policy_std = cfg.min_policy_std
        self.n_action_samples = cfg.n_action_samples
        self.advantage_weight_beta = cfg.advantage_weight_beta
        self.return_floor = cfg.critic_return_floor
        self.vae = self.build_vae(obs_dim, action_dim, cfg)
        self.latent_dim = self.vae.latent_dim
        self.clip = self.vae.latent_bound if cfg.clip_denoised else None
        self.trajectory_encoder = TrajectoryEncoder(obs_dim, action_dim, cfg.history_horizon, cfg.trajectory_latent_dim,
                                                    cfg.encoder_type, cfg.history_actions)
        self.denoiser = LatentDenoiser(self.latent_dim, cfg.trajectory_latent_dim + obs_dim, cfg.hidden_dim,
                                       cfg.denoiser_blocks)
        self.diffusion = GaussianDiffusion(cfg.n_diffusion_steps, cfg.beta_schedule, PREDICTION)
        self.chain_log_std = nn.Parameter(torch.zeros(()))  # trained by the online RL update only
        self.critic = None
        if cfg.use_value_function:
            self.critic = IQLCritic(obs_dim, self.latent_dim, cfg.hidden_dim, cfg.expectile, cfg.discount,
                                    cfg.action_horizon, cfg.target_update_rate, cfg.critic_initial_value,
                                    cfg.critic_max_value)
        # Online fine-tuning trains the last ft_denoising_steps of the chain only; the earlier ones are
        # taken by a frozen copy of the encoder and denoiser (DPPO's frozen `actor` beside `actor_ft`),
        # set by `freeze_base` when interaction starts. Built last and on a forked RNG, so an online cell
        # draws the same initial weights and offline noise as its offline twin.
        self.n_frozen_steps = max(cfg.n_sampling_steps - cfg.ft_denoising_steps, 0) if cfg.online_training else 0
        if self.n_frozen_steps > 0:
            with torch.random.fork_rng(devices=[]):
                self.base_encoder = TrajectoryEncoder(obs_dim, action_dim, cfg.history_horizon,
                                                      cfg.trajectory_latent_dim, cfg.encoder_type,
                                                      cfg.history_actions).requires_grad_(False)
                self.base_denoiser = LatentDenoiser(self.latent_dim, cfg.trajectory_latent_dim + obs_dim,
                                                    cfg.hidden_dim, cfg.denoiser_blocks).requires_grad_(False)
            self.register_buffer("base_frozen", torch.zeros((), dtype=torch.bool))
            self.register_buffer("base_chain_log_std", torch.zeros(()))  # the frozen steps' std scale
            # chain steps at timesteps above this one are the frozen ones
            self.first_tuned_timestep = int(self.diffusion.sampling_timesteps(cfg.n_sampling_steps)[self.n_frozen_steps])
        # Policy expansion: the frozen offline policy, set by `freeze_offline_policy` at the first collection;
        # built on a forked RNG for the same reason.
        self.n_offline_candidates = cfg.offline_policy_candidates if cfg.online_training else 0
        self.value_gate = cfg.offline_policy_value_gate if self.n_offline_candidates else None
        if self.n_offline_candidates > 0:
            with torch.random.fork_rng(devices=[]):
                self.offline_policy = nn.ModuleDict({
                    "encoder": TrajectoryEncoder(obs_dim, action_dim, cfg.history_horizon, cfg.trajectory_latent_dim,
                                                 cfg.encoder_type, cfg.history_actions),
                    "denoiser": LatentDenoiser(self.latent_dim, cfg.trajectory_latent_dim + obs_dim, cfg.hidden_dim,
                                               cfg.denoiser_blocks),
                    "vae": self.build_vae(obs_dim, action_dim, cfg),
                }).requires_grad_(False)
            self.register_buffer("offline_policy_frozen", torch.zeros((), dtype=torch.bool))

    @staticmethod
    def build_vae(obs_dim: int, action_dim: int, config: DiffusionRLConfig | dict) -> ActionVAE:
        """The action VAE this model owns, alone: the VAE pre-training step trains it."""
        cfg = DiffusionRLConfig.view(config)
        return ActionVAE(obs_dim, action_dim, cfg.action_horizon, cfg.vae_latent_dim, cfg.hidden_dim, cfg.vae_kl_weight)

    # ----------------------------------------------------------------------------------- training
    def condition(self, observations, history_observations, history_actions, history_mask) -> torch.Tensor:
        """The diffusion's condition [N, trajectory_latent_dim + obs_dim] = [c_t, s_t]."""
        context = self.trajectory_encoder(history_observations, history_actions, history_mask)
        return torch.cat([context, observations], dim=-1)

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        observations = batch["observations"]
        vae_loss, terms, mu = self.vae.loss_and_latent(observations, batch["actions"])
        latents = mu.detach()
        cond = self.condition(observations, batch["history_observations"], batch["history_actions"],
                              batch["history_mask"])
        advantages = None
        if self.critic is not None:
            terms["value_loss"], advantages = self.critic.value_loss_and_advantages(observations, latents)
        weights = self._weights_of(advantages)
        if "imitation_mask" in batch:  # online_imitation (online/mixing.py): 0 on the rows not imitated
            mask = batch["imitation_mask"]
            weights = mask if weights is None else weights * mask
        terms["diffusion_loss"] = self.diffusion.training_loss(self.denoiser, latents, cond, weights)
        if weights is not None:
            # Effective sample size of the weighted batch as a share of the batch: 1 = uniform weights,
            # near 1/B = one sample carries the loss (beta too large for the critic's advantages).
            terms["advantage_weight_ess"] = weights.sum() ** 2 / (weights.numel() * (weights**2).sum())
        total = terms["diffusion_loss"] + self.vae_weight * vae_loss
        if self.critic is not None:
            terms.update(self.critic.q_loss_terms(observations, latents, batch, self.return_floor))
            total = total + terms["value_loss"] + terms["q_loss"]
        terms["loss"] = total
        return total, terms

    @torch.no_grad()
    def advantage_weights(self, observations: torch.Tensor, latents: torch.Tensor) -> torch.Tensor | None:
        """[B] exp(beta * (min target-Q(s, z) - V(s))), capped, for the diffusion loss; None (plain imitation)
        without a critic or at beta 0. The diffusion then learns the data's latents tilted toward those the
        critic rates above the state's value, the policy extraction of AWR and IQL."""
        if self.critic is None:
            return None
        return self._weights_of(self.critic.q_min(observations, latents, target=True) - self.critic.v(observations))

    def _weights_of(self, advantages: torch.Tensor | None) -> torch.Tensor | None:
        if advantages is None or self.advantage_weight_beta == 0:
            return None
        return torch.exp(self.advantage_weight_beta * advantages).clamp(max=MAX_ADVANTAGE_WEIGHT)

    def after_optimizer_step(self) -> None:
        if self.critic is not None:
            self.critic.update_targets()

    # ------------------------------------------------------------------------------------- acting
    @torch.no_grad()
    def sample_latents(self, observations, history_observations, history_actions, history_mask,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """[N, latent_dim]: one latent per state, the best of `n_action_samples` by min-Q when a critic exists;
        the sampler's noise from `generator` (default: the global RNG)."""
        cond = self.policy_condition(observations, history_observations, history_actions, history_mask)
        n = self.n_action_samples if self.critic is not None and not self.deterministic_sampling else 1
        candidates = self._draw(self._chain_denoiser, cond, n, self.clip, generator)
        if n == 1:
            return candidates
        repeated_obs = observations.repeat_interleave(n, dim=0)
        scores = self.critic.q_min(repeated_obs, self.reencode(repeated_obs, candidates)).view(-1, n)
        return best_candidates(candidates.view(-1, n, self.latent_dim), scores)

    def _draw(self, denoiser, cond: torch.Tensor, n: int, clip: float | None,
              generator: torch.Generator | None) -> torch.Tensor:
        """[N*n, latent_dim]: n latents per row of `cond` [N, C] from the sampler with `denoiser`, a state's n adjacent."""
        repeated_cond = cond.repeat_interleave(n, dim=0)
        return self.diffusion.sample(
            denoiser, repeated_cond, (repeated_cond.shape[0], self.latent_dim), self.n_sampling_steps,
            sampler=self.sampler, eta=self.ddim_eta, temperature=self.sampling_temperature, clip=clip,
            generator=generator,
        )

    @property
    def deterministic_sampling(self) -> bool:
        """True at temperature 0 (x_T = 0 and no injected noise, whatever the sampler): every draw for one
        condition is the same latent, so drawing `n_action_samples` candidates to choose among would only
        repeat it."""
        return self.sampling_temperature == 0

    def reencode(self, observations: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """The encoder's mean for the chunk `latents` decode to: the latent the critic was trained on for that chunk.

        Sampled latents can hold values no data latent has in dimensions the decoder ignores (where the
        encoder's means sit near 0); Q would extrapolate on them, so it scores the decoded chunk's own latent.
        """
        return self.vae.encode(observations, self.decode_latents(observations, latents))[0]

    def decode_latents(self, observations: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """[N, latent_dim] -> action chunks [N, K, A] in [-1, 1]; latents outside the data's box are clamped first."""
        bound = self.vae.latent_bound
        return self.vae.decode(observations, latents.clamp(-bound, bound))

    @torch.no_grad()
    def act(self, observations, history_observations, history_actions, history_mask,
            generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalized inputs -> normalized action chunks [N, K, A] in [-1, 1]; the sampler's noise from
        `generator` (default: the global RNG)."""
        if self._expansion_active():
            return self._expanded_act(observations, history_observations, history_actions, history_mask, generator,
                                      self.value_gate)
        latents = self.sample_latents(observations, history_observations, history_actions, history_mask, generator)
        return self.decode_latents(observations, latents)

    @torch.no_grad()
    def explore(self, observations, history_observations, history_actions, history_mask,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """How the replay online mode (utils.OnlineReplayTrainer) collects: as `act`, its sampling noise (from
        the collection stream) the exploration, except that under policy expansion Q picks among all
        candidates of both policies (no value gate), so the trained policy keeps acting, and learning from
        its own steps, wherever Q rates its candidates higher."""
        if self._expansion_active():
            return self._expanded_act(observations, history_observations, history_actions, history_mask, generator,
                                      None)
        return self.act(observations, history_observations, history_actions, history_mask, generator)

    # --------------------------------------------------------------------------- policy expansion
    def _expansion_active(self) -> bool:
        return self.n_offline_candidates > 0 and bool(self.offline_policy_frozen)

    def freeze_offline_policy(self, source: DiffusionRL) -> None:
        """Copy `source`'s encoder, denoiser and VAE into the frozen offline policy, once: later calls, and
        calls without policy expansion, change nothing."""
        if self.n_offline_candidates == 0 or bool(self.offline_policy_frozen):
            return
        self.offline_policy["encoder"].load_state_dict(source.trajectory_encoder.state_dict())
        self.offline_policy["denoiser"].load_state_dict(source.denoiser.state_dict())
        self.offline_policy["vae"].load_state_dict(source.vae.state_dict())
        self.offline_policy_frozen.fill_(True)

    def _expanded_act(self, observations, history_observations, history_actions, history_mask,
                      generator: torch.Generator | None, gate: float | None) -> torch.Tensor:
        """The best by min-Q of `n_action_samples` chunks per state: the first n - k from the trained policy,
        the last k from the frozen offline policy (decoded by its own VAE); each chunk is scored on the
        current VAE's latent for it, as `sample_latents` scores its candidates. With a `gate`, only the
        trained policy's candidates where V(s) >= gate, only the frozen policy's below."""
        n, k = self.n_action_samples, self.n_offline_candidates
        cond = self.policy_condition(observations, history_observations, history_actions, history_mask)
        own = self.decode_latents(observations.repeat_interleave(n - k, dim=0),
                                  self._draw(self._chain_denoiser, cond, n - k, self.clip, generator))
        frozen = self.offline_policy
        frozen_cond = torch.cat([frozen["encoder"](history_observations, history_actions, history_mask),
                                 observations], dim=-1)
        bound = frozen["vae"].latent_bound
        frozen_latents = self._draw(frozen["denoiser"], frozen_cond, k, self.clip, generator)
        theirs = frozen["vae"].decode(observations.repeat_interleave(k, dim=0), frozen_latents.clamp(-bound, bound))
        chunks = torch.cat([own.view(-1, n - k, *own.shape[1:]), theirs.view(-1, k, *theirs.shape[1:])], dim=1)
        repeated_obs = observations.repeat_interleave(n, dim=0)
        flat = chunks.flatten(0, 1)
        scores = self.critic.q_min(repeated_obs, self.vae.encode(repeated_obs, flat)[0]).view(-1, n)
        if gate is not None:
            scores = scores.masked_fill(~self._gate_allows(observations, n, k, gate), float("-inf"))
        return best_candidates(chunks, scores)

    def _gate_allows(self, observations: torch.Tensor, n: int, k: int, gate: float) -> torch.Tensor:
        """[N, n]: the candidates each state may take under the value gate: the trained policy's (the first
        n - k) where the critic's V(s) is at least the gate, the frozen policy's (the last k) below it."""
        trained_acts = self.critic.v(observations).view(-1, 1) >= gate
        trained_candidate = torch.arange(n, device=observations.device) < n - k
        return trained_candidate == trained_acts

    # ------------------------------------------------------- the denoising chain as a Gaussian policy
    @property
    def tuned_steps(self) -> range:
        """Indices (0 = the first, noisiest) of the chain steps online fine-tuning trains."""
        return range(self.n_frozen_steps, self.n_sampling_steps)

    def _base_active(self) -> bool:
        return self.n_frozen_steps > 0 and bool(self.base_frozen)

    def freeze_base(self, source: DiffusionRL | None = None) -> None:
        """Fix the first chain steps at `source`'s (default: this model's) current encoder and denoiser."""
        if self.n_frozen_steps == 0:
            return
        source = self if source is None else source
        self.base_encoder.load_state_dict(source.trajectory_encoder.state_dict())
        self.base_denoiser.load_state_dict(source.denoiser.state_dict())
        self.base_chain_log_std.copy_(source.chain_log_std.detach())
        self.base_frozen.fill_(True)

    def policy_condition(self, observations, history_observations, history_actions, history_mask) -> torch.Tensor:
        """The condition the sampler and the chain policy take: `condition`, and once the first steps are
        frozen, beside it the frozen encoder's [N, 2 C] (`_chain_denoiser` splits it)."""
        cond = self.condition(observations, history_observations, history_actions, history_mask)
        if not self._base_active():
            return cond
        base = torch.cat([self.base_encoder(history_observations, history_actions, history_mask), observations], -1)
        return torch.cat([cond, base], dim=-1)

    def _chain_denoiser(self, x: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The denoiser of the chain at each row's timestep: the frozen one above `first_tuned_timestep`."""
        if not self._base_active():
            return self.denoiser(x, timesteps, cond)
        tuned_cond, base_cond = cond.chunk(2, dim=-1)
        early = timesteps > self.first_tuned_timestep
        if bool(early.all()):
            return self.base_denoiser(x, timesteps, base_cond)
        if not bool(early.any()):
            return self.denoiser(x, timesteps, tuned_cond)
        return torch.where(early[:, None], self.base_denoiser(x, timesteps, base_cond),
                           self.denoiser(x, timesteps, tuned_cond))

    def sample_latent_chain(self, cond: torch.Tensor, generator: torch.Generator | None = None):
        """(chain [N, S+1, latent_dim] from x_T to x_0, its log-probability [N]) for the policy condition [N, C]."""
        return self.diffusion.sample_chain(self._chain_denoiser, cond, (cond.shape[0], self.latent_dim),
                                           self.n_sampling_steps, self.min_policy_std, eta=CHAIN_ETA,
                                           clip=self.clip, generator=generator, std_scale=self.chain_std_scale())

    def chain_std_scale(self) -> torch.Tensor:
        """exp(chain_log_std) within CHAIN_LOG_STD_RANGE: the factor on every chain-policy std; once the first
        steps are frozen, [S] with their own scale, fixed with them."""
        scale = self.chain_log_std.clamp(*CHAIN_LOG_STD_RANGE).exp()
        if not self._base_active():
            return scale
        frozen = torch.arange(self.n_sampling_steps, device=scale.device) < self.n_frozen_steps
        return torch.where(frozen, self.base_chain_log_std.clamp(*CHAIN_LOG_STD_RANGE).exp(), scale)

    def latent_chain_log_prob(self, cond: torch.Tensor, chain: torch.Tensor, per_step: bool = False) -> torch.Tensor:
        """[N] (or [N, S] per step) log-probability of `chain` under the current chain policy (policy condition
        `cond`); differentiable, and through `cond` also in the trajectory encoder when cond was built with gradients."""
        return self.diffusion.chain_log_prob(self._chain_denoiser, cond, chain, self.min_policy_std, eta=CHAIN_ETA,
                                             clip=self.clip, per_step=per_step, std_scale=self.chain_std_scale())

    def tuned_transition_log_probs(self, cond: torch.Tensor, states: torch.Tensor, next_states: torch.Tensor,
                                   steps: torch.Tensor) -> torch.Tensor:
        """[B, latent_dim] per-dimension log-probabilities of B transitions x_j -> x_{j-1} at chain steps `steps`
        (each in `tuned_steps`) under the trained denoiser, with `condition`'s [B, C]; differentiable."""
        return self.diffusion.transition_log_probs(self.denoiser, cond, states, next_states, steps,
                                                   self.n_sampling_steps, self.min_policy_std, eta=CHAIN_ETA,
                                                   clip=self.clip, std_scale=self.chain_std_scale())

    def chain_entropy(self) -> torch.Tensor:
        """Entropy (nats) of the chain policy's transitions given x_T, summed over the S steps;
        differentiable in `chain_log_std`."""
        return self.diffusion.step_entropies(self.latent_dim, self.n_sampling_steps, self.min_policy_std,
                                             CHAIN_ETA, self.chain_std_scale()).sum()
