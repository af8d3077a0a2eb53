"""Per-cell scores of an experiment and their summary over seeds.

Per cell: the final evaluation (eval.json) and the best and last periodic evaluations during
training (`eval_normalized_score` in metrics.csv). Per variant: mean and Student t 95% CI of the
final score, its interquartile mean with a stratified bootstrap 95% CI (diffuser.reporting.stats),
and the same IQM for the best periodic evaluation, labelled as such (picking the best checkpoint
after the fact flatters a method, so the final score is the headline).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from diffuser.errors import ReportError
from diffuser.reporting.stats import (
    iqm_interval,
    mean_confidence_interval,
    probability_of_improvement,
)

CELLS_DIRNAME = "cells"
CELL_FILES = ("config.yaml", "metrics.csv", "eval.json")
NO_INTERVAL_NOTE = "1 seed: no confidence interval"
ALL_VARIANTS_LABEL = "all"
EVAL_METRIC = "eval_normalized_score"
# A swept variable with this name holds tasks: aggregates over tasks stratify by it.
TASK_VARIABLE = "dataset"

# eval.json key -> column of the cells table; the first two are required.
EVAL_COLUMNS = {
    "mean_normalized_score": "normalized_score",
    "mean_return": "return",
    "success_rate": "success_rate",
    "step": "eval_step",
    "num_episodes": "num_episodes",
    "score": "score",  # what normalized_score measures: normalized_return, or success_rate (in percent)
    "mean_first_success_step": "first_success_step",  # over the episodes that succeeded (evaluator.py)
    "mean_success_hold_share": "success_hold_share",
}
REQUIRED_EVAL_KEYS = ("mean_normalized_score", "mean_return")
PERIODIC_COLUMNS = ("best_eval_score", "best_eval_step", "last_eval_score", "last_eval_step")
SUCCESS_RATE, NORMALIZED_RETURN = "success_rate", "normalized_return"  # diffuser.envs.scores' score names


# --- cells --------------------------------------------------------------------------------------

def find_cells(exp_dir: str | os.PathLike) -> list[str]:
    """Cell paths (relative to `exp_dir/cells`, '/'-separated), sorted; a cell holds one of CELL_FILES."""
    root = Path(exp_dir) / CELLS_DIRNAME
    if not root.is_dir():
        raise ReportError(f"{root} does not exist: run the experiment's train steps first, or check the experiment directory.")
    cells = []
    for directory, subdirs, files in os.walk(root):
        if any(name in files for name in CELL_FILES):
            cells.append(Path(directory).relative_to(root).as_posix())
            subdirs.clear()
        else:
            subdirs.sort()
    if not cells:
        raise ReportError(f"no cells found under {root} (no config.yaml, metrics.csv or eval.json): run the train steps first.")
    return sorted(cells)


def cell_dir(exp_dir: str | os.PathLike, cell: str) -> Path:
    return Path(exp_dir) / CELLS_DIRNAME / cell


def _parse_scalar(text: str):
    """A value as it appears in a cell path ('True', '100', '0.05') back to its Python type."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def path_variables(cell: str) -> dict:
    """{name: value} named by a cell path such as 'online_training~True/seed~100'."""
    values = {}
    for part in cell.split("/"):
        name, sep, value = part.partition("~")
        if sep:
            values[name] = _parse_scalar(value)
    return values


def read_cell_config(exp_dir: str | os.PathLike, cell: str) -> dict:
    """The cell's resolved config.yaml ({} when the cell has none)."""
    path = cell_dir(exp_dir, cell) / "config.yaml"
    if not path.exists():
        return {}
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ReportError(f"{path} is not valid YAML ({err}): re-run the cell's train step to rewrite it.") from err
    if not isinstance(config, dict):
        raise ReportError(f"{path} does not hold a mapping of config keys: re-run the cell's train step to rewrite it.")
    return config


def _hashable(value):
    """Lists or mappings (a swept layer size list) become their JSON text so cells can be grouped."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True)
    return value


def _read_eval(exp_dir: str | os.PathLike, cell: str) -> dict:
    path = cell_dir(exp_dir, cell) / "eval.json"
    if not path.exists():
        raise ReportError(f"cell {cell} has no eval.json ({path}): run its evaluate step.")
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ReportError(f"{path} is not valid JSON ({err}): re-run cell {cell}'s evaluate step.") from err
    missing = [key for key in REQUIRED_EVAL_KEYS if key not in result]
    if missing:
        raise ReportError(f"{path} lacks {', '.join(missing)}: re-run cell {cell}'s evaluate step.")
    return result


def load_metrics(exp_dir: str | os.PathLike, cell: str) -> pd.DataFrame:
    """A cell's metrics.csv (columns step, metric, value)."""
    path = cell_dir(exp_dir, cell) / "metrics.csv"
    if not path.exists():
        raise ReportError(f"cell {cell} has no metrics.csv ({path}): run its train step.")
    table = pd.read_csv(path)
    missing = {"step", "metric", "value"} - set(table.columns)
    if missing:
        raise ReportError(f"{path} lacks the columns {sorted(missing)}: it must be the tidy table step,metric,value.")
    return table


def best_and_last(metrics: pd.DataFrame, metric: str = EVAL_METRIC) -> dict:
    """The best (highest; the earliest step on a tie) and the last logged value of `metric`.

    {best_eval_score, best_eval_step, last_eval_score, last_eval_step}; NaN when it was never logged.
    """
    rows = metrics[metrics["metric"] == metric].sort_values("step", kind="stable")
    if rows.empty:
        return dict.fromkeys(PERIODIC_COLUMNS, math.nan)
    values, steps = rows["value"].to_numpy(dtype=float), rows["step"].to_numpy()
    best = int(np.argmax(values))
    return {"best_eval_score": float(values[best]), "best_eval_step": int(steps[best]),
            "last_eval_score": float(values[-1]), "last_eval_step": int(steps[-1])}


def collect_cells(exp_dir: str | os.PathLike, variables: list[str] | None = None,
                  cells: list[str] | None = None) -> pd.DataFrame:
    """One row per cell: `cell`, each variable's value, and the final evaluation's results.

    `cells`: the cell paths to read (an experiment spec's cells, so folders left from an earlier
    spec are ignored); None reads every cell found under `exp_dir/cells`. The variables are the
    given names plus those the cell paths name; each value is taken from the cell's config.yaml
    (typed), else from its path. Result columns: normalized_score, return, success_rate, eval_step,
    num_episodes, score, first_success_step, success_hold_share (the final evaluation; NaN where its
    eval.json lacks one), then best_eval_score, best_eval_step,
    last_eval_score, last_eval_step (the periodic evaluations in metrics.csv; NaN without them).
    """
    cells = find_cells(exp_dir) if cells is None else sorted(cells)
    if not cells:
        raise ReportError("the experiment has no cells to summarize: check its spec.")
    names = list(variables or [])
    for cell in cells:
        names += [name for name in path_variables(cell) if name not in names]
    rows = []
    for cell in cells:
        config, from_path = read_cell_config(exp_dir, cell), path_variables(cell)
        row = {"cell": cell}
        for name in names:
            if name in config:
                row[name] = _hashable(config[name])
            elif name in from_path:
                row[name] = from_path[name]
            else:
                raise ReportError(
                    f"cell {cell}: variable '{name}' is neither a key of its config.yaml nor part of its path: "
                    "check the list of swept variables."
                )
        result = _read_eval(exp_dir, cell)
        for key, column in EVAL_COLUMNS.items():
            value = result.get(key)
            row[column] = math.nan if value is None else value
        has_metrics = (cell_dir(exp_dir, cell) / "metrics.csv").exists()
        row.update(best_and_last(load_metrics(exp_dir, cell)) if has_metrics else dict.fromkeys(PERIODIC_COLUMNS, math.nan))
        rows.append(row)
    return pd.DataFrame(rows, columns=["cell", *names, *EVAL_COLUMNS.values(), *PERIODIC_COLUMNS])


# --- variants and summary -----------------------------------------------------------------------

def sort_key(value):
    """Orders a column that may mix numbers, booleans, strings and None without a TypeError."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return (2, "")
    if isinstance(value, (bool, int, float, np.number)):
        return (0, float(value))
    return (1, str(value))


def variant_variables(variables: list[str], replicate: str = "seed") -> list[str]:
    """The swept variables that define a variant: all but the replicate."""
    return [name for name in variables if name != replicate]


def variant_label(values: dict) -> str:
    """'online_training=True, vae_kl_weight=0.05' (or 'all' when nothing but the seed is swept)."""
    if not values:
        return ALL_VARIANTS_LABEL
    return ", ".join(f"{name}={value}" for name, value in values.items())


def label_variants(cells_df: pd.DataFrame, variables: list[str], replicate: str = "seed") -> pd.DataFrame:
    """The cells sorted by variant, with a `variant` label column; checks variables and replicates."""
    group_by = variant_variables(variables, replicate)
    missing = [name for name in group_by if name not in cells_df.columns]
    if missing:
        raise ReportError(
            f"variables {missing} are not columns of the cells table ({list(cells_df.columns)}): check the swept variables."
        )
    order = sorted(
        range(len(cells_df)),
        key=lambda i: [sort_key(cells_df[name].iloc[i]) for name in [*group_by, replicate] if name in cells_df.columns],
    )
    cells = cells_df.iloc[order].reset_index(drop=True)
    cells["variant"] = [variant_label({name: row[name] for name in group_by}) for _, row in cells.iterrows()]
    if replicate in cells.columns:
        repeated = cells[cells.duplicated(["variant", replicate], keep=False)]
        if not repeated.empty:
            raise ReportError(
                f"cells {', '.join(repeated['cell'])} share variant and {replicate}: a swept variable is missing "
                "from the variables list."
            )
    return cells


def _iqm_columns(prefix: str, scores) -> dict:
    """{prefix}iqm and its 95% bootstrap interval over runs ([runs] or [runs, tasks]); NaN when a
    1-D array has no finite score or a 2-D one has a missing score."""
    scores = np.asarray(scores, dtype=float)
    if scores.ndim == 1:
        scores = scores[np.isfinite(scores)]
    if scores.size == 0 or not np.isfinite(scores).all():
        return {f"{prefix}iqm": math.nan, f"{prefix}iqm_ci95_low": math.nan, f"{prefix}iqm_ci95_high": math.nan}
    point, low, high = iqm_interval(scores)
    return {f"{prefix}iqm": point, f"{prefix}iqm_ci95_low": low, f"{prefix}iqm_ci95_high": high}


def _mean_or_nan(values) -> float:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.nan


def summarize(cells_df: pd.DataFrame, variables: list[str], replicate: str = "seed") -> pd.DataFrame:
    """One row per variant: n_seeds; the final score's mean, std, Student t 95% CI, min, max, IQM
    with its stratified bootstrap 95% CI; the best periodic evaluation's mean and IQM with CI
    (`best_eval_*`); mean return and success rate of the final evaluation.

    With one seed the intervals (and std) are NaN and the `note` column says so.
    """
    group_by = variant_variables(variables, replicate)
    cells = label_variants(cells_df, variables, replicate)
    rows = []
    for label, group in cells.groupby("variant", sort=False):
        scores = group["normalized_score"].to_numpy(dtype=float)
        best = group["best_eval_score"].to_numpy(dtype=float) if "best_eval_score" in group else np.array([])
        mean, half = mean_confidence_interval(scores)
        row = {name: group[name].iloc[0] for name in group_by}
        row.update(
            variant=label,
            n_seeds=len(group),
            seeds=" ".join(str(s) for s in group[replicate]) if replicate in group else "",
            mean=mean,
            std=float(np.std(scores, ddof=1)) if len(scores) > 1 else math.nan,
            ci95_low=mean - half,
            ci95_high=mean + half,
            ci95_half_width=half,
            min=float(scores.min()),
            max=float(scores.max()),
            **_iqm_columns("", scores),
            best_eval_mean=_mean_or_nan(best),
            **_iqm_columns("best_eval_", best),
            return_mean=float(group["return"].astype(float).mean()),
            success_rate_mean=float(group["success_rate"].astype(float).mean()),
            score=score_kind(group),
            note=NO_INTERVAL_NOTE if len(group) < 2 else "",
        )
        rows.append(row)
    return pd.DataFrame(rows)


def score_kind(cells_df: pd.DataFrame) -> str:
    """What the cells' normalized_score measures: `success_rate` (OGBench tasks: the success rate in
    percent) when every cell says so, else `normalized_return` (also for results without the key)."""
    kinds = set(cells_df["score"]) if "score" in cells_df else set()
    return SUCCESS_RATE if kinds == {SUCCESS_RATE} else NORMALIZED_RETURN


def _runs_by_tasks(cells: pd.DataFrame, column: str, replicate: str, tasks: list) -> np.ndarray:
    """[runs, tasks] of `column`: one column per task, runs aligned by replicate; seeds missing a
    task are dropped, so every task counts the same runs."""
    if TASK_VARIABLE not in cells.columns or len(tasks) < 2:
        return cells[column].to_numpy(dtype=float)[:, None]
    table = cells.pivot_table(index=replicate, columns=TASK_VARIABLE, values=column, aggfunc="first")
    return table.reindex(columns=tasks).dropna().to_numpy(dtype=float)


def task_variable(cells_df: pd.DataFrame, variables: list[str], replicate: str = "seed") -> str | None:
    """TASK_VARIABLE when the experiment sweeps it over several values, else None."""
    swept = variant_variables(variables, replicate)
    if TASK_VARIABLE in swept and cells_df[TASK_VARIABLE].nunique() > 1:
        return TASK_VARIABLE
    return None


def summarize_over_tasks(cells_df: pd.DataFrame, variables: list[str], replicate: str = "seed") -> pd.DataFrame:
    """When several tasks (datasets) are swept: one row per variant of the other variables, with the
    IQM over runs x tasks of the final score and of the best periodic evaluation, each with its
    stratified bootstrap 95% CI (runs resampled within each task). Empty otherwise."""
    if task_variable(cells_df, variables, replicate) is None:
        return pd.DataFrame()
    others = [name for name in variant_variables(variables, replicate) if name != TASK_VARIABLE]
    cells = label_variants(cells_df, variables, replicate)
    tasks = sorted(cells[TASK_VARIABLE].unique(), key=sort_key)
    setting = [variant_label({n: row[n] for n in others}) for _, row in cells.iterrows()]
    rows = []
    for label, group in cells.groupby(setting, sort=False):
        final = _runs_by_tasks(group, "normalized_score", replicate, tasks)
        best = _runs_by_tasks(group, "best_eval_score", replicate, tasks)
        row = {name: group[name].iloc[0] for name in others}
        row.update(variant=label, n_tasks=final.shape[1], n_seeds=final.shape[0],
                   **_iqm_columns("", final), **_iqm_columns("best_eval_", best))
        rows.append(row)
    return pd.DataFrame(rows)


def improvement_pairs(cells_df: pd.DataFrame, variables: list[str], replicate: str = "seed") -> pd.DataFrame:
    """P(X > Y) of the final score, with its 95% bootstrap CI, for variants that differ in one
    swept variable only: for each such variable and each setting of the others, every later value
    (X) against every earlier one (Y) in sorted order. Over tasks when several are swept.

    Columns: variable, setting, x, y, label ('online_training: True vs False'), probability,
    ci95_low, ci95_high, n_x, n_y.
    """
    task = task_variable(cells_df, variables, replicate)
    swept = [name for name in variant_variables(variables, replicate) if name != task]
    cells = label_variants(cells_df, variables, replicate)
    tasks = sorted(cells[task].unique(), key=sort_key) if task else []
    rows = []
    for variable in swept:
        others = [name for name in swept if name != variable]
        setting = pd.Series([variant_label({n: row[n] for n in others}) if others else "" for _, row in cells.iterrows()],
                            index=cells.index)
        for label in dict.fromkeys(setting):
            in_setting = cells[setting == label]
            values = sorted(in_setting[variable].unique(), key=sort_key)
            for j, x in enumerate(values):
                for y in values[:j]:
                    scores_x = _runs_by_tasks(in_setting[in_setting[variable] == x], "normalized_score", replicate, tasks)
                    scores_y = _runs_by_tasks(in_setting[in_setting[variable] == y], "normalized_score", replicate, tasks)
                    p, low, high = probability_of_improvement(scores_x, scores_y)
                    rows.append(dict(variable=variable, setting=label, x=x, y=y,
                                     label=f"{variable}: {x} vs {y}" + (f" [{label}]" if label else ""),
                                     probability=p, ci95_low=low, ci95_high=high,
                                     n_x=scores_x.shape[0], n_y=scores_y.shape[0]))
    columns = ["variable", "setting", "x", "y", "label", "probability", "ci95_low", "ci95_high", "n_x", "n_y"]
    return pd.DataFrame(rows, columns=columns)


def _finite_or_none(value: float):
    return float(value) if math.isfinite(value) else None


SUMMARY_FILES = {"summary": "summary.csv", "over_tasks": "summary_tasks.csv", "improvement": "improvement.csv"}


def write_summary(exp_dir: str | os.PathLike, variables: list[str], replicate: str = "seed",
                  cells: list[str] | None = None) -> Path:
    """Writes under `exp_dir`: summary.csv (`summarize`), improvement.csv (`improvement_pairs`),
    summary_tasks.csv when several tasks are swept (`summarize_over_tasks`), and summary.json (DVC
    metrics: per variant the final score's mean, CI half-width, IQM and its CI, the best periodic
    evaluation's IQM, seeds).

    `cells` as in `collect_cells`. Returns the path of summary.csv.
    """
    exp_dir = Path(exp_dir)
    cells_df = collect_cells(exp_dir, variables, cells)
    summary = summarize(cells_df, variables, replicate)
    summary.to_csv(exp_dir / SUMMARY_FILES["summary"], index=False)
    improvement_pairs(cells_df, variables, replicate).to_csv(exp_dir / SUMMARY_FILES["improvement"], index=False)
    over_tasks = summarize_over_tasks(cells_df, variables, replicate)
    tasks_path = exp_dir / SUMMARY_FILES["over_tasks"]
    if over_tasks.empty:
        tasks_path.unlink(missing_ok=True)
    else:
        over_tasks.to_csv(tasks_path, index=False)
    metrics = {
        row.variant: {
            "mean_normalized_score": _finite_or_none(row.mean),
            "ci95_half_width": _finite_or_none(row.ci95_half_width),
            "iqm_normalized_score": _finite_or_none(row.iqm),
            "iqm_ci95_low": _finite_or_none(row.iqm_ci95_low),
            "iqm_ci95_high": _finite_or_none(row.iqm_ci95_high),
            "best_eval_iqm": _finite_or_none(row.best_eval_iqm),
            "n_seeds": int(row.n_seeds),
        }
        for row in summary.itertuples()
    }
    (exp_dir / "summary.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return exp_dir / SUMMARY_FILES["summary"]
