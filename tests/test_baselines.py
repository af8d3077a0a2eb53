"""The baselines models.IQL, models.FQL and models.DiffusionPolicy: they learn, name their loss terms, resume
exactly under the shared Trainer, load weights-only, and sweep beside BC and DiffusionRL."""

import pytest
import torch
import yaml
from test_workflow import make_checkout, plan

from diffuser import steps
from diffuser.config import cell_defaults, load_cell_config
from diffuser.models import FQL, IQL, DiffusionPolicy
from diffuser.training.trainer import Trainer

BASELINES = ["models.IQL", "models.FQL", "models.DiffusionPolicy"]
TERMS = {
    "models.IQL": {"loss", "actor_loss", "value_loss", "q_loss"},
    "models.FQL": {"loss", "bc_flow_loss", "distill_loss", "actor_q_loss", "q_loss"},
    "models.DiffusionPolicy": {"loss", "diffusion_loss", "value_loss", "q_loss", "advantage_weight_ess"},
}
SMALL = {  # small networks for the bandit and the trainer runs
    "iql_hidden_dim": 64, "fql_hidden_dim": 64, "hidden_dim": 64, "trajectory_latent_dim": 8, "denoiser_blocks": 2,
    "history_horizon": 1, "action_horizon": 1, "n_diffusion_steps": 20, "n_sampling_steps": 5,
    "n_action_samples": 16,
}

# --------------------------------------------------------------------------- a tiny offline task
# A contextual bandit: state s in R^2, one step per episode, reward -|a - a*(s)|^2 with a*(s) =
# tanh(W s). Half of the data's actions are a*(s), half uniform in [-1, 1]^2, so imitating the data
# alone lands halfway; a policy that learned which actions pay scores near 0.
OBS_DIM = ACTION_DIM = 2
OPTIMAL_MAP = torch.tensor([[1.2, -0.8], [0.6, 1.0]])


def optimal_actions(observations: torch.Tensor) -> torch.Tensor:
    return torch.tanh(observations @ OPTIMAL_MAP)


def bandit_rewards(observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    return -((actions - optimal_actions(observations)) ** 2).sum(-1)


def bandit_batch(n: int, generator: torch.Generator) -> dict:
    observations = torch.randn(n, OBS_DIM, generator=generator)
    random_actions = 2 * torch.rand(n, ACTION_DIM, generator=generator) - 1
    good = torch.rand(n, 1, generator=generator) < 0.5
    actions = torch.where(good, optimal_actions(observations), random_actions)
    return {
        "observations": observations,
        "actions": actions[:, None],  # [n, K=1, A]
        "rewards": bandit_rewards(observations, actions)[:, None],  # [n, K=1]
        "next_observations": torch.randn(n, OBS_DIM, generator=generator),
        "dones": torch.ones(n),
        "history_observations": observations[:, None],
        "history_actions": actions[:, None],
        "history_mask": torch.ones(n, 1, dtype=torch.bool),
    }


def mean_reward(model, observations: torch.Tensor) -> float:
    model.eval()
    history = (observations[:, None], torch.zeros(len(observations), 1, ACTION_DIM),
               torch.ones(len(observations), 1, dtype=torch.bool))
    actions = model.act(observations, *history)[:, 0]
    return bandit_rewards(observations, actions).mean().item()


# gradient steps to clear the bar below (measured: IQL -0.007 at 300, FQL -0.04 at 200, DiffusionPolicy
# -0.04 at 150)
BANDIT_STEPS = {"models.IQL": 300, "models.FQL": 200, "models.DiffusionPolicy": 150}
# FQL's alpha is tuned per task in its paper, to the scale of the task's Q values (here |Q| < 2): at its
# default 10 the distillation outweighs the Q term and the policy stays at the data (-0.46 at 200 steps).
BANDIT_OVERRIDES = {"models.FQL": {"fql_alpha": 0.3, "fql_flow_steps": 3, "fql_hidden_dim": 32}}


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_learns_the_bandit_beyond_random_and_beyond_imitating_the_data(name):
    torch.manual_seed(0)
    config = {**cell_defaults(), **SMALL, "diffusion": name, **BANDIT_OVERRIDES.get(name, {})}
    model = steps.build_model(config, OBS_DIM, ACTION_DIM)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    data = bandit_batch(4000, g)
    for _ in range(BANDIT_STEPS[name]):
        index = torch.randint(0, 4000, (128,), generator=g)
        loss, _ = model.loss({key: value[index] for key, value in data.items()})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.after_optimizer_step()

    observations = torch.randn(1000, OBS_DIM, generator=g)
    random_score = bandit_rewards(observations, 2 * torch.rand(1000, ACTION_DIM, generator=g) - 1).mean().item()
    # the data's mean action is 0.5 a*(s) (the random half averages 0): what plain imitation (BC) converges to
    imitation_score = bandit_rewards(observations, 0.5 * optimal_actions(observations)).mean().item()
    score = mean_reward(model, observations)
    # random ~ -1.0, imitation ~ -0.2, the optimum 0
    assert score > 0.3 * random_score, f"{name} scored {score:.3f}; random actions {random_score:.3f}"
    assert score > 0.5 * imitation_score, f"{name} scored {score:.3f}; imitating the data {imitation_score:.3f}"


@pytest.mark.parametrize("name", BASELINES)
def test_loss_terms_have_the_documented_names(name):
    model = steps.build_model({**cell_defaults(), **SMALL, "diffusion": name}, OBS_DIM, ACTION_DIM)
    total, terms = model.loss(bandit_batch(16, torch.Generator().manual_seed(0)))
    assert set(terms) == TERMS[name]
    assert terms["loss"] is total and total.requires_grad


def test_iql_reads_its_published_settings_from_the_schema():
    defaults = cell_defaults()
    model = IQL(OBS_DIM, ACTION_DIM, defaults)
    assert defaults["iql_hidden_dim"] == 256 and defaults["iql_learning_rate"] == 3e-4
    assert model.policy_mean[0].out_features == 256 and model.critic.value[0].out_features == 256
    assert model.critic.expectile == 0.7 and model.beta == 3.0 and model.critic.target_update_rate == 0.005


def test_fql_reads_its_published_settings_from_the_schema():
    defaults = cell_defaults()
    model = FQL(OBS_DIM, ACTION_DIM, defaults)
    assert defaults["fql_learning_rate"] == 3e-4 and model.learning_rate == 3e-4
    assert model.velocity[0].out_features == 512 and model.q.n_members == 2
    assert model.alpha == 10.0 and model.flow_steps == 10 and model.q_aggregation == "mean"


def test_fql_policy_q_term_does_not_train_the_critic():
    model = FQL(OBS_DIM, ACTION_DIM, {**cell_defaults(), **SMALL, "fql_hidden_dim": 16})
    _, terms = model.loss(bandit_batch(16, torch.Generator().manual_seed(0)))
    terms["actor_q_loss"].backward()
    assert all(p.grad is None for p in model.q.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.one_step_policy.parameters())


def test_diffusion_policy_diffuses_action_chunks_and_owns_no_vae():
    model = DiffusionPolicy(OBS_DIM, ACTION_DIM, {**cell_defaults(), "action_horizon": 3})
    assert model.latent_dim == 3 * ACTION_DIM
    assert not any("vae" in name for name, _ in model.named_parameters())


def test_iql_trains_at_its_own_learning_rate(tmp_path):
    config = {**cell_defaults(), "diffusion": "models.IQL", "learning_rate": 1e-3, "iql_learning_rate": 2e-4}
    model = steps.build_model(config, OBS_DIM, ACTION_DIM)
    trainer = Trainer(config, dataset=None, model=model, run_dir=tmp_path)
    assert trainer.optimizer.param_groups[0]["lr"] == 2e-4


# ------------------------------------------------------------------------ the shared Trainer
TRAIN = {
    "dataset": "gen-maze2d-umaze", "dataset_steps": 3000, **SMALL, "hidden_dim": 32, "iql_hidden_dim": 32, "fql_hidden_dim": 32,
    "n_action_samples": 2, "batch_size": 16, "num_threads": 1, "log_freq": 10, "eval_freq": 100000,
    "n_train_steps": 60, "save_freq": 20,
}


class Interrupted(KeyboardInterrupt):
    pass


@pytest.mark.parametrize("name", BASELINES)
def test_resume_after_an_interrupt_is_exact_and_checkpoints_load_weights_only(name, tmp_path, tiny_maze_data,
                                                                               monkeypatch):
    cell = tmp_path / "cell.yaml"
    cell.write_text(yaml.safe_dump({**TRAIN, "diffusion": name}))
    config = load_cell_config(cell)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    steps.train(config, straight, tiny_maze_data)

    original = Trainer._after_step

    def stop_at_step_30(self, step):
        if step == 30:
            raise Interrupted("test")
        return original(self, step)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_after_step", stop_at_step_30)
        with pytest.raises(Interrupted):
            steps.train(config, resumed, tiny_maze_data)
    assert not (resumed / "final.pt").exists()
    steps.train(config, resumed, tiny_maze_data)  # resumes from the step-20 checkpoint

    for file in ("final.pt", "checkpoints/state_00000060.pt"):
        a = torch.load(straight / file, weights_only=True)
        b = torch.load(resumed / file, weights_only=True)
        assert a["step"] == b["step"] == 60 and a["model_class"] == name
        for part in ("ema", "model") if "model" in a else ("ema",):
            for key in a[part]:
                assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after resume"
    runner = steps.policy_from_state(torch.load(resumed / "final.pt", weights_only=True))
    assert isinstance(runner.model, {"models.IQL": IQL, "models.FQL": FQL, "models.DiffusionPolicy": DiffusionPolicy}[name])
    metrics = (resumed / "metrics.csv").read_text()
    assert all(f",{term}," in metrics for term in TERMS[name] - {"loss"})


# ------------------------------------------------------------------------------- the sweep
def test_a_sweep_over_models_plans_one_cell_per_model_and_seed(tmp_path):
    models = ["models.BC", "models.IQL", "models.FQL", "models.DiffusionPolicy", "models.DiffusionRL"]
    spec = {
        "meta_data": {"exp_name": "baselines"},
        "constants": {"dataset": "gen-maze2d-umaze", "dataset_steps": 3000, "n_train_steps": 100},
        "variables": {"diffusion": models, "seed": [0, 1]},
    }
    jobs, out = plan(make_checkout(tmp_path, spec))
    assert jobs["train"] == jobs["evaluate"] == len(models) * 2
    assert jobs["pretrain_vae"] == 2, "only DiffusionRL has a VAE to pre-train, one per seed"
    for model in models:
        for seed in (0, 1):
            assert f"results/baselines/cells/diffusion~{model}/seed~{seed}/final.pt" in out


def test_diffusion_policy_trains_online_through_the_same_chain_policy_update(tmp_path, tiny_maze_data):
    from test_online_training import make_trainer, online_config

    config = online_config(tmp_path, n_train_steps=95, log_freq=5, diffusion="models.DiffusionPolicy")
    trainer = make_trainer(config, tiny_maze_data, tmp_path / "run")
    before = trainer.model.chain_log_std.detach().clone()
    trainer.train()
    rows = [line.split(",") for line in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]]
    assert {"policy_loss", "rl_value_loss", "entropy", "diffusion_loss"} <= {metric for _, metric, _ in rows}
    assert trainer.env_steps == len(trainer.buffer) > 0
    assert not torch.equal(trainer.model.chain_log_std, before), "the RL update must train the chain policy"


@pytest.mark.parametrize(("dataset", "alpha", "expected"), [
    ("ogbench:cube-single-play-singletask-v0", None, 300.0),
    ("ogbench:puzzle-3x3-play-singletask-task4-v0", None, 1000.0),
    ("antmaze-large-diverse-v2", None, 3.0),
    ("gen-maze2d-umaze", None, 10.0),  # no published value: the authors' default
    ("ogbench:cube-single-play-singletask-v0", 0.5, 0.5),  # a value given wins
])
def test_fql_alpha_defaults_to_the_authors_value_for_the_task(dataset, alpha, expected):
    model = steps.build_model({**cell_defaults(), **SMALL, "diffusion": "models.FQL", "dataset": dataset,
                               "fql_alpha": alpha}, OBS_DIM, ACTION_DIM)
    assert model.alpha == expected
