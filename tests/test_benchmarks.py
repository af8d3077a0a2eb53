"""The benchmark scripts still run and report consistent numbers (tiny sizes; nothing is timed here)."""

import importlib
import math
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

# A tiny model for every benchmark: the scripts' logic, not the default size, is under test.
TINY = ["--set", "hidden_dim=32", "vae_latent_dim=4", "trajectory_latent_dim=8", "batch_size=16",
        "n_diffusion_steps=8", "n_sampling_steps=2", "--set", "n_action_samples=2", "--dataset-steps", "3000"]


def bench(name: str):
    return importlib.import_module(f"bench_{name}")


def positive(*values) -> bool:
    return all(math.isfinite(v) and v > 0 for v in values)


def test_bench_training_reports_steps_per_second_relative_to_bc(tiny_maze_data, capsys):
    rows = bench("training").main(
        ["--data-dir", str(tiny_maze_data), "--steps", "2", "--warmup", "1", "--repeats", "2", *TINY]
    )
    assert [row["model"] for row in rows] == ["BC", "DiffusionRL, no critic", "DiffusionRL + critic"]
    bc = rows[0]
    for row in rows:
        assert positive(row["ms_per_step"], row["steps_per_second"], row["parameters"])
        assert row["steps_per_second"] == pytest.approx(1000 / row["ms_per_step"])
        assert row["time_vs_bc"] == pytest.approx(row["ms_per_step"] / bc["ms_per_step"])
    assert rows[2]["parameters"] > rows[1]["parameters"]  # the critic adds networks
    assert "time vs BC" in capsys.readouterr().out


def test_bench_evaluation_compares_batched_and_sequential_episodes(tiny_maze_data, capsys):
    rows = bench("evaluation").main(
        ["--data-dir", str(tiny_maze_data), "--episodes", "2", "--max-episode-steps", "4", "--repeats", "1", *TINY]
    )
    assert [row["policy"] for row in rows] == ["BC", "DiffusionRL + critic"]
    for row in rows:
        assert row["env_steps"] == 2 * 4 and row["full_length"]
        assert positive(row["batched_steps_per_second"], row["sequential_steps_per_second"])
        assert row["batched_over_sequential"] == pytest.approx(
            row["batched_steps_per_second"] / row["sequential_steps_per_second"])
    assert rows[0]["same_returns"]  # BC is deterministic: the same seeds give the same episodes
    assert "batched/sequential" in capsys.readouterr().out


def test_bench_online_collection_reports_ratios_to_one_environment(tiny_maze_data, capsys):
    rows = bench("online_collection").main(
        ["--data-dir", str(tiny_maze_data), "--envs", "1", "3", "--steps", "12", "--repeats", "1", *TINY]
    )
    assert [row["envs"] for row in rows] == [1, 3]
    for row in rows:
        assert positive(row["collect"], row["phase"])
        assert row["collect_ratio"] == pytest.approx(row["collect"] / rows[0]["collect"])
        assert row["phase_ratio"] == pytest.approx(row["phase"] / rows[0]["phase"])
    assert rows[0]["collect_ratio"] == 1.0
    assert "collect+PPO steps/s" in capsys.readouterr().out


def test_bench_sampling_trains_a_policy_and_compares_samplers(tiny_maze_data, capsys):
    rows = bench("sampling").main(
        ["--data-dir", str(tiny_maze_data), "--train-steps", "3", "--vae-steps", "2", "--episodes", "2",
         "--calls", "1", "--repeats", "1", "--max-episode-steps", "4", "--ddim-steps", "2", "4", *TINY]
    )
    assert [(row["sampler"], row["sampling_steps"]) for row in rows] == [("DDIM", 2), ("DDIM", 4), ("DDPM", 8)]
    ddpm = rows[-1]
    for row in rows:
        assert positive(row["ms_per_act"])
        assert row["speedup_vs_ddpm"] == pytest.approx(ddpm["ms_per_act"] / row["ms_per_act"])
        assert math.isfinite(row["normalized_score"]) and 0 <= row["success_rate"] <= 1
    assert "x faster than DDPM" in capsys.readouterr().out


def test_bench_sampler_quick_run_reports_consistent_ratios(capsys):
    rows = bench("sampler").main(["--quick"])
    assert [row["action_horizon"] for row in rows] == [4, 1]
    for row in rows:
        assert positive(row["loader_batches_per_second"], row["sampler_batches_per_second"])
        assert row["ratio"] == pytest.approx(row["sampler_batches_per_second"] / row["loader_batches_per_second"])
    assert "items identical for the same indices: yes" in capsys.readouterr().out


def test_run_all_runs_or_names_every_benchmark_script():
    run_all = importlib.import_module("run_all")
    scripts = {path.stem.removeprefix("bench_") for path in (ROOT / "benchmarks").glob("bench_*.py")}
    assert set(run_all.BENCHMARKS) | set(run_all.NOT_RUN) == scripts
    assert not set(run_all.BENCHMARKS) & set(run_all.NOT_RUN)


@pytest.mark.slow  # three worker processes, each importing torch: ~35 s on the 2-core machine
def test_bench_fast_step_reports_ratios_to_the_first_variant_and_the_floor(tiny_maze_data, capsys):
    rows = bench("fast_step").main(
        ["--data-dir", str(tiny_maze_data), "--steps", "2", "--warmup", "1", "--repeats", "2", "--no-compile", *TINY]
    )
    assert [row["variant"] for row in rows] == ["this checkout, eager", "this checkout, per-step host reads",
                                                "matrix products alone (floor)"]
    assert rows[0]["speedup"] == 1.0 and rows[-1]["vs_floor"] == 1.0
    for row in rows:
        assert positive(row["ms_per_step"], row["ops_per_step"])
        assert row["vs_floor"] == pytest.approx(row["ms_per_step"] / rows[-1]["ms_per_step"])
    assert rows[-1]["ops_per_step"] < rows[0]["ops_per_step"]  # the floor is the products alone
    assert "x floor" in capsys.readouterr().out


@pytest.mark.slow  # three worker processes, each importing torch: ~35 s on the 2-core machine
def test_bench_gpu_cells_runs_cells_side_by_side(tiny_maze_data, capsys):
    # on the CPU here: the script's logic, not a GPU's speed
    rows = bench("gpu_cells").main(["--data-dir", str(tiny_maze_data), "--device", "cpu", "--cells", "1", "2",
                                    "--modes", "eager", "--steps", "2", "--warmup", "1", "--repeats", "1", *TINY])
    assert [(row["mode"], row["cells"]) for row in rows] == [("eager", 1), ("eager", 2)]
    assert rows[0]["total_vs_one"] == 1.0
    assert rows[1]["total_vs_one"] == pytest.approx(rows[1]["total"] / rows[0]["total"])
    assert positive(*(row["per_cell"] for row in rows))
    assert "steps/s total" in capsys.readouterr().out
