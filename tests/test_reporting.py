import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml

from diffuser.reporting import (
    ReportError,
    aggregate_experiment,
    collect_cells,
    summarize,
    write_summary,
)
from diffuser.reporting.figures import env_step_curves, learning_curves, plot_learning_curve, variant_colors

SEEDS = (100, 200, 300)
# Final normalized scores per (online_training, seed).
SCORES = {False: {100: 40.0, 200: 50.0, 300: 66.0}, True: {100: 70.0, 200: 75.0, 300: 89.0}}
VARIABLES = ["online_training", "seed"]
T_975_DF2 = 4.303  # Student t table, two-sided 95%, 2 degrees of freedom


def online_env_steps(step: int) -> int:
    """An online cell's environment steps at training step `step`: 10 per training step after step 40."""
    return max(step - 40, 0) * 10


def write_cell(exp_dir, online, seed, score, log_steps, with_eval=True):
    cell = exp_dir / "cells" / f"online_training~{online}" / f"seed~{seed}"
    cell.mkdir(parents=True)
    config = {"online_training": online, "seed": seed, "rl_warmup_steps": 40, "n_train_steps": 100, "dataset": "x"}
    (cell / "config.yaml").write_text(yaml.safe_dump(config))
    rows = []
    for step in log_steps:
        rows.append((step, "loss", 1.0 + seed / 100 + 100.0 / (step + 1)))
        rows.append((step, "diffusion_loss", 0.5 + seed / 1000 - step / 1000))
        rows.append((step, "vae_kl_loss", 50.0 * 0.9 ** step))
        rows.append((step, "eval_normalized_score", score * step / 100))
        if online:
            rows.append((step, "policy_loss", -0.1 * step / 100))
            rows.append((step, "env_steps", online_env_steps(step)))
            if step > 40:
                rows.append((step, "clip_fraction", 0.1))
    pd.DataFrame(rows, columns=["step", "metric", "value"]).to_csv(cell / "metrics.csv", index=False)
    if with_eval:
        result = {"step": 100, "checkpoint": str(cell / "checkpoints/latest.pt"), "num_episodes": 4, "seed": seed,
                  "mean_return": 2 * score, "mean_normalized_score": score, "std_normalized_score": 1.0,
                  "success_rate": score / 100, "seconds": 0.1, "ema": True}
        (cell / "eval.json").write_text(json.dumps(result))
    return cell


def make_experiment(exp_dir, steps_per_seed=None):
    steps_per_seed = steps_per_seed or {}
    for online, by_seed in SCORES.items():
        for seed, score in by_seed.items():
            write_cell(exp_dir, online, seed, score, steps_per_seed.get(seed, range(0, 101, 10)))
    return exp_dir


def test_summary_mean_and_ci_over_seeds(tmp_path):
    exp_dir = make_experiment(tmp_path / "exp")
    cells = collect_cells(exp_dir, VARIABLES)
    assert len(cells) == 6
    assert cells["online_training"].map(type).eq(bool).all()

    summary = summarize(cells, VARIABLES)
    assert len(summary) == 2
    for online, by_seed in SCORES.items():
        row = summary[summary["online_training"] == online].iloc[0]
        scores = np.array(list(by_seed.values()))
        std = math.sqrt(((scores - scores.mean()) ** 2).sum() / 2)
        assert row["n_seeds"] == 3
        assert row["mean"] == pytest.approx(scores.mean())
        assert row["std"] == pytest.approx(std)
        # 4.303 is rounded to 3 decimals: a relative error of at most 1.2e-4.
        assert row["ci95_half_width"] == pytest.approx(T_975_DF2 * std / math.sqrt(3), rel=2e-4)
        assert (row["ci95_low"], row["ci95_high"]) == pytest.approx(
            (scores.mean() - row["ci95_half_width"], scores.mean() + row["ci95_half_width"]))
        assert (row["min"], row["max"]) == (scores.min(), scores.max())
        assert row["return_mean"] == pytest.approx(2 * scores.mean())

    csv_path = write_summary(exp_dir, VARIABLES)
    assert len(pd.read_csv(csv_path)) == 2
    metrics = json.loads((exp_dir / "summary.json").read_text())
    assert metrics["online_training=True"]["mean_normalized_score"] == pytest.approx(78.0)
    assert metrics["online_training=False"]["n_seeds"] == 3


def test_one_seed_gives_no_interval_and_says_so(tmp_path):
    write_cell(tmp_path, False, 100, 40.0, range(0, 101, 10))
    summary = summarize(collect_cells(tmp_path, VARIABLES), VARIABLES)
    assert len(summary) == 1 and summary["n_seeds"].iloc[0] == 1
    assert math.isnan(summary["ci95_half_width"].iloc[0])
    assert "no confidence interval" in summary["note"].iloc[0]
    write_summary(tmp_path, VARIABLES)
    assert json.loads((tmp_path / "summary.json").read_text())["online_training=False"]["ci95_half_width"] is None


def test_missing_eval_json_names_the_cell(tmp_path):
    make_experiment(tmp_path)
    write_cell(tmp_path, True, 400, 0.0, range(0, 101, 10), with_eval=False)
    with pytest.raises(ReportError, match=r"cell online_training~True/seed~400 has no eval.json.*run its evaluate step"):
        collect_cells(tmp_path, VARIABLES)


def test_cells_table_carries_the_success_step_and_hold_share_where_eval_json_has_them(tmp_path):
    make_experiment(tmp_path)
    eval_path = tmp_path / "cells" / "online_training~True" / "seed~200" / "eval.json"
    result = json.loads(eval_path.read_text())
    eval_path.write_text(json.dumps({**result, "mean_first_success_step": 120.5, "mean_success_hold_share": 0.4}))
    cells = collect_cells(tmp_path, VARIABLES).set_index("cell")
    row = cells.loc["online_training~True/seed~200"]
    assert (row["first_success_step"], row["success_hold_share"]) == (120.5, 0.4)
    others = cells.drop(index="online_training~True/seed~200")
    assert others["success_hold_share"].isna().all()  # an older eval.json, without them


def test_unlisted_swept_variable_is_reported(tmp_path):
    make_experiment(tmp_path)
    cells = collect_cells(tmp_path, VARIABLES)
    with pytest.raises(ReportError, match="share variant and seed"):
        summarize(cells, ["seed"])


def test_learning_curve_mean_is_the_mean_of_seeds(tmp_path):
    # Seeds log at different steps; seed 300 starts late, so the common range is [10, 100].
    steps = {100: range(0, 101, 10), 200: range(0, 101, 20), 300: range(10, 101, 10)}
    exp_dir = make_experiment(tmp_path, steps)
    curves = learning_curves(exp_dir, VARIABLES)
    assert {"loss", "diffusion_loss", "vae_kl_loss", "policy_loss", "eval_normalized_score"} <= set(curves)

    offline = curves["diffusion_loss"][curves["diffusion_loss"]["variant"] == "online_training=False"]
    assert offline["step"].min() == 10 and offline["step"].max() == 100
    at_step = offline.set_index("step")
    # Step 20: every seed logged it. Step 30: seed 200 did not, but its values are linear in step.
    for step in (20, 30):
        expected = np.mean([0.5 + seed / 1000 - step / 1000 for seed in SEEDS])
        assert at_step.loc[step, "mean"] == pytest.approx(expected, rel=1e-9)
        values = [0.5 + seed / 1000 - step / 1000 for seed in SEEDS]
        half = T_975_DF2 * np.std(values, ddof=1) / math.sqrt(3)
        assert at_step.loc[step, "ci_high"] - at_step.loc[step, "mean"] == pytest.approx(half, rel=2e-4)

    fig = plot_learning_curve(curves["diffusion_loss"], "diffusion_loss", variant_colors(list(curves["diffusion_loss"]["variant"].unique())))
    line = fig.axes[0].lines[0]
    assert np.allclose(line.get_xdata(), offline["step"]) and np.allclose(line.get_ydata(), offline["mean"])


def test_online_curves_against_environment_steps(tmp_path):
    exp_dir = make_experiment(tmp_path)
    curves = env_step_curves(exp_dir, VARIABLES)
    assert {"eval_normalized_score", "clip_fraction"} <= set(curves)
    score = curves["eval_normalized_score"]
    assert set(score["variant"]) == {"online_training=True"}, "offline cells take no environment steps"
    at = score.set_index("step")
    online_scores = np.array(list(SCORES[True].values()))
    assert at.loc[online_env_steps(70), "mean"] == pytest.approx(np.mean(online_scores * 70 / 100))
    # the rows before any interaction (steps 0..40) share 0 environment steps: the score there is the last
    # one (step 40, the warm-up's last evaluation), not the mean of the warm-up's evaluations
    assert at.loc[0, "mean"] == pytest.approx(np.mean(online_scores) * 40 / 100)


@pytest.fixture(scope="module")
def aggregated(tmp_path_factory):
    exp_dir = make_experiment(tmp_path_factory.mktemp("exp"))
    return exp_dir, aggregate_experiment(exp_dir, VARIABLES)


def test_aggregate_writes_summary_and_readable_figures(aggregated):
    import matplotlib.image

    exp_dir, paths = aggregated
    assert paths["summary_csv"] == exp_dir / "summary.csv" and paths["summary_json"].exists()
    expected = {"curve_loss.png", "curve_diffusion_loss.png", "curve_vae_kl_loss.png", "curve_policy_loss.png",
                "curve_eval_normalized_score.png", "final_scores.png", "final_scores.svg",
                "final_score_by_online_training.png", "final_score_by_online_training.svg",
                "offline_vs_online.png", "offline_vs_online.svg", "iqm_scores.png",
                "performance_profile.png", "probability_of_improvement.png", "curve_clip_fraction.png",
                "curve_eval_normalized_score_vs_env_steps.png", "curve_clip_fraction_vs_env_steps.png"}
    assert expected <= set(paths)
    for name, path in paths.items():
        assert path.exists() and path.stat().st_size > 0
        if name.endswith(".png") or name.endswith(".svg"):
            assert path.parent == exp_dir / "figures"
        if name.endswith(".png"):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            pixels = matplotlib.image.imread(path)
            assert pixels.shape[0] > 300 and pixels.shape[1] > 600
            assert pixels[..., :3].std() > 0.05  # something was drawn on the white canvas


def test_only_the_given_cells_are_summarized_and_drawn(tmp_path):
    # cells/ still holds seed 300 and a cell of another sweep from an earlier spec
    exp_dir = make_experiment(tmp_path / "exp")
    stale = write_cell(exp_dir, True, 999, 0.0, range(0, 101, 10))
    (stale.parent.parent / "extra_cell").mkdir()
    (stale.parent.parent / "extra_cell" / "eval.json").write_text("not json")
    figures = exp_dir / "figures"
    figures.mkdir()
    (figures / "final_score_by_vae_kl_weight.png").write_bytes(b"an earlier spec's figure")
    current = [f"online_training~{online}/seed~{seed}" for online in (False, True) for seed in (100, 200)]
    paths = aggregate_experiment(exp_dir, VARIABLES, cells=current)
    summary = pd.read_csv(paths["summary_csv"])
    assert list(summary["n_seeds"]) == [2, 2] and list(summary["seeds"]) == ["100 200", "100 200"]
    assert summary.set_index("variant").loc["online_training=True", "mean"] == pytest.approx(72.5)
    assert not (figures / "final_score_by_vae_kl_weight.png").exists()  # not drawn by this spec
    assert (figures / "final_scores.png").exists()


def test_a_cell_of_the_spec_without_results_is_named(tmp_path):
    exp_dir = make_experiment(tmp_path / "exp")
    with pytest.raises(ReportError, match=r"cell online_training~True/seed~400 has no eval.json"):
        collect_cells(exp_dir, VARIABLES, cells=["online_training~True/seed~300", "online_training~True/seed~400"])


def test_aggregate_command_reads_the_cells_of_its_spec_only(tmp_path):
    import subprocess

    from conftest import PYTHON, python_env

    exp_dir = make_experiment(tmp_path / "exp")  # seeds 100, 200, 300
    write_cell(exp_dir, False, 999, -50.0, range(0, 101, 10))  # left by an earlier spec
    spec = {
        "meta_data": {"exp_name": "exp"},
        "constants": {"n_train_steps": 100, "rl_warmup_steps": 40},
        "variables": {"online_training": [False, True], "seed": [100, 200]},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    run = subprocess.run(
        [PYTHON, "-m", "diffuser", "aggregate", "--exp-dir", str(exp_dir), "--spec", str(tmp_path / "spec.yaml")],
        env={**python_env(), "MPLBACKEND": "Agg"}, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    summary = pd.read_csv(exp_dir / "summary.csv").set_index("variant")
    assert summary["seeds"].tolist() == ["100 200", "100 200"]
    assert summary.loc["online_training=False", "mean"] == pytest.approx(45.0)
    assert json.loads((exp_dir / "summary.json").read_text())["online_training=False"]["n_seeds"] == 2


def test_summary_has_iqm_and_best_periodic_evaluation(aggregated):
    from diffuser.reporting.stats import iqm

    exp_dir, _ = aggregated
    summary = pd.read_csv(exp_dir / "summary.csv").set_index("variant")
    for online, by_seed in SCORES.items():
        row = summary.loc[f"online_training={online}"]
        assert row["iqm"] == pytest.approx(iqm(list(by_seed.values())))
        assert row["iqm_ci95_low"] <= row["iqm"] <= row["iqm_ci95_high"]
        # write_cell logs eval_normalized_score = score * step / 100 up to step 100: the best is the score
        assert row["best_eval_mean"] == pytest.approx(np.mean(list(by_seed.values())))
    pairs = pd.read_csv(exp_dir / "improvement.csv")
    assert list(pairs["label"]) == ["online_training: True vs False"]
    assert pairs["probability"].iloc[0] == pytest.approx(1.0)  # every online seed beats every offline one
    saved = json.loads((exp_dir / "summary.json").read_text())["online_training=True"]
    assert saved["iqm_normalized_score"] == pytest.approx(summary.loc["online_training=True", "iqm"])


def test_the_page_holds_the_table_every_figure_and_the_spec(aggregated):
    import base64
    import re

    exp_dir, paths = aggregated
    (exp_dir / "spec.yaml").write_text("meta_data:\n  exp_name: exp\nvariables:\n  seed: [100, 200, 300]\n")
    from diffuser.reporting.page import write_page

    page_path = write_page(exp_dir, VARIABLES)
    assert page_path == paths["page"] == exp_dir / "summary.html"
    page = page_path.read_text()
    table = page[page.index('<div id="score-table">'):]
    table = table[:table.index("</table>")]
    for online, by_seed in SCORES.items():
        assert f"online_training={online}" in table
        assert f"{np.mean(list(by_seed.values())):.1f}" in table
    embedded = dict(re.findall(r'<figure data-figure="([^"]+)"><img alt="[^"]+" src="data:image/png;base64,([^"]+)"', page))
    pngs = sorted((exp_dir / "figures").glob("*.png"))
    assert sorted(embedded) == sorted(p.stem for p in pngs) and len(pngs) >= 10
    for png in pngs:
        assert base64.b64decode(embedded[png.stem]) == png.read_bytes()
    assert "P(X &gt; Y)" in page and "online_training: True vs False" in page
    assert "exp_name: exp" in page[page.index('<pre id="spec">'):]
    assert "rliable" in page and "scipy" in page and "<h2>Cells</h2>" in page
    assert "src=\"http" not in page and "<script" not in page  # nothing to fetch


def test_success_rate_scores_are_named_so_in_summary_and_figures(tmp_path):
    from diffuser.reporting.figures import final_score_label, metric_label

    plain = collect_cells(make_experiment(tmp_path / "plain"), VARIABLES)
    assert set(summarize(plain, VARIABLES)["score"]) == {"normalized_return"}
    assert final_score_label(plain) == "Normalized score (final evaluation)"

    exp_dir = make_experiment(tmp_path / "ogbench")
    for path in exp_dir.rglob("eval.json"):
        path.write_text(json.dumps({**json.loads(path.read_text()), "score": "success_rate"}))
    cells = collect_cells(exp_dir, VARIABLES)
    assert set(summarize(cells, VARIABLES)["score"]) == {"success_rate"}
    assert final_score_label(cells) == "Success rate, % (final evaluation)"
    assert metric_label("eval_normalized_score", "success_rate") == "Success rate, % (evaluation)"
    from diffuser.reporting.page import write_page

    write_summary(exp_dir, VARIABLES)
    page = write_page(exp_dir, VARIABLES).read_text()
    assert "success rates in percent" in page and "0 = a random policy" not in page


def test_summary_rows_follow_the_numeric_order_of_a_swept_value(tmp_path):
    # as text "batch_size=10" sorts before "batch_size=5"; the table follows the values
    for value, seed, score in [(10, 1, 30.0), (5, 1, 20.0), (10, 2, 32.0), (5, 2, 22.0)]:
        cell = tmp_path / "cells" / f"batch_size~{value}" / f"seed~{seed}"
        cell.mkdir(parents=True)
        (cell / "config.yaml").write_text(yaml.safe_dump({"batch_size": value, "seed": seed}))
        (cell / "eval.json").write_text(json.dumps({"mean_normalized_score": score, "mean_return": score}))
    summary = summarize(collect_cells(tmp_path, ["batch_size", "seed"]), ["batch_size", "seed"])
    assert summary["batch_size"].tolist() == [5, 10]
    assert summary["mean"].tolist() == [21.0, 31.0]


def test_the_cells_table_takes_swept_variables_from_the_cell_paths(tmp_path):
    make_experiment(tmp_path)
    cells = collect_cells(tmp_path)  # no variables given: the paths name them, config.yaml types them
    pairs = sorted(zip(cells["online_training"], cells["seed"], strict=True))
    assert pairs == sorted((online, seed) for online, by_seed in SCORES.items() for seed in by_seed)
    assert cells["online_training"].map(type).eq(bool).all()


def test_a_sweep_over_models_is_summarized_and_drawn_per_model(tmp_path):
    models = ["models.BC", "models.IQL", "models.FQL", "models.DiffusionPolicy", "models.DiffusionRL"]
    for m, model in enumerate(models):
        for seed in (0, 1):
            cell = tmp_path / "cells" / f"diffusion~{model}" / f"seed~{seed}"
            cell.mkdir(parents=True)
            (cell / "config.yaml").write_text(yaml.safe_dump({"diffusion": model, "seed": seed}))
            score = 10.0 * m + seed
            (cell / "eval.json").write_text(json.dumps({"mean_normalized_score": score, "mean_return": score}))
            (cell / "metrics.csv").write_text("step,metric,value\n10,loss,1.0\n20,loss,0.5\n")
    variables = ["diffusion", "seed"]
    summary = summarize(collect_cells(tmp_path, variables), variables).set_index("diffusion")
    assert sorted(summary.index) == sorted(models)
    for m, model in enumerate(models):
        assert summary.loc[model, "mean"] == pytest.approx(10.0 * m + 0.5)
    paths = aggregate_experiment(tmp_path, variables)
    assert "final_score_by_diffusion.png" in paths and paths["final_score_by_diffusion.png"].is_file()
    page = paths["page"].read_text()
    assert all(model in page for model in models)
