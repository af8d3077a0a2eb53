"""ActionVAE: learns to reconstruct action chunks through its latent, and the KL weight's collapse threshold."""

import torch

from diffuser.models import ActionVAE

OBS_DIM, ACTION_DIM, HORIZON = 3, 2, 2


def chunk_data(n: int, generator: torch.Generator):
    """States and action chunks drawn independently: only the latent can tell the decoder the actions."""
    observations = torch.randn(n, OBS_DIM, generator=generator)
    actions = 1.8 * torch.rand(n, HORIZON, ACTION_DIM, generator=generator) - 0.9
    return observations, actions


def train_vae(kl_weight: float, steps: int = 400):
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    train_obs, train_actions = chunk_data(1024, generator)
    eval_obs, eval_actions = chunk_data(512, generator)
    vae = ActionVAE(OBS_DIM, ACTION_DIM, HORIZON, latent_dim=8, hidden_dim=64, kl_weight=kl_weight)

    @torch.no_grad()
    def reconstruction_errors():
        mu, _ = vae.encode(eval_obs, eval_actions)
        own = torch.mean((vae.decode(eval_obs, mu) - eval_actions) ** 2).item()
        swapped = torch.mean((vae.decode(eval_obs, mu.roll(1, dims=0)) - eval_actions) ** 2).item()
        return own, swapped

    initial, _ = reconstruction_errors()
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
    for _ in range(steps):
        index = torch.randint(0, len(train_obs), (128,), generator=generator)
        total, terms = vae.loss(train_obs[index], train_actions[index])
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert set(terms) == {"vae_loss", "vae_recon_loss", "vae_kl_loss"}
    assert torch.allclose(terms["vae_loss"], terms["vae_recon_loss"] + kl_weight * terms["vae_kl_loss"])
    return vae, initial, *reconstruction_errors()


def test_reconstruction_error_falls_and_decoder_uses_the_latent():
    vae, initial, final, with_other_latents = train_vae(kl_weight=0.05)
    assert final < 0.3 * initial, f"reconstruction MSE {final:.4f} vs initial {initial:.4f}"
    assert with_other_latents > 3 * final, "decoding another sample's latent must reconstruct much worse"
    decoded = vae.decode(torch.zeros(5, OBS_DIM), 10 * torch.randn(5, 8))
    assert decoded.shape == (5, HORIZON, ACTION_DIM) and decoded.abs().max() <= 1


def test_kl_weight_above_twice_the_action_variance_collapses_the_latent():
    # Uniform(-0.9, 0.9) actions have variance 0.27; a KL weight of 2 prices any information above its worth.
    _, initial, final, with_other_latents = train_vae(kl_weight=2.0)
    assert final > 0.8 * 0.27, "the collapsed decoder can only predict the mean action"
    assert abs(with_other_latents - final) < 0.05 * final, "a collapsed decoder ignores the latent"
