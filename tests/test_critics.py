"""IQL critic: expectile regression orders V as the expectile says, TD targets and target-network updates."""

import copy

import pytest
import torch
from torch import nn

from diffuser.models.critics import IQLCritic, TwinQ
from diffuser.models.denoisers import mlp

MEANS = torch.tensor([1.0, -2.0])  # mean return of state 0 and state 1
SPREADS = torch.tensor([1.0, 2.0])  # returns are uniform on mean +- spread, set by the latent z in [-1, 1]


def toy_batch(n: int, generator: torch.Generator):
    state = torch.randint(0, 2, (n,), generator=generator)
    observations = torch.nn.functional.one_hot(state, 2).float()
    latents = 2 * torch.rand(n, 1, generator=generator) - 1
    returns = MEANS[state] + SPREADS[state] * latents[:, 0]
    return observations, latents, returns


def uniform_expectile(expectile: float) -> float:
    """The expectile of Uniform(-1, 1): solves tau (1 - u)^2 = (1 - tau) (1 + u)^2."""
    a, b = expectile**0.5, (1 - expectile) ** 0.5
    return (a - b) / (a + b)


def fit(parameters, loss_fn, steps, lr=3e-3):
    optimizer = torch.optim.Adam(parameters, lr=lr)
    for _ in range(steps):
        loss = loss_fn()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.fixture(scope="module")
def critic_with_learned_q():
    """Q(s, z) fitted to the return of (s, z) through q_loss: a one-step chunk that ends the episode."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    critic = IQLCritic(2, 1, hidden_dim=64, expectile=0.5, discount=0.99, action_horizon=1, target_update_rate=1.0)

    def q_loss():
        observations, latents, returns = toy_batch(256, generator)
        return critic.q_loss(observations, latents, returns[:, None], torch.zeros(256, 2), torch.ones(256))

    fit(critic.q.parameters(), q_loss, 800)
    critic.update_targets()  # rate 1: the targets become the fitted Q
    return critic


def test_value_follows_the_expectile_of_the_returns(critic_with_learned_q):
    generator = torch.Generator().manual_seed(1)
    states = torch.eye(2)
    values = {}
    for expectile in (0.1, 0.5, 0.9):
        critic = copy.deepcopy(critic_with_learned_q)
        critic.expectile = expectile

        def value_loss(critic=critic):
            observations, latents, _ = toy_batch(256, generator)
            return critic.value_loss(observations, latents)

        fit(critic.value.parameters(), value_loss, 600)
        with torch.no_grad():
            values[expectile] = critic.v(states)
        expected = MEANS + SPREADS * uniform_expectile(expectile)
        assert torch.allclose(values[expectile], expected, atol=0.15 * SPREADS.max()), (expectile, values[expectile])
    assert (values[0.9] > values[0.5]).all() and (values[0.5] > values[0.1]).all()
    assert torch.allclose(values[0.5], MEANS, atol=0.1), "expectile 0.5 is the mean"


def test_td_target_discounts_the_chunk_and_bootstraps_unless_done():
    critic = IQLCritic(3, 2, hidden_dim=16, expectile=0.7, discount=0.9, action_horizon=3, target_update_rate=0.005)
    last = critic.value[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.constant_(last.bias, 10.0)  # V(s') = 10 everywhere
    rewards = torch.tensor([[1.0, 2.0, 3.0], [1.0, 0.0, 0.0]])
    target = critic.td_target(rewards, torch.randn(2, 3), dones=torch.tensor([0.0, 1.0]))
    expected = torch.tensor([1 + 0.9 * 2 + 0.81 * 3 + 0.729 * 10, 1.0])
    torch.testing.assert_close(target, expected)


def test_floors_raise_the_targets_below_them_only():
    critic = IQLCritic(3, 2, hidden_dim=16, expectile=0.7, discount=0.9, action_horizon=1, target_update_rate=0.005)
    last = critic.value[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.constant_(last.bias, 10.0)  # V(s') = 10: TD targets 1 + 9 = 10
    observations, latents = torch.randn(2, 3), torch.randn(2, 2)
    rewards, next_observations, dones = torch.ones(2, 1), torch.randn(2, 3), torch.zeros(2)
    floors = torch.tensor([25.0, -float("inf")])  # raises row 0 to 25, leaves row 1 at its TD target
    batch = {"rewards": rewards, "next_observations": next_observations, "dones": dones, "return_floors": floors}
    terms = critic.q_loss_terms(observations, latents, batch, return_floor=True)
    with torch.no_grad():
        q = critic.q(observations, latents)
    torch.testing.assert_close(terms["q_loss"], torch.mean((q - torch.tensor([25.0, 10.0])) ** 2))
    assert terms["return_floor_share"].item() == 0.5
    plain = critic.q_loss_terms(observations, latents, batch, return_floor=False)
    assert set(plain) == {"q_loss"}
    torch.testing.assert_close(plain["q_loss"], torch.mean((q - 10.0) ** 2))


# cells of the corridor the return-floor learning test walks down
CORRIDOR = 30

def corridor_value_at_start(use_floors: bool, steps: int = 300) -> tuple[float, float]:
    """(V at the first cell, its true value) after training the critic on one recorded walk down a
    corridor of CORRIDOR cells, reward 1 on the last step (a terminal), 0 before."""
    torch.manual_seed(0)
    n, discount = CORRIDOR, 0.99
    critic = IQLCritic(n, 1, hidden_dim=32, expectile=0.7, discount=discount, action_horizon=1, target_update_rate=0.05)
    observations, latents = torch.eye(n), torch.zeros(n, 1)
    next_observations = torch.cat([observations[1:], observations[-1:]])
    rewards, dones = torch.zeros(n, 1), torch.zeros(n)
    rewards[-1, 0], dones[-1] = 1.0, 1.0
    returns = discount ** torch.arange(n - 1, -1, -1, dtype=torch.float32)  # the walk's return from each cell
    optimizer = torch.optim.Adam(list(critic.q.parameters()) + list(critic.value.parameters()), lr=3e-3)
    for _ in range(steps):
        loss = critic.value_loss(observations, latents) + critic.q_loss(
            observations, latents, rewards, next_observations, dones, returns if use_floors else None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        critic.update_targets()
    return critic.v(observations[:1]).item(), returns[0].item()


def test_return_floors_carry_a_far_reward_back_where_bootstrapping_has_not_yet():
    floored, true_value = corridor_value_at_start(True)
    bootstrapped, _ = corridor_value_at_start(False)
    assert abs(floored - true_value) < 0.1, (floored, true_value)
    assert bootstrapped < 0.3 * true_value, (bootstrapped, true_value)


def test_targets_move_toward_the_online_q_by_the_polyak_rate():
    torch.manual_seed(0)
    critic = IQLCritic(3, 2, hidden_dim=16, expectile=0.7, discount=0.9, action_horizon=1, target_update_rate=0.1)
    with torch.no_grad():
        for p in critic.q.parameters():
            p.add_(1.0)
    before = [p.clone() for p in critic.q_target.parameters()]
    critic.update_targets()
    for old, new, online in zip(before, critic.q_target.parameters(), critic.q.parameters(), strict=True):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * online)
    assert not any(p.requires_grad for p in critic.q_target.parameters())


def test_each_loss_trains_only_its_own_network():
    critic = IQLCritic(3, 2, hidden_dim=16, expectile=0.7, discount=0.9, action_horizon=2, target_update_rate=0.005)
    observations, latents = torch.randn(8, 3), torch.randn(8, 2)
    critic.value_loss(observations, latents).backward()
    assert all(p.grad is None for p in critic.q.parameters())
    assert any(p.grad is not None for p in critic.value.parameters())
    critic.zero_grad(set_to_none=True)
    critic.q_loss(observations, latents, torch.randn(8, 2), torch.randn(8, 3), torch.zeros(8)).backward()
    assert all(p.grad is None for p in critic.value.parameters())
    assert any(p.grad is not None for p in critic.q.parameters())


def test_stacked_twins_compute_two_independent_mlps_and_read_separate_twin_checkpoints():
    torch.manual_seed(0)
    separate = [mlp(5, 16, 1, activation=nn.ReLU) for _ in range(2)]  # the layout before the twins were stacked
    old_state = {f"q{m + 1}.{key}": value for m, net in enumerate(separate) for key, value in net.state_dict().items()}
    twins = TwinQ(3, 2, hidden_dim=16)
    twins.load_state_dict(old_state)
    observations, latents = torch.randn(8, 3), torch.randn(8, 2)
    expected = torch.stack([net(torch.cat([observations, latents], -1)).squeeze(-1) for net in separate])
    torch.testing.assert_close(twins(observations, latents), expected)
    # each twin's gradient comes from its own output only
    twins(observations, latents)[1].sum().backward()
    assert all(w.grad[0].abs().sum() == 0 and w.grad[1].abs().sum() > 0 for w in twins.weights)
    # a fresh pair starts as two different networks, each at nn.Linear's scale
    fresh = TwinQ(3, 2, hidden_dim=16)
    assert not torch.allclose(fresh.weights[0][0], fresh.weights[0][1])
    assert fresh.weights[1].abs().max() <= 1 / 16 ** 0.5


def test_fql_q_ensemble_computes_its_members_layer_normed_mlps():
    from diffuser.models.fql import HIDDEN_LAYERS, QEnsemble, network

    torch.manual_seed(0)
    members = [network(5, 16, 1, layer_norm=True) for _ in range(2)]  # Linear, GELU, LayerNorm, ..., Linear
    for net in members:
        for layer in net:
            if isinstance(layer, nn.LayerNorm):  # not the identity affine of a fresh LayerNorm
                nn.init.normal_(layer.weight)
                nn.init.normal_(layer.bias)
    ensemble = QEnsemble(3, 2, hidden_dim=16)
    with torch.no_grad():
        for m, net in enumerate(members):
            linears = [layer for layer in net if isinstance(layer, nn.Linear)]
            norms = [layer for layer in net if isinstance(layer, nn.LayerNorm)]
            assert len(norms) == HIDDEN_LAYERS
            for i, layer in enumerate(linears):
                ensemble.weights[i][m].copy_(layer.weight.t())
                ensemble.biases[i][m, 0].copy_(layer.bias)
            for i, norm in enumerate(norms):
                ensemble.norm_weights[i][m, 0].copy_(norm.weight)
                ensemble.norm_biases[i][m, 0].copy_(norm.bias)
    observations, actions = torch.randn(8, 3), torch.randn(8, 2)
    expected = torch.stack([net(torch.cat([observations, actions], -1)).squeeze(-1) for net in members])
    torch.testing.assert_close(ensemble(observations, actions), expected)
