"""Defaults live in the schema (diffuser/schemas/cell.schema.yaml) alone.

Models, datasets, trainers and the evaluator take their settings as explicit arguments read from the
validated cell config; a constructor default for a setting would be a second place for it, free to
disagree with the schema (as `ActionVAE(hidden_dim=256)` once did against the schema's 128).
"""

import dataclasses
import inspect

import pytest

from diffuser import steps
from diffuser.cli import build_parser
from diffuser.config import cell_defaults, cell_schema
from diffuser.datasets.generate import generate_locomotion_hdf5, generate_maze2d_hdf5
from diffuser.datasets.normalization import make_normalizers
from diffuser.datasets.sequence import VAESequenceDataset
from diffuser.evaluation.evaluator import MADEvaluator
from diffuser.evaluation.policy import PolicyRunner
from diffuser.models.bc import BC, BCConfig
from diffuser.models.critics import IQLCritic, TwinQ
from diffuser.models.denoisers import LatentDenoiser
from diffuser.models.diffusion import GaussianDiffusion
from diffuser.models.diffusion_policy import ActionChunkCodec, DiffusionPolicy
from diffuser.models.diffusion_rl import DiffusionRL, DiffusionRLConfig
from diffuser.models.encoders import TrajectoryEncoder
from diffuser.models.fql import FQL, FQLConfig, QEnsemble
from diffuser.models.iql import IQL, IQLConfig
from diffuser.models.vae import ActionVAE
from diffuser.registry import CLASSES
from diffuser.training.online.trainer import OnlineRLTrainer
from diffuser.training.pretrain import VAEPretrainer
from diffuser.training.trainer import Trainer

# Parameters that may keep a default because they are not cell settings, each with why.
NOT_SETTINGS = {
    "latent_bound",  # ActionVAE: the box the sampler clamps latents to, a fixed fact of the model
    "prediction",  # GaussianDiffusion: what the network predicts; DiffusionRL fixes it (PREDICTION)
    "device",  # a torch device, resolved from the cell's `device` setting by the GPU pool
    "evaluator",  # Trainer: none unless the cell evaluates during training
    "read_saved_config",  # Trainer: how a checkpoint's config is read back (config.saved_cell_config), not a setting
    "reward_floor",  # VAESequenceDataset: the data's lowest reward (an online dataset takes its offline one's), not a setting
}
TAKE_SETTINGS = [
    ActionVAE, TrajectoryEncoder, LatentDenoiser, GaussianDiffusion, IQLCritic, TwinQ, DiffusionRL, BC, IQL,
    DiffusionPolicy, ActionChunkCodec, FQL, QEnsemble,
    VAESequenceDataset, MADEvaluator, PolicyRunner, Trainer, OnlineRLTrainer, VAEPretrainer,
    generate_maze2d_hdf5, generate_locomotion_hdf5, make_normalizers,
]
SCHEMA_KEYS = set(cell_schema()["properties"])


@pytest.mark.parametrize("taker", TAKE_SETTINGS, ids=lambda taker: taker.__name__)
def test_no_constructor_defaults_a_setting(taker):
    function = taker.__init__ if inspect.isclass(taker) else taker
    defaulted = {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    assert set(defaulted) <= NOT_SETTINGS, f"{taker.__name__} defaults {defaulted}; read them from the cell config"


@pytest.mark.parametrize("view", [DiffusionRLConfig, BCConfig, IQLConfig, FQLConfig])
def test_config_views_are_frozen_schema_keys_without_defaults(view):
    fields = dataclasses.fields(view)
    assert {field.name for field in fields} <= SCHEMA_KEYS
    assert all(field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING for field in fields)
    config = view.view(cell_defaults())
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.hidden_dim = 1


@pytest.mark.parametrize("name", sorted(name for name in CLASSES if name.startswith("models.")))
def test_each_model_builds_from_the_schema_defaults(name):
    model = steps.build_model({**cell_defaults(), "diffusion": name}, obs_dim=4, action_dim=2)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_diffusion_rl_built_from_the_defaults_has_the_schema_sizes():
    defaults = cell_defaults()
    model = steps.build_model(defaults, obs_dim=4, action_dim=2)
    assert model.vae.encoder[0].out_features == defaults["hidden_dim"]
    assert model.vae.latent_dim == defaults["vae_latent_dim"]
    assert model.vae.kl_weight == defaults["vae_kl_weight"]
    assert model.denoiser.input.out_features == defaults["hidden_dim"]
    assert len(model.denoiser.blocks) == defaults["denoiser_blocks"]
    assert model.trajectory_encoder.kind == defaults["encoder_type"]
    assert model.trajectory_encoder.use_actions == defaults["history_actions"]
    assert model.trajectory_encoder.step_embedding.out_features == defaults["trajectory_latent_dim"]
    assert model.diffusion.n_diffusion_steps == defaults["n_diffusion_steps"]
    assert (model.critic is not None) == defaults["use_value_function"]
    assert model.critic.expectile == defaults["expectile"]


def test_prepare_command_defaults_are_the_schema_defaults():
    args = build_parser().parse_args(["prepare", "--dataset", "gen-maze2d-umaze"])
    defaults = cell_defaults()
    assert (args.steps, args.action_noise, args.seed) == (
        defaults["dataset_steps"], defaults["dataset_action_noise"], defaults["dataset_seed"]
    )
