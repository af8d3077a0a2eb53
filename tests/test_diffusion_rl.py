"""DiffusionRL and BC as the trainer and the evaluator use them, and the trajectory encoder's masking."""

import pytest
import torch
import yaml
from conftest import ROOT

from diffuser.models import BC, DiffusionRL, TrajectoryEncoder

OBS_DIM, ACTION_DIM, HISTORY, HORIZON, LATENT = 5, 2, 3, 2, 4
TERMS = {"loss", "diffusion_loss", "vae_loss", "vae_recon_loss", "vae_kl_loss", "value_loss", "q_loss"}



def fit(model, batch, steps: int, lr: float) -> torch.Tensor:
    """`steps` Adam steps of model.loss on one batch; returns the last loss."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss, _ = model.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.after_optimizer_step()
    return loss

def schema_defaults() -> dict:
    schema = yaml.safe_load((ROOT / "diffuser" / "schemas" / "cell.schema.yaml").read_text())
    return {key: spec["default"] for key, spec in schema["properties"].items()}


def tiny_config(**overrides) -> dict:
    return {
        **schema_defaults(),
        "hidden_dim": 32,
        "vae_latent_dim": LATENT,
        "trajectory_latent_dim": 8,
        "denoiser_blocks": 1,
        "history_horizon": HISTORY,
        "action_horizon": HORIZON,
        "n_diffusion_steps": 10,
        "n_sampling_steps": 3,
        "n_action_samples": 4,
        **overrides,
    }


def synthetic_batch(batch_size: int = 32, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch_size, HISTORY, generator=g) < 0.7
    return {
        "history_observations": torch.randn(batch_size, HISTORY, OBS_DIM, generator=g) * mask[..., None],
        "history_actions": (2 * torch.rand(batch_size, HISTORY, ACTION_DIM, generator=g) - 1) * mask[..., None],
        "history_mask": mask,
        "observations": torch.randn(batch_size, OBS_DIM, generator=g),
        "actions": 2 * torch.rand(batch_size, HORIZON, ACTION_DIM, generator=g) - 1,
        "rewards": torch.rand(batch_size, HORIZON, generator=g),
        "next_observations": torch.randn(batch_size, OBS_DIM, generator=g),
        "dones": (torch.rand(batch_size, generator=g) < 0.1).float(),
    }


def act_inputs(batch: dict):
    return batch["observations"], batch["history_observations"], batch["history_actions"], batch["history_mask"]


def fixed_noise_loss(model, batch):
    torch.manual_seed(123)  # the same timesteps and noise for every evaluation
    return model.loss(batch)


@pytest.mark.parametrize("use_value_function", [True, False])
def test_loss_reports_every_term_and_a_few_steps_lower_it(use_value_function):
    torch.manual_seed(0)
    model = DiffusionRL(OBS_DIM, ACTION_DIM, tiny_config(use_value_function=use_value_function))
    batch = synthetic_batch()
    total, terms = fixed_noise_loss(model, batch)
    # the default advantage weights need the critic, and report their effective size
    expected = TERMS | {"advantage_weight_ess"} if use_value_function else TERMS - {"value_loss", "q_loss"}
    assert set(terms) == expected and terms["loss"] is total
    assert all(torch.isfinite(v) and v.ndim == 0 for v in terms.values())
    parts = terms["diffusion_loss"] + terms["vae_loss"] + terms.get("value_loss", 0) + terms.get("q_loss", 0)
    torch.testing.assert_close(total, parts)
    fit(model, batch, steps=30, lr=1e-3)
    after, after_terms = fixed_noise_loss(model, batch)
    # The diffusion predicts the clean latent, whose scale grows while the VAE spreads its latents out,
    # so its term starts near 0 and need not fall at first; the total and the VAE's loss must.
    assert after < 0.9 * total, f"total loss {total.item():.4f} -> {after.item():.4f}"
    assert after_terms["vae_loss"] < 0.9 * terms["vae_loss"]


def test_diffusion_loss_does_not_train_the_vae():
    model = DiffusionRL(OBS_DIM, ACTION_DIM, tiny_config())
    torch.nn.init.normal_(model.denoiser.output[-1].weight, std=0.1)  # as after training: not the zero start
    _, terms = model.loss(synthetic_batch())
    terms["diffusion_loss"].backward()
    assert all(p.grad is None for p in model.vae.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.trajectory_encoder.parameters())


def test_after_optimizer_step_moves_the_target_q():
    model = DiffusionRL(OBS_DIM, ACTION_DIM, tiny_config(target_update_rate=0.5))
    with torch.no_grad():
        for p in model.critic.q.parameters():
            p.add_(1.0)
    before = [p.clone() for p in model.critic.q_target.parameters()]
    model.after_optimizer_step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.critic.q_target.parameters(), strict=True))


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"use_value_function": False},
        {"sampler": "ddpm", "n_sampling_steps": 10},
        {"ddim_eta": 1.0, "sampling_temperature": 0.5, "encoder_type": "transformer"},
        {"clip_denoised": False, "beta_schedule": "linear", "sampling_temperature": 0.0},
    ],
)
def test_act_returns_bounded_action_chunks(overrides):
    torch.manual_seed(0)
    model = DiffusionRL(OBS_DIM, ACTION_DIM, tiny_config(**overrides))
    inputs = act_inputs(synthetic_batch(7))
    torch.manual_seed(1)
    actions = model.act(*inputs)
    assert actions.shape == (7, HORIZON, ACTION_DIM)
    assert torch.isfinite(actions).all() and actions.abs().max() <= 1
    # the chunks are the decoder's output for the latents the policy samples (same noise), one per state
    torch.manual_seed(1)
    latents = model.sample_latents(*inputs)
    torch.testing.assert_close(actions, model.decode_latents(inputs[0], latents))
    assert not torch.allclose(actions[0], actions[1]), "different states get different chunks"


class DistanceQ(torch.nn.Module):
    """A hand-set twin Q: minus the distance of z to a chosen latent, the second network a little lower."""

    def __init__(self, best_latent: torch.Tensor):
        super().__init__()
        self.best_latent = best_latent

    def forward(self, observations, latents):
        q = -(latents - self.best_latent).norm(dim=-1)
        return torch.stack([q, q - 0.1])


def test_act_with_a_critic_returns_the_candidate_with_the_highest_q():
    torch.manual_seed(0)
    n_samples, n_envs = 6, 5
    model = DiffusionRL(OBS_DIM, ACTION_DIM, tiny_config(n_action_samples=n_samples, sampling_temperature=1.0))
    candidates = torch.randn(n_envs * n_samples, LATENT)
    target = 0.1 * torch.randn(LATENT)  # near the re-encoded latents, which an untrained encoder keeps small
    calls = []

    def fake_sample(denoiser, cond, shape, *args, **kwargs):
        calls.append(shape)
        return candidates

    model.diffusion.sample = fake_sample
    model.critic.q = DistanceQ(target)
    batch = synthetic_batch(n_envs)
    actions = model.act(*act_inputs(batch))

    assert calls == [(n_envs * n_samples, LATENT)], "all candidates of all envs come from one sampling call"
    # The critic scores the latent the VAE gives each candidate's decoded chunk.
    scored = model.reencode(batch["observations"].repeat_interleave(n_samples, dim=0), candidates)
    best = (scored.view(n_envs, n_samples, LATENT) - target).norm(dim=-1).argmin(dim=1)
    assert len(set(best.tolist())) > 1, "the test needs different winners per env"
    chosen = candidates.view(n_envs, n_samples, LATENT)[torch.arange(n_envs), best]
    torch.testing.assert_close(actions, model.vae.decode(batch["observations"], chosen))


def test_deterministic_sampling_draws_one_latent_per_state_and_skips_the_critic():
    """At temperature 0 every candidate would be the same latent: one is drawn, and Q is not asked."""
    torch.manual_seed(0)
    model = DiffusionRL(OBS_DIM, ACTION_DIM, tiny_config(n_action_samples=8, sampling_temperature=0.0))
    calls = []
    original = model.diffusion.sample

    def recording_sample(denoiser, cond, shape, *args, **kwargs):
        calls.append(shape)
        return original(denoiser, cond, shape, *args, **kwargs)

    def no_q(*args, **kwargs):
        raise AssertionError("the critic must not be consulted when all candidates are equal")

    model.diffusion.sample = recording_sample
    model.critic.q_min = no_q
    batch = synthetic_batch(5)
    actions = model.act(*act_inputs(batch))
    assert calls == [(5, LATENT)]
    model.diffusion.sample = original
    stochastic = DiffusionRL(OBS_DIM, ACTION_DIM, tiny_config(n_action_samples=8, sampling_temperature=0.0,
                                                              use_value_function=False))
    stochastic.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("critic.")})
    torch.testing.assert_close(actions, stochastic.act(*act_inputs(batch)))


def test_chain_policy_log_prob_matches_its_sampler_and_has_gradients():
    torch.manual_seed(0)
    model = DiffusionRL(OBS_DIM, ACTION_DIM, tiny_config())
    inputs = act_inputs(synthetic_batch(6))
    chain, log_prob = model.sample_latent_chain(model.condition(*inputs).detach())
    assert chain.shape == (6, model.n_sampling_steps + 1, LATENT)
    recomputed = model.latent_chain_log_prob(model.condition(*inputs), chain)
    torch.testing.assert_close(recomputed, log_prob, rtol=1e-4, atol=1e-3)
    recomputed.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.denoiser.parameters())
    assert model.chain_entropy().ndim == 0
    assert model.decode_latents(inputs[0], chain[:, -1]).abs().max() <= 1


@pytest.mark.parametrize("kind", ["gru", "transformer"])
def test_trajectory_encoder_ignores_masked_steps(kind):
    torch.manual_seed(0)
    encoder = TrajectoryEncoder(OBS_DIM, ACTION_DIM, history_horizon=4, latent_dim=8, kind=kind, use_actions=True)
    observations, actions = torch.randn(6, 4, OBS_DIM), torch.randn(6, 4, ACTION_DIM)
    mask = torch.tensor([[True] * 4, [False, True, True, True], [False, False, True, True],
                         [False, False, False, True], [False] * 4, [True, False, True, False]])
    reference = encoder(observations, actions, mask)
    garbage_obs = torch.where(mask[..., None], observations, 100 * torch.randn_like(observations))
    garbage_actions = torch.where(mask[..., None], actions, 100 * torch.randn_like(actions))
    torch.testing.assert_close(encoder(garbage_obs, garbage_actions, mask), reference)
    changed = encoder(observations, actions + mask[..., None], mask)
    assert not torch.allclose(changed[:4], reference[:4]), "valid steps must matter"
    torch.testing.assert_close(changed[4], reference[4])


def test_bc_learns_a_chunk_and_keeps_the_act_signature():
    torch.manual_seed(0)
    model = BC(OBS_DIM, ACTION_DIM, tiny_config())
    batch = synthetic_batch(64)
    batch["actions"] = torch.tanh(batch["observations"][:, None, :ACTION_DIM].expand(-1, HORIZON, -1))
    initial, terms = model.loss(batch)
    assert set(terms) == {"loss", "bc_loss"} and terms["loss"] is initial
    loss = fit(model, batch, steps=200, lr=3e-3)
    assert loss < 0.1 * initial
    actions = model.act(*act_inputs(batch))
    assert actions.shape == (64, HORIZON, ACTION_DIM) and actions.abs().max() <= 1


def test_advantage_weights_follow_the_critic_and_reach_the_diffusion_loss():
    batch = synthetic_batch(64)
    model = DiffusionRL(OBS_DIM, ACTION_DIM, tiny_config(advantage_weight_beta=2.0))
    fit(model, batch, 30, 1e-2)  # a critic whose advantages differ across the batch
    observations = batch["observations"]
    latents = model.vae.encode(observations, batch["actions"])[0].detach()
    weights = model.advantage_weights(observations, latents)
    advantages = model.critic.q_min(observations, latents, target=True) - model.critic.v(observations)
    assert weights.shape == (64,) and (weights > 0).all()
    assert torch.equal(weights.argsort(), advantages.detach().argsort())
    assert weights.max() / weights.min() > 1.05  # the weights are not all equal
    plain = DiffusionRL(OBS_DIM, ACTION_DIM, tiny_config(advantage_weight_beta=0.0))
    plain.load_state_dict(model.state_dict())
    assert plain.advantage_weights(observations, latents) is None
    weighted_loss = fixed_noise_loss(model, batch)[1]["diffusion_loss"]
    plain_loss = fixed_noise_loss(plain, batch)[1]["diffusion_loss"]
    assert not torch.isclose(weighted_loss, plain_loss)
    ess = fixed_noise_loss(model, batch)[1]["advantage_weight_ess"].item()
    assert 1 / 64 < ess < 1.0
    assert "advantage_weight_ess" not in fixed_noise_loss(plain, batch)[1]


def test_gru_first_step_from_zero_is_the_gru_cell():
    torch.manual_seed(0)
    encoder = TrajectoryEncoder(OBS_DIM, ACTION_DIM, history_horizon=1, latent_dim=8, kind="gru", use_actions=False)
    x = torch.randn(5, 8)
    torch.testing.assert_close(encoder._gru_from_zero(x), encoder.cell(x, torch.zeros(5, 8)))
