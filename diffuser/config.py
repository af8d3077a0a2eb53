"""Experiment specs in the seed's format (meta_data / constants / variables) -> validated sweep cells.

A spec is checked completely before anything runs; every problem becomes one sentence that names the
key, what was expected and what was given. The rules, in the order they apply:

- Keys: `constants` and `variables` take the cell keys of `schemas/cell.schema.yaml`, `meta_data`
  those of `schemas/spec.schema.yaml`. A nested mapping inside `constants` or `variables` only
  groups keys (the seed's nested variables); its leaves are the cell keys, so a key may appear
  once across all groups.
- Defaults are the schemas' `default:` values. `meta_data.exp_name` defaults to the spec file's
  name without `.yaml`.
- Numbers written as strings are accepted: PyYAML reads `3e-4` (no dot) as a string and
  `snakemake --config` passes nested values as strings. For a number key a numeric string becomes
  a float; for an integer key a string or float holding a whole number becomes an int (`1e5` ->
  100000); for a boolean key `true`/`false` (any case) become booleans; for a key that allows null,
  `null`, `none`, `~` and the empty string become null. An integer given for a number key becomes
  a float, so `1` and `1.0` name the same setting.
- A key set in `constants` and also swept in `variables`: the variables win, as in the seed's
  run_experiment.py (its guide does exactly this with `online_training`).
- The cells are the Cartesian product of the variable lists. A cell's name is its directory, built
  from the swept keys in alphabetical order (so reordering a spec does not rename results), e.g.
  `online_training~True/seed~100`; with no variables the one cell is named `default`.
- Impossible combinations stop the run too, naming the cells: n_sampling_steps > n_diffusion_steps;
  a trainer that contradicts online_training or the model (utils.OnlineRLTrainer for IQL/FQL,
  utils.OnlineReplayTrainer for the others); online training of models.BC; online training whose
  rl_warmup_steps >= n_train_steps (it would never interact); policy-gradient online training whose
  rl_update_freq > rl_collect_freq (collections would go unused); a dataset name that names no known
  dataset or would leave data/ (diffuser.datasets.prepare.dataset_name_problem). Cells that generate
  one dataset with different settings get different datasets (its directory names the settings).

Overrides (`load_spec(..., overrides=...)`, which is what `snakemake --config` entries become):
- `KEY=VALUE` for a cell key sets that constant and removes KEY from the sweep (it is pinned);
- `KEY=VALUE` for a meta_data key (`exp_name`, `num_workers`, ...) sets it;
- `constants={...}` / `meta_data={...}` set several keys (same rules), `variables={KEY: [...]}`
  replaces or adds a swept key's list.
"""

from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import importlib.util
import itertools
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import yaml

from diffuser.errors import ConfigError, UserError
from diffuser.registry import (
    EXPLORING_MODELS,
    IQL_CRITIC_MODELS,
    MODELS_WITH_VAE,
    OFFLINE_TRAINER,
    ONLINE_TRAINER,
    REPLAY_ONLINE_MODELS,
    REPLAY_TRAINER,
    trainer_for,
)

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
CELL_SCHEMA_PATH = SCHEMA_DIR / "cell.schema.yaml"
SPEC_SCHEMA_PATH = SCHEMA_DIR / "spec.schema.yaml"
SECTIONS = ("meta_data", "constants", "variables")
SINGLE_CELL_NAME = "default"
NULL_WORDS = ("null", "none", "~", "")
# Characters kept as they are in a cell's directory name; others become "_".
_PATH_SAFE = re.compile(r"[^A-Za-z0-9_.:+-]")

# The settings a pre-trained VAE depends on (dataset and its generation, VAE architecture and its
# optimisation): cells that agree on them share one pretrain job.
VAE_KEYS = (
    "dataset",
    "dataset_steps",
    "dataset_action_noise",
    "dataset_seed",
    "vae_latent_dim",
    "hidden_dim",
    "action_horizon",
    "vae_kl_weight",
    "vae_pretrain_steps",
    "batch_size",
    "learning_rate",
    "weight_decay",
    "grad_clip",
    "normalizer",
    "seed",
)


@dataclass(frozen=True)
class Cell:
    """One point of the sweep grid."""

    name: str  # directory under results/<exp>/cells/, e.g. "online_training~True/seed~100"
    values: dict  # swept key -> this cell's value
    config: dict  # every cell key, resolved (defaults filled)


@dataclass(frozen=True)
class Spec:
    """A validated experiment spec; `constants` and `variables` are flat (groups dissolved)."""

    meta_data: dict
    constants: dict
    variables: dict  # key -> non-empty list
    source: str  # where it came from, for messages
    _cells: tuple = field(repr=False, default=())

    @property
    def exp_name(self) -> str:
        return self.meta_data["exp_name"]

    @property
    def swept_variables(self) -> list[str]:
        """The swept keys in the order cell names use them."""
        return sorted(self.variables)

    def cells(self) -> list[Cell]:
        return list(self._cells)

    def as_dict(self) -> dict:
        """The spec after overrides and coercion, loadable again with `load_spec`."""
        return {
            "meta_data": copy.deepcopy(self.meta_data),
            "constants": copy.deepcopy(self.constants),
            "variables": copy.deepcopy(self.variables),
        }


# ------------------------------------------------------------------------------------- schemas


@functools.cache
def _load_schema(path: Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def cell_schema() -> dict:
    return _load_schema(CELL_SCHEMA_PATH)


def spec_schema() -> dict:
    return _load_schema(SPEC_SCHEMA_PATH)


def cell_defaults() -> dict:
    return {key: copy.deepcopy(prop["default"]) for key, prop in cell_schema()["properties"].items()}


def saved_cell_config(saved: dict) -> dict:
    """A cell config read back from a checkpoint, with every key the schema gained since it was written at
    its default (a new key's default keeps the behaviour from before it existed)."""
    return {**cell_defaults(), **saved}


def _meta_properties() -> dict:
    return spec_schema()["properties"]["meta_data"]["properties"]


def _variables_schema() -> dict:
    """The cell schema turned into one for `variables`: each key holds a non-empty list of its values."""
    properties = {
        key: {"type": "array", "minItems": 1, "items": prop} for key, prop in cell_schema()["properties"].items()
    }
    return {"type": "object", "additionalProperties": False, "properties": properties}


# ----------------------------------------------------------------------------- coercion


def _types(prop: dict) -> list[str]:
    kind = prop.get("type", [])
    return [kind] if isinstance(kind, str) else list(kind)


def _parse_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def coerce_value(value, prop: dict):
    """`value` converted to the type of the schema property `prop` where that is unambiguous (module doc)."""
    types = _types(prop)
    if isinstance(value, str):
        text = value.strip()
        if "null" in types and text.lower() in NULL_WORDS:
            return None
        if "boolean" in types and text.lower() in ("true", "false"):
            return text.lower() == "true"
        if "integer" in types or "number" in types:
            number = _parse_number(text)
            if number is not None:
                value = number
    if isinstance(value, bool):
        return value
    if "integer" in types and isinstance(value, float) and value.is_integer():
        return int(value)
    if "number" in types and isinstance(value, int):
        return float(value)
    return value


# ------------------------------------------------------------------------------ messages


def _show(value) -> str:
    if isinstance(value, str):
        return repr(value)
    if value is None or isinstance(value, (bool, list, dict)):
        return json.dumps(value)
    return repr(value)


def _expected(prop: dict) -> str:
    """What a schema property accepts, in words."""
    if "enum" in prop:
        return "one of " + ", ".join(json.dumps(v) for v in prop["enum"])
    if prop.get("type") == "array":
        return f"a non-empty list of values, each {_expected(prop.get('items', {}))}"
    names = {"integer": "an integer", "number": "a number", "boolean": "true or false", "string": "a string",
             "object": "a mapping", "array": "a list", "null": "null"}
    text = " or ".join(names[t] for t in _types(prop)) or "a value"
    bounds = [f"{sign} {prop[word]}" for word, sign in
              (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"))
              if word in prop]
    if bounds:
        text += " " + " and ".join(bounds)
    if "pattern" in prop:
        text += f" matching {prop['pattern']}"
    return text


def _suggest(key: str, known) -> str:
    match = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f", did you mean '{match[0]}'?" if match else "."


def _where(prefix: str, path) -> str:
    where = prefix
    for part in path:
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    return where


def _unknown_key_message(where: str, key: str, section: str) -> str:
    """`section`: "top level", "meta_data", "constants", "variables" or "cell" (a cell config file)."""
    cell_keys, meta_keys = cell_schema()["properties"], _meta_properties()
    if section == "top level":
        return f"{where}: unknown top-level key{_suggest(key, SECTIONS)} A spec has only meta_data, constants and variables."
    if section in ("constants", "variables") and key in meta_keys:
        return f"{where}: '{key}' belongs under meta_data, not {section}."
    if section == "meta_data" and key in cell_keys:
        return f"{where}: '{key}' is a cell setting; put it under constants (or variables to sweep it), not meta_data."
    known, schema_file = (meta_keys, SPEC_SCHEMA_PATH.name) if section == "meta_data" else (cell_keys, CELL_SCHEMA_PATH.name)
    return f"{where}: unknown key{_suggest(key, known)} The known keys and their defaults are in diffuser/schemas/{schema_file}."


def _schema_problems(instance, schema: dict, prefix: str, section: str) -> list[str]:
    """jsonschema's findings on `instance`, one sentence each (the first finding per location)."""
    messages: dict[tuple, str] = {}
    validator = jsonschema.Draft202012Validator(schema)
    for error in sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path))):
        path = tuple(error.absolute_path)
        where = _where(prefix, path)
        if error.validator == "additionalProperties":
            for key in sorted(set(error.instance) - set(error.schema.get("properties", {}))):
                messages[(*path, key)] = _unknown_key_message(_where(where, [key]), key, section)
        elif path not in messages:
            if error.validator == "minItems":
                messages[path] = f"{where}: the list is empty; give at least one value, or move the key to constants."
            elif error.validator == "type" and error.schema.get("type") == "array":
                messages[path] = (
                    f"{where}: expected a list of values to sweep, got {_show(error.instance)}; "
                    f"write [{json.dumps(error.instance)}] or move the key to constants."
                )
            else:
                messages[path] = f"{where}: expected {_expected(error.schema)}, got {_show(error.instance)}."
    return list(messages.values())


def _raise(source: str, problems: list[str]) -> None:
    if not problems:
        return
    if len(problems) == 1:
        raise ConfigError(f"{source}: {problems[0]}")
    listing = "\n".join(f"  - {p}" for p in problems)
    raise ConfigError(f"{source}: {len(problems)} problems:\n{listing}")


# --------------------------------------------------------------------------- reading


def _read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; give the path of a spec YAML such as config/config.yaml.")
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err}); fix the syntax at the position shown.") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}.")
    return data


def _flatten(section: str, tree, problems: list[str], prefix: str = "") -> dict:
    """Leaves of a section whose nested mappings only group keys: {leaf key: value}."""
    flat: dict = {}
    for key, value in (tree or {}).items():
        key = str(key)
        if isinstance(value, Mapping):
            for leaf, leaf_value in _flatten(section, value, problems, f"{prefix}{key}.").items():
                if leaf in flat:
                    problems.append(f"{section}.{leaf}: set twice (in two groups); keep one.")
                flat[leaf] = leaf_value
        else:
            if key in flat:
                problems.append(f"{section}.{prefix}{key}: set twice (in two groups); keep one.")
            flat[key] = value
    return flat


def _apply_overrides(meta: dict, constants: dict, variables: dict, overrides: Mapping, problems: list[str]) -> None:
    cell_keys, meta_keys = cell_schema()["properties"], _meta_properties()

    def pin(key, value):
        constants[key] = value
        variables.pop(key, None)

    for key, value in overrides.items():
        if key in ("meta_data", "constants", "variables"):
            if not isinstance(value, Mapping):
                problems.append(f"override {key}: expected a mapping such as {key}={{key: value}}, got {_show(value)}.")
                continue
            for sub_key, sub_value in _flatten(key, value, problems).items():
                if key == "meta_data":
                    meta[sub_key] = sub_value
                elif key == "constants":
                    pin(sub_key, sub_value)
                else:
                    variables[sub_key] = sub_value
        elif key in meta_keys:
            meta[key] = value
        elif key in cell_keys:
            pin(key, value)
        else:
            known = [*cell_keys, *meta_keys, *SECTIONS, "spec"]
            problems.append(
                f"override {key}: not a cell key, a meta_data key, meta_data/constants/variables or spec{_suggest(key, known)}"
            )


def _coerce_section(values: dict, properties: Mapping, listed: bool = False) -> dict:
    out = {}
    for key, value in values.items():
        prop = properties.get(key)
        if prop is None:
            out[key] = value
        elif listed and isinstance(value, list):
            out[key] = [coerce_value(v, prop) for v in value]
        else:
            out[key] = coerce_value(value, prop)
    return out


# ------------------------------------------------------------------------------- cells


def path_value(value) -> str:
    """A value as it appears in a cell's directory name."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return _PATH_SAFE.sub("_", value)
    return str(value)


def cell_name(values: Mapping) -> str:
    if not values:
        return SINGLE_CELL_NAME
    return "/".join(f"{key}~{path_value(values[key])}" for key in sorted(values))


def _relabelling_problems(dataset: str) -> list[str]:
    """Why `dataset`'s online episodes cannot be goal-relabelled, when its name tells (a Minari dataset's
    metadata tells only once read: the trainer checks it then)."""
    from diffuser.envs.specs import env_spec_for_dataset
    from diffuser.training.online.relabel import relabelling_problem

    try:
        spec = env_spec_for_dataset(dataset)
    except UserError:  # an unknown or unavailable task: reported where the dataset is prepared
        return []
    problem = relabelling_problem({**spec, "name": dataset})
    return [problem] if problem else []


def _expansion_problems(config: dict, online: bool, model: str) -> list[str]:
    """Why `offline_policy_candidates` cannot act in this cell, if it cannot."""
    k, n = config["offline_policy_candidates"], config["n_action_samples"]
    if not online or model != "models.DiffusionRL":
        return [f"offline_policy_candidates ({k}) acts on models.DiffusionRL's candidates once it collects online, "
                "which this cell never does; set offline_policy_candidates: 0."]
    if not config["use_value_function"] or config["sampling_temperature"] == 0:
        return [f"offline_policy_candidates ({k}) needs the critic to choose among n_action_samples candidates, "
                "which needs use_value_function: true and sampling_temperature above 0; set offline_policy_candidates: 0."]
    if k >= n:
        return [f"offline_policy_candidates ({k}) must be below n_action_samples ({n}), so the trained policy keeps "
                f"a candidate; lower it (e.g. {n // 2}) or raise n_action_samples."]
    return []


def _cell_problems(config: dict) -> list[str]:
    """Combinations of values that cannot run (each key alone is valid)."""
    from diffuser.datasets.prepare import MINARI_PREFIX, dataset_name_problem

    problems = []
    if dataset_problem := dataset_name_problem(config["dataset"]):
        problems.append(dataset_problem)
    if config["n_sampling_steps"] > config["n_diffusion_steps"]:
        problems.append(
            f"n_sampling_steps ({config['n_sampling_steps']}) is larger than n_diffusion_steps "
            f"({config['n_diffusion_steps']}); the sampler cannot take more steps than the process has."
        )
    trainer, online = config["trainer"], config["online_training"]
    if trainer == OFFLINE_TRAINER and online:
        problems.append(f"trainer {OFFLINE_TRAINER} trains offline only but online_training is true; set trainer: null.")
    for online_trainer in (ONLINE_TRAINER, REPLAY_TRAINER):
        if trainer == online_trainer and not online:
            problems.append(f"trainer {online_trainer} needs online_training: true; set trainer: null.")
    model = config["diffusion"]
    if trainer == ONLINE_TRAINER and model in REPLAY_ONLINE_MODELS:
        problems.append(f"trainer {ONLINE_TRAINER} fine-tunes a denoising chain, which {model} does not have; "
                        f"set trainer: null ({model} trains online with {REPLAY_TRAINER}).")
    if trainer == REPLAY_TRAINER and model not in EXPLORING_MODELS:
        problems.append(f"trainer {REPLAY_TRAINER} collects with an exploring policy, which only "
                        f"{', '.join(sorted(EXPLORING_MODELS))} have, not {model}; set trainer: null.")
    if online and config["online_imitation"] != "all" and model != "models.DiffusionRL":
        problems.append(f"online_imitation: {config['online_imitation']} acts on models.DiffusionRL's diffusion loss; "
                        f"{model} would ignore it; set online_imitation: all.")
    if config["offline_policy_candidates"]:
        problems.extend(_expansion_problems(config, online, model))
    elif config["offline_policy_value_gate"] is not None:
        problems.append(f"offline_policy_value_gate ({config['offline_policy_value_gate']}) chooses between the frozen "
                        "offline policy and the trained one, which needs offline_policy_candidates above 0; set "
                        "offline_policy_candidates (e.g. half of n_action_samples) or offline_policy_value_gate: null.")
    for key, what, off, off_text in (("critic_return_floor", "raises the IQL critic's Q targets", False, "false"),
                                     ("critic_initial_value", "sets where the IQL critic starts", None, "null"),
                                     ("critic_max_value", "holds the IQL critic's values under a ceiling", None, "null")):
        if config[key] is not off and (model not in IQL_CRITIC_MODELS or not config["use_value_function"]):
            problems.append(f"{key} {what}, which {model} does not train here (only "
                            f"{', '.join(sorted(IQL_CRITIC_MODELS))}, and models.DiffusionRL with "
                            f"use_value_function: true); set {key}: {off_text}.")
    if online and model == "models.BC":
        problems.append("models.BC has no online mode; set online_training: false, or diffusion: models.DiffusionRL "
                        "(or models.IQL, models.FQL) for online + offline.")
    if config["online_goal_relabelling"] and not dataset_problem and not config["dataset"].startswith(MINARI_PREFIX):
        problems.extend(_relabelling_problems(config["dataset"]))
    if online and config["rl_warmup_steps"] >= config["n_train_steps"]:
        problems.append(
            f"online_training is true but rl_warmup_steps ({config['rl_warmup_steps']}) >= n_train_steps "
            f"({config['n_train_steps']}), so the run would never interact with the environment; "
            "lower rl_warmup_steps or set online_training: false."
        )
    if online and trainer_for(config) == ONLINE_TRAINER and config["rl_update_freq"] > config["rl_collect_freq"]:
        problems.append(
            f"rl_update_freq ({config['rl_update_freq']}) > rl_collect_freq ({config['rl_collect_freq']}): each "
            "collection feeds one PPO pass, run at a multiple of rl_update_freq, so some collections would never be "
            "learned from; make rl_update_freq a divisor of rl_collect_freq."
        )
    # imported here: the loggers module loads torch, which reading or writing a config does not need
    from diffuser.training.loggers import LOGGER_PACKAGES, wandb_api_key, wandb_login_problem

    for logger in config["loggers"]:
        package = LOGGER_PACKAGES.get(logger)
        if package and importlib.util.find_spec(package) is None:
            problems.append(f"loggers lists {logger}, but the {package} package is not installed: "
                            f"pip install {package}, or remove {logger} from loggers.")
    if "wandb" in config["loggers"] and config["wandb_project"] and not wandb_api_key():
        problems.append(wandb_login_problem(config["wandb_project"]))
    return problems


def _expand(constants: dict, variables: dict) -> tuple[list[Cell], list[str]]:
    keys = sorted(variables)
    base = cell_defaults()
    base.update(constants)
    cells, problems, names = [], [], {}
    cells_with_problem: dict[str, list[str]] = {}
    for combination in itertools.product(*(variables[k] for k in keys)):
        values = dict(zip(keys, combination, strict=True))
        config = {**base, **values}
        name = cell_name(values)
        if name in names:
            problems.append(
                f"variables: cells {names[name]} and {values} get the same directory name '{name}'; "
                "make the swept values differ in letters, digits or _.:+-."
            )
        names[name] = values
        for problem in _cell_problems(config):
            cells_with_problem.setdefault(problem, []).append(name)
        cells.append(Cell(name=name, values=values, config=config))
    for problem, affected in cells_with_problem.items():
        where = "every cell" if len(affected) == len(cells) > 1 else ("cell " if len(affected) == 1 else "cells ") + ", ".join(affected)
        problems.append(f"{where}: {problem}")
    return cells, problems


# --------------------------------------------------------------------------- public API


def _top_level_schema() -> dict:
    """The spec schema checked one level deep: sections are checked after overrides and coercion."""
    schema = copy.deepcopy(spec_schema())
    schema["properties"]["meta_data"] = {"type": ["object", "null"]}
    return schema


def load_spec(path_or_dict: str | os.PathLike | Mapping, overrides: Mapping | None = None) -> Spec:
    """Read, override, coerce and validate a spec; raises ConfigError listing every problem."""
    if isinstance(path_or_dict, Mapping):
        raw, source, stem = copy.deepcopy(dict(path_or_dict)), "spec", None
    else:
        raw, source, stem = _read_yaml(path_or_dict), str(path_or_dict), Path(path_or_dict).stem
    _raise(source, _schema_problems(raw, _top_level_schema(), "", "top level"))

    problems: list[str] = []
    meta = dict(raw.get("meta_data") or {})
    constants = _flatten("constants", raw.get("constants"), problems)
    variables = _flatten("variables", raw.get("variables"), problems)
    _apply_overrides(meta, constants, variables, overrides or {}, problems)

    cell_props = cell_schema()["properties"]
    meta_schema = spec_schema()["properties"]["meta_data"]
    meta = _coerce_section(meta, meta_schema["properties"])
    constants = _coerce_section(constants, cell_props)
    variables = _coerce_section(variables, cell_props, listed=True)
    if "exp_name" not in meta and stem is not None:
        meta["exp_name"] = stem
    problems += _schema_problems(meta, meta_schema, "meta_data", "meta_data")
    if "exp_name" not in meta:
        problems.append("meta_data.exp_name: missing; a spec given as a mapping must name its experiment.")
    problems += _schema_problems(constants, cell_schema(), "constants", "constants")
    problems += _schema_problems(variables, _variables_schema(), "variables", "variables")
    _raise(source, problems)

    for key, prop in meta_schema["properties"].items():
        if "default" in prop:
            meta.setdefault(key, copy.deepcopy(prop["default"]))
    cells, cell_problems = _expand(constants, variables)
    _raise(source, cell_problems)
    return Spec(meta_data=meta, constants=constants, variables=variables, source=source, _cells=tuple(cells))


def load_workflow_spec(default_spec: str | os.PathLike, cli_config: Mapping | None = None,
                       cli_configfiles: Sequence | None = None) -> Spec:
    """The spec a Snakemake run uses.

    `--config spec=PATH` names the spec; else the last `--configfile` (it replaces the default
    instead of being merged into it); else `default_spec`. Every other `--config` entry is an
    override (module doc).
    """
    overrides = dict(cli_config or {})
    spec_path = overrides.pop("spec", None)
    if spec_path is None and cli_configfiles:
        spec_path = cli_configfiles[-1]
    return load_spec(spec_path or default_spec, overrides)


def validate_cell_config(config: Mapping, source: str = "cell config") -> dict:
    """A complete cell config from `config` (coerced, checked, defaults filled)."""
    values = _coerce_section(dict(config), cell_schema()["properties"])
    _raise(source, _schema_problems(values, cell_schema(), "", "cell"))
    resolved = {**cell_defaults(), **values}
    _raise(source, _cell_problems(resolved))
    return resolved


def load_cell_config(path: str | os.PathLike) -> dict:
    """The config of one cell from a flat YAML of cell keys (as the workflow writes them)."""
    data = _read_yaml(path)
    if set(data) & set(SECTIONS):
        raise ConfigError(
            f"{path}: this is an experiment spec (meta_data/constants/variables), not one cell's config; "
            "run it with run_experiment.py -e, or give a cell's config.yaml."
        )
    return validate_cell_config(data, str(path))


def save_yaml(data: Mapping, path: str | os.PathLike) -> Path:
    """Write a config or spec as YAML, atomically (keys sorted, so equal configs give equal files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(dict(data), sort_keys=True, default_flow_style=False))
    tmp.replace(path)
    return path


def needs_vae_pretraining(config: Mapping) -> bool:
    return config["diffusion"] in MODELS_WITH_VAE and config["vae_pretrain_steps"] > 0


def vae_key(config: Mapping) -> str:
    """A short readable name for the VAE settings of a cell, e.g. 'gen-maze2d-umaze-z64-1a2b3c4d'."""
    settings = json.dumps({key: config[key] for key in VAE_KEYS}, sort_keys=True)
    digest = hashlib.sha256(settings.encode()).hexdigest()[:8]
    return f"{path_value(config['dataset'])}-z{config['vae_latent_dim']}-{digest}"


def vae_config(config: Mapping) -> dict:
    """The config of a cell's VAE pretrain job: the defaults plus the cell's VAE settings.

    Built only from what `vae_key` hashes, so every cell with one key gets one identical VAE (and
    a cell's device or thread count, which do not change the VAE, never re-run its pre-training).
    """
    resolved = cell_defaults()
    resolved.update({key: config[key] for key in (*VAE_KEYS, "diffusion", "loader")})
    return resolved


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m diffuser.config OUT JSON`: write a config given as JSON to OUT as YAML.

    The workflow's config rules run this, as a shell job whose output goes to the rule's log: a
    `script:` job prints a KeyboardInterrupt traceback on the console when Ctrl-C lands during
    Snakemake's script preamble (measured), and a `run:` block is a whole new Snakemake process.
    """
    import sys

    out, settings = argv if argv is not None else sys.argv[1:]
    save_yaml(json.loads(settings), out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
