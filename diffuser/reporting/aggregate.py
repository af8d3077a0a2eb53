"""Per-cell final scores of an experiment and their summary over seeds (mean, 95% CI, range).

The t quantile of the confidence interval is computed here (scipy is not a dependency): the
Student t CDF is written with the regularized incomplete beta function (continued fraction) and
inverted by bisection, which is exact to ~1e-12 for any number of degrees of freedom.
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

CONFIDENCE = 0.95
CELLS_DIRNAME = "cells"
CELL_FILES = ("config.yaml", "metrics.csv", "eval.json")
NO_INTERVAL_NOTE = "1 seed: no confidence interval"
ALL_VARIANTS_LABEL = "all"

# eval.json key -> column of the cells table; the first two are required.
EVAL_COLUMNS = {
    "mean_normalized_score": "normalized_score",
    "mean_return": "return",
    "success_rate": "success_rate",
    "step": "eval_step",
    "num_episodes": "num_episodes",
    "score": "score",  # what normalized_score measures: normalized_return, or success_rate (in percent)
}
REQUIRED_EVAL_KEYS = ("mean_normalized_score", "mean_return")
SUCCESS_RATE, NORMALIZED_RETURN = "success_rate", "normalized_return"  # diffuser.envs.scores' score names


# --- Student t quantile -------------------------------------------------------------------------

def _regularized_incomplete_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), by the continued fraction of the incomplete beta function (modified Lentz)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    # The continued fraction converges fast only below its mean; use the symmetry above it.
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _regularized_incomplete_beta(1.0 - x, b, a)
    log_beta = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    front = math.exp(a * math.log(x) + b * math.log1p(-x) - log_beta) / a
    tiny, eps = 1e-300, 1e-15
    # CF = 1 / (1 + d1 / (1 + d2 / (1 + ...))); numerators 1, d1, d2, ..., all denominators 1.
    f, c, d = tiny, tiny, 0.0
    for n in range(0, 400):
        if n == 0:
            numerator = 1.0
        elif n % 2 == 1:
            m = (n - 1) // 2
            numerator = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        else:
            m = n // 2
            numerator = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + numerator * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + numerator / c
        c = c if abs(c) > tiny else tiny
        delta = c * d
        f *= delta
        if abs(delta - 1.0) < eps:
            break
    return front * f


def student_t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t distribution with `df` degrees of freedom (0 < p < 1, df > 0)."""
    if not 0.0 < p < 1.0 or not df > 0:
        raise ValueError(f"student_t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    # For t > 0: P(T > t) = I_x(df/2, 1/2) / 2 with x = df / (df + t^2); I_x increases with x.
    target = 2.0 * (1.0 - p)
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _regularized_incomplete_beta(mid, 0.5 * df, 0.5) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-17:
            break
    x = 0.5 * (lo + hi)
    return math.sqrt(df * (1.0 - x) / x)


def mean_confidence_interval(values, level: float = CONFIDENCE) -> tuple[float, float]:
    """(mean, half-width of the Student t confidence interval of the mean); half-width NaN for n < 2."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    mean = float(values.mean())
    if values.size < 2:
        return mean, math.nan
    sem = float(values.std(ddof=1)) / math.sqrt(values.size)
    return mean, student_t_quantile(0.5 + level / 2.0, values.size - 1) * sem


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


def collect_cells(exp_dir: str | os.PathLike, variables: list[str] | None = None,
                  cells: list[str] | None = None) -> pd.DataFrame:
    """One row per cell: `cell`, each variable's value, and the final evaluation's results.

    `cells`: the cell paths to read (an experiment spec's cells, so folders left from an earlier
    spec are ignored); None reads every cell found under `exp_dir/cells`. The variables are the
    given names plus those the cell paths name; each value is taken from the cell's config.yaml
    (typed), else from its path. Result columns: normalized_score, return, success_rate, eval_step,
    num_episodes, score.
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
        rows.append(row)
    return pd.DataFrame(rows, columns=["cell", *names, *EVAL_COLUMNS.values()])


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


def summarize(cells_df: pd.DataFrame, variables: list[str], replicate: str = "seed") -> pd.DataFrame:
    """One row per variant: n_seeds, mean, std, 95% CI of the mean over seeds (Student t), min, max.

    With one seed the interval (and std) is NaN and the `note` column says so.
    """
    group_by = variant_variables(variables, replicate)
    cells = label_variants(cells_df, variables, replicate)
    rows = []
    for label, group in cells.groupby("variant", sort=False):
        scores = group["normalized_score"].to_numpy(dtype=float)
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


def _finite_or_none(value: float):
    return float(value) if math.isfinite(value) else None


def write_summary(exp_dir: str | os.PathLike, variables: list[str], replicate: str = "seed",
                  cells: list[str] | None = None) -> Path:
    """Writes `exp_dir/summary.csv` and `exp_dir/summary.json` (DVC metrics: mean score per variant).

    `cells` as in `collect_cells`. Returns the path of summary.csv.
    """
    exp_dir = Path(exp_dir)
    summary = summarize(collect_cells(exp_dir, variables, cells), variables, replicate)
    csv_path, json_path = exp_dir / "summary.csv", exp_dir / "summary.json"
    summary.to_csv(csv_path, index=False)
    metrics = {
        row.variant: {
            "mean_normalized_score": _finite_or_none(row.mean),
            "ci95_half_width": _finite_or_none(row.ci95_half_width),
            "n_seeds": int(row.n_seeds),
        }
        for row in summary.itertuples()
    }
    json_path.write_text(json.dumps(metrics, indent=2) + "\n")
    return csv_path
