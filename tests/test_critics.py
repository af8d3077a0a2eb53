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
    critic = IQLCritic(2, 1, hidden_dim=64, expectile=0.5, discount=0.99, action_horizon=1, target_update_rate=1.0, initial_value=None, max_value=None)

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
    critic = IQLCritic(3, 2, hidden_dim=16, expectile=0.7, discount=0.9, action_horizon=3, target_update_rate=0.005, initial_value=None, max_value=None)
    last = critic.value[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.constant_(last.bias, 10.0)  # V(s') = 10 everywhere
    rewards = torch.tensor([[1.0, 2.0, 3.0], [1.0, 0.0, 0.0]])
    target = critic.td_target(rewards, torch.randn(2, 3), dones=torch.tensor([0.0, 1.0]))
    expected = torch.tensor([1 + 0.9 * 2 + 0.81 * 3 + 0.729 * 10, 1.0])
    torch.testing.assert_close(target, expected)


def test_floors_raise_the_targets_below_them_only():
    critic = IQLCritic(3, 2, hidden_dim=16, expectile=0.7, discount=0.9, action_horizon=1, target_update_rate=0.005, initial_value=None, max_value=None)
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

def corridor_value_at_start(use_floors: bool, steps: int = 300, step_reward: float = 0.0,
                             initial_value: float | None = None) -> tuple[float, float]:
    """(V at the first cell, its true value) after training the critic on one recorded walk down a
    corridor of CORRIDOR cells that ends in a terminal: reward 1 on the last step and 0 before, or with
    `step_reward` -1, OGBench's single-task rewards (-1 per step, 0 on the step that reaches the goal)."""
    torch.manual_seed(0)
    n, discount = CORRIDOR, 0.99
    critic = IQLCritic(n, 1, hidden_dim=32, expectile=0.7, discount=discount, action_horizon=1, target_update_rate=0.05,
                       initial_value=initial_value, max_value=None)
    observations, latents = torch.eye(n), torch.zeros(n, 1)
    next_observations = torch.cat([observations[1:], observations[-1:]])
    rewards, dones = torch.full((n, 1), step_reward), torch.zeros(n)
    rewards[-1, 0], dones[-1] = 1.0 + step_reward, 1.0
    returns = torch.zeros(n)  # the walk's return from each cell
    for t in range(n - 1, -1, -1):
        returns[t] = rewards[t, 0] + (discount * returns[t + 1] if t < n - 1 else 0.0)
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


def test_a_critic_started_below_the_returns_lets_the_floors_act_on_rewards_of_minus_one():
    """On -1 per step a critic starting near 0 is above every floor, so they never act and V at the start
    stays far above its true value (-25.3); started at -1 / (1 - discount) it rises onto the floors (-24.0
    after 300 steps), where bootstrapping alone would leave it near where it started (-98.6)."""
    pessimistic, true_value = corridor_value_at_start(True, step_reward=-1.0, initial_value=-100.0)
    optimistic, _ = corridor_value_at_start(True, step_reward=-1.0)
    unfloored, _ = corridor_value_at_start(False, step_reward=-1.0, initial_value=-100.0)
    assert true_value < -20
    assert abs(pessimistic - true_value) < 0.1 * abs(true_value), (pessimistic, true_value)
    assert optimistic > 0.6 * true_value, (optimistic, true_value)
    assert unfloored < 2 * true_value, (unfloored, true_value)


def test_the_initial_value_sets_where_v_and_both_q_start():
    torch.manual_seed(0)
    critic = IQLCritic(3, 2, hidden_dim=16, expectile=0.7, discount=0.99, action_horizon=1, target_update_rate=0.005,
                       initial_value=-100.0, max_value=None)
    observations, latents = torch.randn(64, 3), torch.randn(64, 2)
    with torch.no_grad():
        values, qs, targets = critic.v(observations), critic.q(observations, latents), critic.q_target(observations, latents)
    for start in (values, qs, targets):
        assert (start - -100.0).abs().max() < 2.0
    torch.manual_seed(0)
    default = IQLCritic(3, 2, hidden_dim=16, expectile=0.7, discount=0.99, action_horizon=1, target_update_rate=0.005, initial_value=None, max_value=None)
    with torch.no_grad():
        assert default.v(observations).abs().max() < 2.0
        # only the output biases differ from the default initialisation
        torch.testing.assert_close(default.v(observations) - default.value[-1].bias, values + 100.0)


def test_targets_move_toward_the_online_q_by_the_polyak_rate():
    torch.manual_seed(0)
    critic = IQLCritic(3, 2, hidden_dim=16, expectile=0.7, discount=0.9, action_horizon=1, target_update_rate=0.1, initial_value=None, max_value=None)
    with torch.no_grad():
        for p in critic.q.parameters():
            p.add_(1.0)
    before = [p.clone() for p in critic.q_target.parameters()]
    critic.update_targets()
    for old, new, online in zip(before, critic.q_target.parameters(), critic.q.parameters(), strict=True):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * online)
    assert not any(p.requires_grad for p in critic.q_target.parameters())


def test_each_loss_trains_only_its_own_network():
    critic = IQLCritic(3, 2, hidden_dim=16, expectile=0.7, discount=0.9, action_horizon=2, target_update_rate=0.005, initial_value=None, max_value=None)
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


def test_the_ceiling_bounds_v_and_q_and_leaves_values_far_below_it_as_they_are():
    torch.manual_seed(0)
    critic = IQLCritic(3, 2, hidden_dim=16, expectile=0.7, discount=0.99, action_horizon=1, target_update_rate=0.005,
                       initial_value=None, max_value=0.0)
    raw = torch.tensor([-50.0, -10.0, -1.0, 0.0, 1.0, 50.0])
    bounded = critic.bounded(raw)
    assert torch.all(bounded < 0.0) and torch.all(bounded[1:] > bounded[:-1])
    torch.testing.assert_close(bounded[:2], raw[:2], atol=1e-4, rtol=0)
    with torch.no_grad():
        for p in list(critic.value.parameters()) + list(critic.q.parameters()):
            p.add_(10.0)  # outputs far above the ceiling
        observations, latents = torch.randn(16, 3), torch.randn(16, 2)
        assert critic.v(observations).max() <= 0.0 and critic.q_twins(observations, latents).max() <= 0.0


def values_at_start_and_beyond_the_goal(max_value: float | None, steps: int = 600) -> tuple[float, float, float]:
    """(V at the start, its true value, V one corridor length beyond the goal), after training on walks down a
    corridor whose position is the observation (0 at the start, 1 at the goal), OGBench's rewards: -1 per step,
    0 on reaching the goal."""
    torch.manual_seed(0)
    n, discount = 20, 0.99
    critic = IQLCritic(1, 1, hidden_dim=32, expectile=0.7, discount=discount, action_horizon=1, target_update_rate=0.05,
                       initial_value=-100.0, max_value=max_value)
    observations = torch.linspace(0.0, 1.0, n + 1)[:-1, None]
    next_observations, latents = observations + 1.0 / n, torch.zeros(n, 1)
    rewards, dones = torch.full((n, 1), -1.0), torch.zeros(n)
    rewards[-1, 0], dones[-1] = 0.0, 1.0
    returns = -(1 - discount ** torch.arange(n - 1, -1, -1, dtype=torch.float32)) / (1 - discount)
    optimizer = torch.optim.Adam(list(critic.q.parameters()) + list(critic.value.parameters()), lr=3e-3)
    for _ in range(steps):
        loss = critic.value_loss(observations, latents) + critic.q_loss(
            observations, latents, rewards, next_observations, dones, returns)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        critic.update_targets()
    with torch.no_grad():
        return critic.v(observations[:1]).item(), returns[0].item(), critic.v(torch.tensor([[2.0]])).item()


def test_without_a_ceiling_v_beyond_the_goal_extrapolates_above_what_the_goal_is_worth():
    """Where no data is, past the goal, an unbounded critic's V keeps rising (so hovering there would look
    better than arriving, whose return is 0); under a ceiling of 0 it cannot, and V where the data is still
    learns its return."""
    _, _, unbounded_beyond = values_at_start_and_beyond_the_goal(None)
    start, true_start, beyond = values_at_start_and_beyond_the_goal(0.0)
    assert unbounded_beyond > 1.0, unbounded_beyond
    assert beyond <= 0.0
    assert abs(start - true_start) < 0.25 * abs(true_start), (start, true_start)  # -14.6 against -17.4
