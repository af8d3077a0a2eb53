"""`prepare_dataset`: dispatch by name, every metadata field of the contract, idempotence (no
rewrite when nothing changed, a rebuild when the source or settings did), validation before
anything is written, and the environment check."""

import json
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_d4rl_format import HOPPER, d4rl_steps, write_d4rl_hdf5

from diffuser.datasets import prepare
from diffuser.datasets.episodes import EPISODES_FILE, METADATA_FILE, load_processed
from diffuser.datasets.prepare import prepare_dataset
from diffuser.envs.make import EnvironmentUnavailable
from diffuser.envs.scores import reference_scores
from diffuser.errors import DatasetError

CONTRACT_FIELDS = {
    "format_version", "name", "source", "source_path", "source_sha256", "env_id", "env_kwargs",
    "max_episode_steps", "observation_keys", "goal_conditioned", "obs_dim", "action_dim", "action_low",
    "action_high", "n_episodes", "n_steps", "partial_last_episode", "ref_min_score", "ref_max_score",
    "reference_source", "score", "stats", "generation", "source_bytes", "source_generation",
}  # fmt: skip


def _hopper_source(data_dir, **kwargs):
    path = data_dir / "raw" / "d4rl" / f"{HOPPER}.hdf5"
    write_d4rl_hdf5(path, d4rl_steps(**kwargs))
    return path


def _mtimes(directory):
    return {name: (directory / name).stat().st_mtime_ns for name in (EPISODES_FILE, METADATA_FILE)}


def test_prepare_is_idempotent_and_rebuilds_when_the_source_changes(tmp_path, caplog):
    source = _hopper_source(tmp_path, seed=0)
    out = prepare_dataset(HOPPER, tmp_path)
    before = _mtimes(out)
    assert prepare_dataset(HOPPER, tmp_path) == out
    assert _mtimes(out) == before, "an up-to-date dataset is not rewritten"

    _hopper_source(tmp_path, seed=1)
    with caplog.at_level(logging.WARNING, logger="diffuser.datasets.prepare"):
        prepare_dataset(HOPPER, tmp_path)
    assert "rebuilding" in caplog.text and "sha256 differs" in caplog.text
    arrays, metadata = load_processed(out)
    np.testing.assert_array_equal(arrays["rewards"], d4rl_steps(seed=1)["rewards"])
    assert metadata["source_sha256"] == prepare.source_sha256(source)


def test_force_rebuilds_and_a_corrupt_processed_dataset_is_rebuilt(tmp_path, caplog):
    _hopper_source(tmp_path)
    out = prepare_dataset(HOPPER, tmp_path)
    before = _mtimes(out)
    prepare_dataset(HOPPER, tmp_path, force=True)
    assert _mtimes(out) != before

    (out / EPISODES_FILE).write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="diffuser.datasets.prepare"):
        prepare_dataset(HOPPER, tmp_path)
    assert "cannot be read" in caplog.text
    assert load_processed(out)[1]["n_steps"] == 40


def test_invalid_source_is_rejected_before_anything_is_written(tmp_path):
    _hopper_source(tmp_path)
    out = prepare_dataset(HOPPER, tmp_path)
    before = _mtimes(out)
    bad = d4rl_steps(seed=2)
    bad["observations"][17, 3] = np.nan
    write_d4rl_hdf5(tmp_path / "raw" / "d4rl" / f"{HOPPER}.hdf5", bad)
    with pytest.raises(DatasetError, match=r"`observations` .* first at step 17"):
        prepare_dataset(HOPPER, tmp_path)
    assert _mtimes(out) == before, "the previous processed dataset is left as it was"


def test_dimensions_are_checked_against_the_evaluation_env(tmp_path):
    _hopper_source(tmp_path, obs_dim=17)
    with pytest.raises(DatasetError, match=r"`observations` .* dimension 17 .* environment's is 11"):
        prepare_dataset(HOPPER, tmp_path)
    assert not (tmp_path / "processed" / HOPPER).exists()


def test_without_the_env_the_check_is_skipped_with_a_warning(tmp_path, monkeypatch, caplog):
    _hopper_source(tmp_path, obs_dim=5)

    def unavailable(metadata):
        raise EnvironmentUnavailable("MuJoCo is not installed")

    monkeypatch.setattr(prepare, "make_env", unavailable)
    with caplog.at_level(logging.WARNING, logger="diffuser.datasets.prepare"):
        arrays, metadata = load_processed(prepare_dataset(HOPPER, tmp_path))
    assert "cannot build the evaluation env" in caplog.text
    assert metadata["obs_dim"] == 5
    np.testing.assert_allclose(metadata["action_low"], arrays["actions"].min(0))
    np.testing.assert_allclose(metadata["action_high"], arrays["actions"].max(0))


def test_missing_d4rl_file_says_where_to_put_it(tmp_path):
    with pytest.raises(DatasetError, match="D4RL") as caught:
        prepare_dataset(HOPPER, tmp_path)
    assert str(tmp_path / "raw" / "d4rl" / f"{HOPPER}.hdf5") in str(caught.value)


class FakeMazeGenerator:
    """Stands in for generate_maze2d_hdf5: a small D4RL-layout file with the settings as attributes."""

    def __init__(self):
        self.calls = []

    def __call__(self, path, maze, n_steps=100_000, action_noise=0.5, seed=0):
        self.calls.append({"maze": maze, "steps": n_steps, "action_noise": action_noise, "seed": seed})
        steps = d4rl_steps(n=n_steps, obs_dim=6, action_dim=2, terminal_at=(), timeout_at=(9,), seed=seed)
        write_d4rl_hdf5(path, steps)
        settings = {"steps": n_steps, "action_noise": action_noise, "seed": seed}
        with h5py.File(path, "a") as file:
            file.attrs.update(settings)
        return settings


def test_generated_names_generate_once_and_other_settings_get_their_own_dataset(tmp_path, monkeypatch):
    generator = FakeMazeGenerator()
    monkeypatch.setattr(prepare, "generate_maze2d_hdf5", generator)
    out = prepare_dataset("gen-maze2d-medium", tmp_path, steps=30, action_noise=0.3, seed=4)
    assert generator.calls == [{"maze": "medium", "steps": 30, "action_noise": 0.3, "seed": 4}]
    assert out == tmp_path / "processed" / "gen-maze2d-medium-30steps-noise0.3-seed4"
    assert (tmp_path / "raw" / "generated" / "gen-maze2d-medium-30steps-noise0.3-seed4.hdf5").is_file()
    assert load_processed(out)[1]["generation"] == {"steps": 30, "action_noise": 0.3, "seed": 4}

    prepare_dataset("gen-maze2d-medium", tmp_path, steps=30, action_noise=0.3, seed=4)
    assert len(generator.calls) == 1, "an up-to-date dataset is not generated again"

    # Processed data lost, raw file intact and made with these settings: only re-processed.
    for path in out.iterdir():
        path.unlink()
    out.rmdir()
    prepare_dataset("gen-maze2d-medium", tmp_path, steps=30, action_noise=0.3, seed=4)
    assert len(generator.calls) == 1 and out.is_dir()

    other = prepare_dataset("gen-maze2d-medium", tmp_path, steps=30, action_noise=0.3, seed=5)
    assert generator.calls[-1]["seed"] == 5 and other != out
    arrays, metadata = load_processed(other)
    assert metadata["generation"]["seed"] == 5
    np.testing.assert_array_equal(
        arrays["rewards"], d4rl_steps(n=30, obs_dim=6, action_dim=2, seed=5)["rewards"]
    )
    assert load_processed(out)[1]["generation"]["seed"] == 4, "the seed-4 dataset is left as it was"
    prepare_dataset("gen-maze2d-medium", tmp_path, steps=30, action_noise=0.3, seed=4)
    assert len(generator.calls) == 2, "switching back rebuilds nothing"


def test_locomotion_names_use_the_locomotion_generator(tmp_path, monkeypatch):
    calls = []

    def fake(path, env_name, n_steps, seed):
        calls.append((env_name, n_steps, seed))
        write_d4rl_hdf5(path, d4rl_steps(n=n_steps, obs_dim=17, action_dim=6, seed=seed))
        with h5py.File(path, "a") as file:
            file.attrs.update({"steps": n_steps, "seed": seed})
        return {"steps": n_steps, "seed": seed}

    monkeypatch.setattr(prepare, "generate_locomotion_hdf5", fake)
    _, metadata = load_processed(prepare_dataset("gen-walker2d-random", tmp_path, steps=40, seed=2))
    assert calls == [("walker2d", 40, 2)]
    assert metadata["env_id"] == "Walker2d-v5" and metadata["generation"] == {
        "steps": 40,
        "action_noise": None,
        "seed": 2,
    }
    # The action noise does not apply to random data, so changing it changes nothing.
    prepare_dataset("gen-walker2d-random", tmp_path, steps=40, action_noise=0.9, seed=2)
    assert len(calls) == 1


def test_generated_maze_dataset_has_every_contract_field(tmp_path):
    out = prepare_dataset("gen-maze2d-umaze", tmp_path, steps=600, action_noise=0.5, seed=0)
    arrays, metadata = load_processed(out)
    assert set(metadata) == CONTRACT_FIELDS
    assert json.loads((out / METADATA_FILE).read_text()) == metadata
    assert metadata["source"] == "generated"
    assert metadata["source_path"] == str(tmp_path / "raw" / "generated" / f"{out.name}.hdf5")
    assert out.name == "gen-maze2d-umaze-600steps-noise0.5-seed0"
    assert (metadata["env_id"], metadata["max_episode_steps"]) == ("PointMaze_UMaze-v3", 300)
    assert metadata["observation_keys"] == ["observation", "desired_goal"] and metadata["goal_conditioned"]
    assert (metadata["obs_dim"], metadata["action_dim"]) == (6, 2)
    assert metadata["action_low"] == [-1.0, -1.0] and metadata["action_high"] == [1.0, 1.0]
    assert (metadata["n_steps"], metadata["n_episodes"]) == (600, 2)
    np.testing.assert_array_equal(arrays["episode_lengths"], [300, 300])
    assert metadata["partial_last_episode"] == "none"
    ref_min, ref_max, ref_source = reference_scores("gen-maze2d-umaze")
    assert (metadata["ref_min_score"], metadata["ref_max_score"], metadata["reference_source"]) == (
        ref_min,
        ref_max,
        ref_source,
    )
    assert metadata["generation"] == {"steps": 600, "action_noise": 0.5, "seed": 0}
    assert metadata["score"] == "normalized_return" and metadata["source_generation"] is None
    assert metadata["source_bytes"] == Path(metadata["source_path"]).stat().st_size
    np.testing.assert_allclose(
        metadata["stats"]["observations"]["mean"],
        arrays["observations"].astype(np.float64).mean(0),
        rtol=1e-9,
    )
    assert len(metadata["stats"]["actions"]["std"]) == 2


@pytest.mark.parametrize(
    "name,steps,noise,seed",
    [("gen-maze2d-medium", 30, 0.3, 4), ("gen-maze2d-large", 3000, 1e-05, 1), ("gen-hopper-random", 50, None, 2),
     ("ogbench:cube-single-play-singletask-v0", 1000, None, 0)],
)
def test_a_generated_datasets_directory_name_gives_back_its_settings(name, steps, noise, seed):
    key = prepare.dataset_key(name, steps, noise, seed)
    assert prepare.parse_dataset_key(key) == (name, steps, noise, seed)


@pytest.mark.parametrize("key", ["hopper-medium-v2", "gen-maze2d-umaze-3000steps-seed0",
                                 "gen-hopper-random-50steps-noise0.5-seed2", "hopper-medium-3steps-seed1"])
def test_other_names_are_not_read_as_generated_keys(key):
    assert prepare.parse_dataset_key(key) is None


def test_the_prepare_command_a_missing_dataset_names_builds_that_dataset(tmp_path, monkeypatch):
    from diffuser import cli

    generator = FakeMazeGenerator()
    monkeypatch.setattr(prepare, "generate_maze2d_hdf5", generator)
    missing = tmp_path / "processed" / prepare.dataset_key("gen-maze2d-medium", 30, 0.3, 4)
    with pytest.raises(DatasetError, match=r"run `python -m diffuser prepare --dataset (\S+)`") as error:
        load_processed(missing)
    named = error.value.args[0].split("--dataset ")[1].split("`")[0]
    cli.main(["prepare", "--dataset", named, "--data-dir", str(tmp_path)])
    assert generator.calls == [{"maze": "medium", "steps": 30, "action_noise": 0.3, "seed": 4}]
    assert load_processed(missing)[1]["generation"] == {"steps": 30, "action_noise": 0.3, "seed": 4}
