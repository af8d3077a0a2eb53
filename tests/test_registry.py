"""The seed's class-path names resolve to this package's classes, and nothing else resolves."""

import pytest

from diffuser.config import ConfigError, cell_defaults, cell_schema, validate_cell_config
from diffuser.registry import (
    CLASSES,
    RegistryError,
    known_names,
    resolve,
    trainer_for,
    trainer_name,
    unavailable_names,
)


def test_every_name_the_schema_allows_is_registered():
    properties = cell_schema()["properties"]
    for key in ("diffusion", "loader", "evaluator"):
        assert set(properties[key]["enum"]) <= set(CLASSES), key
    trainers = {name for name in properties["trainer"]["enum"] if name is not None}
    assert trainers - set(CLASSES) == {"utils.OfflineRLTrainer"}


def test_registered_names_resolve_to_the_named_class():
    for name in set(known_names()) - set(unavailable_names()):
        cls = resolve(name)
        assert cls.__name__ == name.split(".")[1]
        assert cls.__module__.startswith("diffuser.")


def test_trainer_and_evaluator_of_the_seed_resolve():
    from diffuser.evaluation.evaluator import MADEvaluator
    from diffuser.training.trainer import Trainer

    assert resolve("utils.Trainer") is Trainer
    assert resolve("utils.MADEvaluator") is MADEvaluator


@pytest.mark.parametrize("name", ["os.system", "diffuser.training.trainer.Trainer", "models.DifusionRL", ""])
def test_unknown_name_is_refused_with_the_known_names(name):
    with pytest.raises(RegistryError) as caught:
        resolve(name)
    message = str(caught.value)
    assert "models.DiffusionRL" in message and "utils.Trainer" in message
    assert isinstance(caught.value, ConfigError)  # the CLI shows it as one line


def test_misspelt_name_gets_a_suggestion():
    with pytest.raises(RegistryError, match="Did you mean 'models.DiffusionRL'"):
        resolve("models.DifusionRL")


@pytest.mark.parametrize(
    ("trainer", "online", "expected"),
    [
        (None, False, "utils.Trainer"),
        (None, True, "utils.OnlineRLTrainer"),
        ("utils.OfflineRLTrainer", False, "utils.Trainer"),
        ("utils.OfflineRLTrainer", True, "utils.OnlineRLTrainer"),
        ("utils.Trainer", False, "utils.Trainer"),
        ("utils.OnlineRLTrainer", True, "utils.OnlineRLTrainer"),
    ],
)
def test_trainer_follows_the_mode(trainer, online, expected):
    assert trainer_name({**cell_defaults(), "trainer": trainer, "online_training": online}) == expected


def test_trainer_that_contradicts_the_mode_is_refused_by_validation():
    with pytest.raises(ConfigError, match="online_training"):
        validate_cell_config({**cell_defaults(), "trainer": "utils.Trainer", "online_training": True})


def test_offline_rl_trainer_alone_does_not_resolve():
    with pytest.raises(RegistryError, match="trainer_for"):
        resolve("utils.OfflineRLTrainer")


def test_trainer_for_offline_cell_is_the_offline_trainer():
    from diffuser.training.trainer import Trainer

    assert trainer_for({**cell_defaults(), "trainer": "utils.OfflineRLTrainer", "online_training": False}) is Trainer
