"""The Gaussian diffusion process over vectors: noise schedules, the DDPM loss and the samplers.

The process holds only the schedule; the network is passed in (`denoiser(x, timesteps, cond) ->
predicted noise`), so the denoiser and the process can each be swapped.

Sampling walks a descending sub-sequence of `n_sampling_steps` timesteps (all of them when it equals
`n_diffusion_steps`). Every step is the generalized DDIM update between two timesteps t > t'; its
noise level eta = 0 is deterministic DDIM and eta = 1 is the DDPM posterior q(x_t' | x_t, x_0) of
that strided pair, which is what `sampler="ddpm"` uses.

Why the predicted x_0 is clamped (`clip`): at the noisiest step alpha_bar is tiny (about 6e-6 for a
20-step cosine schedule), so x_0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar) multiplies the
denoiser's error by hundreds; clamping it to the data's range, and recomputing the noise from the
clamped x_0, keeps one bad early prediction from throwing the whole chain off the data.

For policy-gradient fine-tuning the denoising chain is also a policy whose actions are the
transitions x_j -> x_{j-1} (as in DPPO): each is Gaussian with the DDIM mean and a std of at least
`min_std`, so `sample_chain` explores and `chain_log_prob` is a differentiable density.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from diffuser.runtime.seeding import gaussian_noise

SAMPLERS = ("ddim", "ddpm")
# What the network predicts: the noise (Ho et al., 2020), the clean sample, or v = sqrt(a) eps - sqrt(1 - a) x_0
# (Salimans & Ho, 2022). Every sampler works through the (x_0, noise) pair the prediction implies.
PREDICTIONS = ("epsilon", "sample", "v")
# Cosine schedule offset s of Nichol & Dhariwal (2021): keeps the first betas from being vanishingly small.
COSINE_OFFSET = 0.008
MAX_BETA = 0.999
# Linear schedule of Ho et al. (2020) for 1000 steps; scaled by 1000 / n so that any n ends near pure noise.
LINEAR_BETA_RANGE_1000 = (1e-4, 0.02)
# log(2 pi e) / 2: entropy of a unit Gaussian per dimension.
HALF_LOG_2PI_E = 0.5 * math.log(2 * math.pi * math.e)
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def cosine_beta_schedule(n_steps: int) -> torch.Tensor:
    steps = torch.arange(n_steps + 1, dtype=torch.float64) / n_steps
    alpha_bar = torch.cos((steps + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=MAX_BETA)


def linear_beta_schedule(n_steps: int) -> torch.Tensor:
    scale = 1000 / n_steps
    low, high = LINEAR_BETA_RANGE_1000
    return torch.linspace(scale * low, scale * high, n_steps, dtype=torch.float64).clamp(max=MAX_BETA)


BETA_SCHEDULES = {"cosine": cosine_beta_schedule, "linear": linear_beta_schedule}


class GaussianDiffusion(nn.Module):
    def __init__(self, n_diffusion_steps: int, beta_schedule: str, prediction: str = "epsilon"):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"Unknown prediction {prediction!r}; use one of {PREDICTIONS}.")
        self.prediction = prediction
        if beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"Unknown beta_schedule {beta_schedule!r}; use one of {sorted(BETA_SCHEDULES)}.")
        if n_diffusion_steps < 2:
            raise ValueError(f"n_diffusion_steps must be at least 2, got {n_diffusion_steps}.")
        self.n_diffusion_steps = n_diffusion_steps
        betas = BETA_SCHEDULES[beta_schedule](n_diffusion_steps)
        # Derived from the config, so not saved with the weights.
        self.register_buffer("alphas_cumprod", torch.cumprod(1 - betas, 0).float(), persistent=False)

    # ------------------------------------------------------------------------------------- training
    def q_sample(self, x0: torch.Tensor, timesteps: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise."""
        alpha_bar = self.alphas_cumprod[timesteps][:, None]
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise

    def training_loss(
        self, denoiser, x0: torch.Tensor, cond: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """DDPM objective at a uniform random timestep: MSE between the network's output and its target
        (the noise, x_0 or v, by `prediction`). `weights` ([B], >= 0) weigh the samples; they are divided
        by their batch mean, so the loss keeps the unweighted one's scale; all zero, the loss is 0."""
        timesteps = torch.randint(0, self.n_diffusion_steps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        if self.prediction == "epsilon":
            target = noise
        elif self.prediction == "sample":
            target = x0
        else:
            alpha_bar = self.alphas_cumprod[timesteps][:, None]
            target = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0
        errors = ((denoiser(self.q_sample(x0, timesteps, noise), timesteps, cond) - target) ** 2).flatten(1).mean(1)
        if weights is None:
            return errors.mean()
        return (errors * weights).sum() / weights.sum().clamp_min(torch.finfo(errors.dtype).tiny)

    # ------------------------------------------------------------------------------------- sampling
    def sampling_timesteps(self, n_sampling_steps: int) -> torch.Tensor:
        """Descending, evenly spaced timesteps from T-1 to 0 ([S] long); one step means T-1 alone."""
        if not 1 <= n_sampling_steps <= self.n_diffusion_steps:
            raise ValueError(
                f"n_sampling_steps must lie in [1, n_diffusion_steps={self.n_diffusion_steps}], got {n_sampling_steps}."
            )
        grid = torch.linspace(self.n_diffusion_steps - 1, 0, n_sampling_steps, dtype=torch.float64)
        return grid.round().long().to(self.alphas_cumprod.device)

    def _alpha_bars(self, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha_bar at each step of the sub-sequence and at the step it moves to (1 after t = 0)."""
        alpha_bar = self.alphas_cumprod[timesteps]
        return alpha_bar, torch.cat([alpha_bar[1:], alpha_bar.new_ones(1)])

    def predict_x0(self, denoiser, x, timesteps, alpha_bar, cond, clip: float | None):
        """(x_0, noise) implied by the denoiser at x_t; with `clip`, x_0 in [-clip, clip] and noise made consistent."""
        out = denoiser(x, timesteps, cond)
        if self.prediction == "epsilon":
            eps = out
            x0 = (x - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
        elif self.prediction == "sample":
            x0 = out
            eps = (x - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()
        else:
            x0 = alpha_bar.sqrt() * x - (1 - alpha_bar).sqrt() * out
            eps = (1 - alpha_bar).sqrt() * x + alpha_bar.sqrt() * out
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
            eps = (x - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()
        return x0, eps

    @staticmethod
    def ddim_sigma(alpha_bar: torch.Tensor, alpha_bar_prev: torch.Tensor, eta: float) -> torch.Tensor:
        """Std of the noise a DDIM step t -> t' injects; eta = 1 gives the DDPM posterior std."""
        return eta * ((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)).clamp(min=0).sqrt()

    @staticmethod
    def ddim_mean(x0, eps, alpha_bar_prev, sigma):
        return alpha_bar_prev.sqrt() * x0 + (1 - alpha_bar_prev - sigma**2).clamp(min=0).sqrt() * eps

    @torch.no_grad()
    def sample(
        self,
        denoiser,
        cond: torch.Tensor,
        shape: tuple[int, ...],
        n_sampling_steps: int,
        sampler: str = "ddim",
        eta: float = 0.0,
        temperature: float = 1.0,
        clip: float | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Draw x_0 of `shape` ([B, D]) given `cond` ([B, C]).

        `temperature` scales the starting noise and every injected noise (0 gives the deterministic
        path from x_T = 0). `eta` is used by "ddim" only; "ddpm" is eta = 1.
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"Unknown sampler {sampler!r}; use one of {SAMPLERS}.")
        eta = 1.0 if sampler == "ddpm" else eta
        device = cond.device
        timesteps = self.sampling_timesteps(n_sampling_steps)
        alpha_bars, alpha_bars_prev = self._alpha_bars(timesteps)
        x = temperature * gaussian_noise(shape, generator, device)
        for i, t in enumerate(timesteps):
            alpha_bar, alpha_bar_prev = alpha_bars[i], alpha_bars_prev[i]
            x0, eps = self.predict_x0(denoiser, x, t.expand(shape[0]), alpha_bar, cond, clip)
            sigma = self.ddim_sigma(alpha_bar, alpha_bar_prev, eta)
            x = self.ddim_mean(x0, eps, alpha_bar_prev, sigma)
            if sigma > 0 and temperature > 0:
                x = x + temperature * sigma * gaussian_noise(shape, generator, device)
        return x

    # -------------------------------------------------------------------- the chain as a policy
    def step_stds(self, n_sampling_steps: int, min_std: float, eta: float = 1.0, std_scale=1.0) -> torch.Tensor:
        """[S] std of each transition of the chain policy: the DDIM sigma, floored at `min_std`, times
        `std_scale` (a float, or a learnable scalar tensor: the exploration an entropy bonus can widen)."""
        alpha_bars, alpha_bars_prev = self._alpha_bars(self.sampling_timesteps(n_sampling_steps))
        return self.ddim_sigma(alpha_bars, alpha_bars_prev, eta).clamp(min=min_std) * std_scale

    def step_entropies(
        self, latent_dim: int, n_sampling_steps: int, min_std: float, eta: float = 1.0, std_scale=1.0
    ) -> torch.Tensor:
        """[S] entropy (nats) of each transition's Gaussian; their sum is the chain's entropy given x_T."""
        return latent_dim * (HALF_LOG_2PI_E + self.step_stds(n_sampling_steps, min_std, eta, std_scale).log())

    def sample_chain(
        self,
        denoiser,
        cond: torch.Tensor,
        shape: tuple[int, int],
        n_sampling_steps: int,
        min_std: float,
        eta: float = 1.0,
        clip: float | None = None,
        generator: torch.Generator | None = None,
        std_scale=1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A stochastic pass: (chain [B, S+1, D] = x_T, ..., x_0; its log-probability [B]), without gradients.

        Every transition is N(DDIM mean with `eta`, max(sigma, min_std)^2), the density that
        `chain_log_prob` evaluates; x_0 is left unclamped so the stored chain is exactly what was drawn.
        """
        device = cond.device
        timesteps = self.sampling_timesteps(n_sampling_steps)
        alpha_bars, alpha_bars_prev = self._alpha_bars(timesteps)
        with torch.no_grad():
            stds = self.step_stds(n_sampling_steps, min_std, eta, std_scale)
        x = gaussian_noise(shape, generator, device)
        chain = [x]
        log_prob = torch.zeros(shape[0], device=device)
        with torch.no_grad():
            for i, t in enumerate(timesteps):
                alpha_bar, alpha_bar_prev = alpha_bars[i], alpha_bars_prev[i]
                x0, eps = self.predict_x0(denoiser, x, t.expand(shape[0]), alpha_bar, cond, clip)
                mean = self.ddim_mean(x0, eps, alpha_bar_prev, self.ddim_sigma(alpha_bar, alpha_bar_prev, eta))
                noise = gaussian_noise(shape, generator, device)
                x = mean + stds[i] * noise
                log_prob += -0.5 * (noise**2).sum(-1) - shape[1] * (HALF_LOG_2PI + stds[i].log())
                chain.append(x)
        return torch.stack(chain, dim=1), log_prob

    def transition_log_probs(
        self,
        denoiser,
        cond: torch.Tensor,
        states: torch.Tensor,
        next_states: torch.Tensor,
        step_indices: torch.Tensor,
        n_sampling_steps: int,
        min_std: float,
        eta: float = 1.0,
        clip: float | None = None,
        std_scale=1.0,
    ) -> torch.Tensor:
        """[B, D] per-dimension log N(next_states; mean(states), std^2) of B transitions, each at its own step
        `step_indices[b]` (0 = the first, noisiest, step of the `n_sampling_steps` sub-sequence) with its
        own condition `cond[b]`; differentiable in the denoiser. One network call for the whole batch, so
        an update can draw (decision, denoising step) pairs at random."""
        timesteps = self.sampling_timesteps(n_sampling_steps)
        alpha_bars, alpha_bars_prev = self._alpha_bars(timesteps)
        alpha_bar = alpha_bars[step_indices][:, None]  # [B, 1]
        alpha_bar_prev = alpha_bars_prev[step_indices][:, None]
        x0, eps = self.predict_x0(denoiser, states, timesteps[step_indices], alpha_bar, cond, clip)
        means = self.ddim_mean(x0, eps, alpha_bar_prev, self.ddim_sigma(alpha_bar, alpha_bar_prev, eta))
        stds = self.step_stds(n_sampling_steps, min_std, eta, std_scale)[step_indices][:, None]  # [B, 1]
        z = (next_states - means) / stds
        return -0.5 * z**2 - (HALF_LOG_2PI + stds.log())

    def chain_log_prob(
        self,
        denoiser,
        cond: torch.Tensor,
        chain: torch.Tensor,
        min_std: float,
        eta: float = 1.0,
        clip: float | None = None,
        per_step: bool = False,
        std_scale=1.0,
    ) -> torch.Tensor:
        """[B] sum over the S transitions of log N(x_{j-1}; mean(x_j), std_j^2), or [B, S] with `per_step`
        (for ratios per denoising step, as DPPO takes them); differentiable in the denoiser."""
        batch, n_states, dim = chain.shape
        n_steps = n_states - 1
        steps = torch.arange(n_steps, device=chain.device).repeat(batch)  # [B*S], step index varies fastest
        log_probs = self.transition_log_probs(
            denoiser, cond.repeat_interleave(n_steps, dim=0), chain[:, :-1].reshape(-1, dim),
            chain[:, 1:].reshape(-1, dim), steps, n_steps, min_std, eta, clip, std_scale,
        ).sum(-1).view(batch, n_steps)
        return log_probs if per_step else log_probs.sum(-1)
