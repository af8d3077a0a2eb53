"""Experiment specs: the seed's format, the sweep grid, defaults, overrides, and errors a user can read."""

from pathlib import Path

import pytest
import yaml

from diffuser.config import (
    ConfigError,
    cell_defaults,
    cell_schema,
    load_cell_config,
    load_spec,
    load_workflow_spec,
    needs_vae_pretraining,
    save_yaml,
    vae_config,
    vae_key,
)

ROOT = Path(__file__).resolve().parent.parent
SEED_GUIDE_EXAMPLE = """
meta_data:
  script_path: "train.py"
constants:
  diffusion: "models.DiffusionRL"
  loader: "datasets.VAESequenceDataset"
  vae_latent_dim: 64
  trajectory_latent_dim: 128
  vae_weight: 1.0
  online_training: false
  rl_learning_rate: 3e-4
  use_value_function: true
variables:
  online_training: [false, true]
"""


def spec(constants=None, variables=None, **meta):
    return {"meta_data": {"exp_name": "t", **meta}, "constants": constants or {}, "variables": variables or {}}


def error_of(data, overrides=None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_spec(data, overrides)
    return str(caught.value)


# ------------------------------------------------------------------------------ the grid


def test_seed_guide_spec_loads_with_variables_winning_over_constants(tmp_path):
    path = tmp_path / "vae_diffusion_rl_example.yaml"
    path.write_text(SEED_GUIDE_EXAMPLE)
    loaded = load_spec(path)
    assert loaded.exp_name == "vae_diffusion_rl_example"  # from the file name
    assert [c.name for c in loaded.cells()] == ["online_training~False", "online_training~True"]
    assert [c.config["online_training"] for c in loaded.cells()] == [False, True]
    # PyYAML reads 3e-4 as a string; the schema says number
    assert loaded.cells()[0].config["rl_learning_rate"] == pytest.approx(3e-4)
    assert isinstance(loaded.cells()[0].config["rl_learning_rate"], float)


def test_grid_is_the_cartesian_product_of_nested_variables():
    loaded = load_spec(spec(variables={
        "seed": [100, 200, 300],
        "vae": {"vae_latent_dim": [32, 64]},
        "online_training": [False, True],
    }))
    cells = loaded.cells()
    assert len(cells) == 12
    assert len({c.name for c in cells}) == 12
    assert {(c.config["seed"], c.config["vae_latent_dim"], c.config["online_training"]) for c in cells} == {
        (s, z, o) for s in (100, 200, 300) for z in (32, 64) for o in (False, True)
    }
    assert loaded.swept_variables == ["online_training", "seed", "vae_latent_dim"]


def test_cell_names_do_not_depend_on_the_order_keys_are_written_in():
    first = load_spec(spec(variables={"seed": [100], "online_training": [True]}))
    second = load_spec(spec(variables={"online_training": [True], "seed": [100]}))
    assert [c.name for c in first.cells()] == [c.name for c in second.cells()] == ["online_training~True/seed~100"]


def test_cell_config_is_complete_with_schema_defaults():
    (cell,) = load_spec(spec(constants={"hidden_dim": 64})).cells()
    assert cell.name == "default"
    assert set(cell.config) == set(cell_schema()["properties"])
    assert cell.config["hidden_dim"] == 64
    assert cell.config["vae_kl_weight"] == cell_defaults()["vae_kl_weight"]


def test_numeric_strings_are_coerced_to_the_schema_type():
    (cell,) = load_spec(spec(constants={
        "learning_rate": "1e-4", "n_train_steps": "1e3", "batch_size": "64", "clip_denoised": "False", "trainer": "null",
        "vae_weight": 1,
    })).cells()
    assert cell.config["learning_rate"] == pytest.approx(1e-4)
    assert cell.config["n_train_steps"] == 1000 and isinstance(cell.config["n_train_steps"], int)
    assert cell.config["batch_size"] == 64
    assert cell.config["clip_denoised"] is False
    assert cell.config["trainer"] is None
    assert isinstance(cell.config["vae_weight"], float)


# ------------------------------------------------------------------------------ overrides


def test_overriding_a_swept_key_pins_it():
    loaded = load_spec(spec(variables={"seed": [1, 2], "online_training": [False, True]}), {"seed": 7})
    assert [c.name for c in loaded.cells()] == ["online_training~False", "online_training~True"]
    assert {c.config["seed"] for c in loaded.cells()} == {7}


def test_overrides_as_snakemake_passes_them():
    # `--config exp_name=quick 'constants={hidden_dim: 64}' 'variables={seed: [1, 2, 3]}'`: nested values are strings
    loaded = load_spec(
        spec(variables={"online_training": [False, True]}),
        {"exp_name": "quick", "constants": {"hidden_dim": "64"}, "variables": {"seed": ["1", "2", "3"]}},
    )
    assert loaded.exp_name == "quick"
    assert len(loaded.cells()) == 6
    assert {c.config["hidden_dim"] for c in loaded.cells()} == {64}
    assert {c.config["seed"] for c in loaded.cells()} == {1, 2, 3}


def test_workflow_spec_prefers_spec_entry_then_configfile_then_default(tmp_path):
    default, other, third = (tmp_path / f"{n}.yaml" for n in ("default", "other", "third"))
    for path in (default, other, third):
        path.write_text(yaml.safe_dump({"variables": {"seed": [1, 2]}}))
    assert load_workflow_spec(default).exp_name == "default"
    assert load_workflow_spec(default, {}, [other]).exp_name == "other"
    from_spec = load_workflow_spec(default, {"spec": str(third), "seed": 5}, [other])
    assert from_spec.exp_name == "third"
    assert [c.config["seed"] for c in from_spec.cells()] == [5]


# ------------------------------------------------------------------------------ errors


def test_typo_names_the_key_and_suggests_the_closest_known_one():
    message = error_of(spec(constants={"learning_rat": 0.001}))
    assert "constants.learning_rat" in message and "did you mean 'learning_rate'" in message
    message = error_of(spec(variables={"vae_latnt_dim": [8]}))
    assert "variables.vae_latnt_dim" in message and "'vae_latent_dim'" in message
    message = error_of({"meta_data": {"exp_name": "t", "num_worker": 2}})
    assert "meta_data.num_worker" in message and "'num_workers'" in message
    assert "did you mean 'variables'" in error_of({"variabels": {"seed": [1]}})
    assert "did you mean 'seed'" in error_of(spec(), {"sede": 3})


def test_key_in_the_wrong_section_says_where_it_belongs():
    assert "belongs under meta_data" in error_of(spec(constants={"num_workers": 2}))
    assert "put it under constants" in error_of({"meta_data": {"exp_name": "t", "seed": 1}})


def test_wrong_type_says_what_was_expected_and_what_was_given():
    message = error_of(spec(constants={"batch_size": "large"}))
    assert "constants.batch_size" in message and "an integer >= 1" in message and "'large'" in message
    message = error_of(spec(variables={"vae_latent_dim": [32, 2.5]}))
    assert "variables.vae_latent_dim[1]" in message and "2.5" in message
    message = error_of(spec(constants={"sampler": "euler"}))
    assert "one of \"ddim\", \"ddpm\"" in message and "'euler'" in message
    assert "expected a mapping" in error_of({"constants": [1, 2]})


def test_empty_or_scalar_variable_is_refused():
    message = error_of(spec(variables={"seed": []}))
    assert "variables.seed" in message and "empty" in message
    message = error_of(spec(variables={"seed": 100}))
    assert "variables.seed" in message and "list" in message and "[100]" in message


def test_impossible_values_name_the_cell_and_the_keys():
    message = error_of(spec(constants={"n_diffusion_steps": 10}, variables={"n_sampling_steps": [5, 20]}))
    assert "n_sampling_steps~20" in message and "n_sampling_steps (20)" in message and "n_diffusion_steps (10)" in message
    assert "n_sampling_steps~5:" not in message
    message = error_of(spec(constants={"online_training": True, "n_train_steps": 100, "rl_warmup_steps": 100}))
    assert "rl_warmup_steps (100)" in message
    assert "utils.Trainer" in error_of(spec(constants={"trainer": "utils.Trainer", "online_training": True}))


def test_the_seed_switch_use_value_function_sweeps_with_default_advantage_weights():
    # advantage_weight_beta defaults above 0; without a critic it has nothing to weigh by and is moot,
    # so sweeping the seed's key must not demand a second key.
    cells = load_spec(spec(variables={"use_value_function": [True, False]})).cells()
    assert [c.config["use_value_function"] for c in cells] == [True, False]
    assert all(c.config["advantage_weight_beta"] > 0 for c in cells)


def test_cells_generating_a_dataset_differently_get_different_dataset_directories():
    from diffuser.steps import processed_dir

    cells = load_spec(spec(variables={"dataset_seed": [0, 1], "dataset_action_noise": [0.5, 1.5]})).cells()
    directories = {processed_dir(cell.config) for cell in cells}
    assert len(directories) == 4
    assert Path("data/processed/gen-maze2d-umaze-100000steps-noise1.5-seed1") in directories


def test_a_dataset_name_typo_is_refused_before_any_job_with_the_valid_names():
    message = error_of(spec(constants={"dataset": "gen-maze2d-umaz"}))
    assert "gen-maze2d-umaz'" in message and "gen-maze2d-{umaze,medium,large}" in message


@pytest.mark.parametrize("name", ["../../../tmp/evil", "/tmp/evil", "minari:../../x", "gen-maze2d-umaze/.."])
def test_a_dataset_name_that_would_leave_data_is_refused(name):
    message = error_of(spec(constants={"dataset": name}))
    assert "not a dataset name" in message


def test_minari_names_with_slashes_are_accepted():
    cell = load_spec(spec(constants={"dataset": "minari:D4RL/pointmaze/umaze-v2"})).cells()[0]
    assert cell.config["dataset"] == "minari:D4RL/pointmaze/umaze-v2"


def test_all_problems_are_reported_together():
    message = error_of(spec(constants={"batch_size": 0, "hiden_dim": 8}, variables={"seed": []}))
    assert message.count("\n  - ") == 3


def test_missing_file_and_bad_yaml_are_one_sentence(tmp_path):
    assert "no such file" in error_of(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("constants: {seed: [1,\n")
    assert "not valid YAML" in error_of(bad)


# ------------------------------------------------------------------------------ cell configs and VAE keys


def test_cell_config_round_trips_through_yaml(tmp_path):
    (cell,) = load_spec(spec(constants={"learning_rate": "3e-4", "dataset": "minari:D4RL/door/human-v2"})).cells()
    path = save_yaml(cell.config, tmp_path / "cells" / cell.name / "config.yaml")
    assert load_cell_config(path) == cell.config


def test_cell_config_file_is_validated(tmp_path):
    path = tmp_path / "cell.yaml"
    path.write_text("batch_sise: 32\n")
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        load_cell_config(path)
    path.write_text(SEED_GUIDE_EXAMPLE)
    with pytest.raises(ConfigError, match="experiment spec"):
        load_cell_config(path)


def test_cells_that_agree_on_vae_settings_share_a_vae_key():
    cells = load_spec(spec(variables={"online_training": [False, True], "seed": [1, 2], "vae_latent_dim": [8, 16]},
                           constants={"rl_warmup_steps": 10})).cells()
    keys = {vae_key(c.config) for c in cells}
    assert len(keys) == 4  # seed x latent dim; online_training does not change the VAE
    by_key = {}
    for c in cells:
        by_key.setdefault(vae_key(c.config), []).append(c)
    for members in by_key.values():
        assert len(members) == 2
        assert len({yaml.safe_dump(vae_config(c.config)) for c in members}) == 1
    assert all(k.startswith("gen-maze2d-umaze-z") for k in keys)


def test_vae_key_changes_with_every_vae_setting_only():
    base = cell_defaults()
    assert vae_key(base) == vae_key({**base, "online_training": True, "n_train_steps": 5})
    for key, value in {"vae_kl_weight": 0.5, "dataset": "gen-maze2d-medium", "learning_rate": base["learning_rate"] / 2, "seed": 1}.items():
        assert vae_key({**base, key: value}) != vae_key(base), key


def test_only_models_with_a_vae_are_pretrained():
    base = cell_defaults()
    assert needs_vae_pretraining(base)
    assert not needs_vae_pretraining({**base, "diffusion": "models.BC"})
    assert not needs_vae_pretraining({**base, "vae_pretrain_steps": 0})


@pytest.mark.parametrize("path", ["config/config.yaml", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "exp_specs").glob("*.yaml"))])
def test_shipped_specs_are_valid(path):
    loaded = load_spec(ROOT / path)
    assert len(loaded.cells()) >= 2
    if "online_training" in loaded.variables:  # the OGBench specs compare models, offline
        assert {c.config["online_training"] for c in loaded.cells()} == {False, True}


# The seed's guide (shared/seed/): its example spec's keys and values, literally.
GUIDE_CONSTANTS = {
    "diffusion": "models.DiffusionRL", "loader": "datasets.VAESequenceDataset", "vae_latent_dim": 64,
    "trajectory_latent_dim": 128, "vae_weight": 1.0, "online_training": False, "rl_learning_rate": 0.0003,
    "use_value_function": True, "policy_gradient_weight": 1.0, "value_function_weight": 0.5,
    "entropy_weight": 0.01, "evaluator": "utils.MADEvaluator", "num_eval": 10, "continue_training": True,
}


def test_the_guides_example_spec_has_its_keys_and_values_on_a_dataset_made_here():
    from diffuser.datasets.prepare import resolve_source

    loaded = load_spec(ROOT / "exp_specs" / "vae_diffusion_rl_example.yaml")
    assert {k: loaded.constants[k] for k in GUIDE_CONSTANTS} == GUIDE_CONSTANTS
    assert loaded.variables == {"online_training": [False, True]}
    assert loaded.meta_data["script_path"] == "train.py"
    # named after its file, so a copy (as the guide says to make one) is a new experiment
    assert loaded.exp_name == "vae_diffusion_rl_example"
    config = loaded.cells()[0].config
    source = resolve_source(config["dataset"], "data", config["dataset_steps"], config["dataset_action_noise"],
                            config["dataset_seed"])
    assert source.kind == "generated"


def test_writing_a_config_does_not_load_torch(tmp_path):
    """The workflow's config jobs (`python -m diffuser.config OUT JSON`, one process each) stay cheap: no torch import
    (it took ~2.4 s of each such job here before the loggers' check was imported lazily)."""
    import subprocess
    import sys

    out = tmp_path / "cell.yaml"
    probe = ("import runpy, sys; sys.argv = ['diffuser.config', sys.argv[1], '{\"seed\": 3}']\n"
             "try:\n    runpy.run_module('diffuser.config', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe, str(out)], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
    assert yaml.safe_load(out.read_text()) == {"seed": 3}
