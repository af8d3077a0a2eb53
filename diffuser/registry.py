"""The seed's class-path names (`models.DiffusionRL`, `utils.Trainer`, ...) -> classes of this package.

Only the names listed here resolve: a config string never becomes an arbitrary import. Modules are
imported when a name is resolved, so reading a config does not load torch.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Mapping

from diffuser.errors import RegistryError

# name -> (module, attribute)
CLASSES: dict[str, tuple[str, str]] = {
    "models.DiffusionRL": ("diffuser.models", "DiffusionRL"),
    "models.BC": ("diffuser.models", "BC"),
    "models.IQL": ("diffuser.models", "IQL"),
    "models.FQL": ("diffuser.models", "FQL"),
    "models.DiffusionPolicy": ("diffuser.models", "DiffusionPolicy"),
    "datasets.VAESequenceDataset": ("diffuser.datasets.sequence", "VAESequenceDataset"),
    "utils.Trainer": ("diffuser.training.trainer", "Trainer"),
    "utils.OnlineRLTrainer": ("diffuser.training.online.trainer", "OnlineRLTrainer"),
    "utils.OnlineReplayTrainer": ("diffuser.training.online.replay", "OnlineReplayTrainer"),
    "utils.MADEvaluator": ("diffuser.evaluation.evaluator", "MADEvaluator"),
}
# The seed's guide names utils.OfflineRLTrainer for online + offline training and calls it
# offline-only in the same line; it, like a null trainer, means "the trainer the mode needs".
MODE_TRAINERS = ("utils.OfflineRLTrainer", None)
OFFLINE_TRAINER = "utils.Trainer"
ONLINE_TRAINER = "utils.OnlineRLTrainer"
# The baselines fine-tune online as their papers do, with their own losses on offline + online data.
REPLAY_TRAINER = "utils.OnlineReplayTrainer"
REPLAY_ONLINE_MODELS = frozenset({"models.IQL", "models.FQL"})
# models with an `explore` policy, which the replay trainer collects with (DiffusionRL: its evaluated sampler)
EXPLORING_MODELS = REPLAY_ONLINE_MODELS | {"models.DiffusionRL"}
# models that own an ActionVAE, which the pretrain step trains on its own (DiffusionPolicy diffuses actions)
MODELS_WITH_VAE = frozenset({"models.DiffusionRL"})
# models with the IQL critic (models/critics.py), the ones critic_return_floor, critic_initial_value and
# critic_max_value act on
IQL_CRITIC_MODELS = frozenset({"models.DiffusionRL", "models.IQL"})


def known_names() -> list[str]:
    return sorted(CLASSES)


def resolve(name: str):
    """The class registered under `name`."""
    if name == "utils.OfflineRLTrainer":
        raise RegistryError(
            "utils.OfflineRLTrainer names the trainer of a cell's mode (offline or online + offline); "
            "resolve it with trainer_for(config)."
        )
    if name not in CLASSES:
        match = difflib.get_close_matches(str(name), CLASSES, n=1)
        hint = f" Did you mean '{match[0]}'?" if match else ""
        raise RegistryError(f"unknown class name '{name}'; the known names are {', '.join(known_names())}.{hint}")
    module_name, attribute = CLASSES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise RegistryError(
            f"'{name}' is registered as {module_name}.{attribute} but {module_name} cannot be imported ({err}); "
            "reinstall the package (pip install -e .)."
        ) from err
    try:
        return getattr(module, attribute)
    except AttributeError as err:
        raise RegistryError(f"'{name}' is registered as {module_name}.{attribute}, which does not exist.") from err


def trainer_name(config: Mapping) -> str:
    """The registered trainer a cell uses: its `trainer`, or for null/utils.OfflineRLTrainer the mode's
    (online: the replay trainer for IQL and FQL, the policy-gradient one for the diffusion models).

    A trainer that contradicts `online_training` never gets here: config validation refuses it.
    """
    if config["trainer"] in MODE_TRAINERS:
        if not config["online_training"]:
            return OFFLINE_TRAINER
        return REPLAY_TRAINER if config["diffusion"] in REPLAY_ONLINE_MODELS else ONLINE_TRAINER
    return config["trainer"]


def trainer_for(config: Mapping):
    """The trainer class of a cell config."""
    return resolve(trainer_name(config))


def unavailable_names() -> list[str]:
    """Registered names whose class cannot be imported in this installation (empty when complete)."""
    missing = []
    for name in known_names():
        try:
            resolve(name)
        except RegistryError:
            missing.append(name)
    return missing
