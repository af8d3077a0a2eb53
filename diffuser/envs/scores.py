"""The one table of reference scores, and the score a dataset's policies are reported by.

A dataset's metadata names its score (`score`): `normalized_return`, 100 * (R - ref_min) /
(ref_max - ref_min), for every dataset but OGBench's; `success_rate` for OGBench's single-task
datasets, where an episode scores 100 if it solved the task and 0 otherwise, so the mean is the
success rate in percent, OGBench's headline number (their returns count steps to success and have
no reference values). Both are reported under the same names (`normalized_scores`,
`mean_normalized_score`), so tables and figures compare like with like.

D4RL's scores are copied from D4RL's `d4rl/infos.py` (REF_MIN_SCORE / REF_MAX_SCORE): a random
policy and an expert per task; the locomotion values are the same for every dataset of an
environment (v0, v1, v2). The generated locomotion datasets are scored on the gymnasium v5
environments with these same values.

The generated maze datasets need their own: D4RL's maze2d values were measured with D4RL's fixed
goals and coordinates and do not transfer to PointMaze's evaluation task (a continuing task with
the goal drawn at reset). `python -m diffuser.envs.compute_reference_scores` measured them:
ref_min is a uniform random policy, ref_max the noiseless waypoint controller
(`diffuser.envs.maze_controller`), each the mean return of 50 evaluation episodes (reset seeds
0..49), gymnasium-robotics 1.4.2, on 2026-11-24. Recompute them after changing the controller or
the evaluation task.
"""

from __future__ import annotations

import numpy as np

from diffuser.envs.make import EnvironmentUnavailable
from diffuser.envs.specs import locomotion_env_name

NORMALIZED_RETURN_SCORE = "normalized_return"
SUCCESS_RATE_SCORE = "success_rate"
SUCCESS_RATE_SOURCE = "none: OGBench tasks are scored by success rate in percent (an episode scores 100 on success, else 0)"
D4RL_SOURCE = "D4RL d4rl/infos.py REF_MIN_SCORE/REF_MAX_SCORE"
GENERATED_MAZE_SOURCE = (
    "diffuser.envs.compute_reference_scores: uniform random policy / noiseless waypoint controller, "
    "mean of 50 seeded evaluation episodes (2026-11-24)"
)

D4RL_MAZE_SCORES = {  # dataset name -> (ref_min, ref_max)
    "maze2d-umaze-v1": (23.85, 161.86),
    "maze2d-medium-v1": (13.13, 277.39),
    "maze2d-large-v1": (6.7, 273.99),
}
D4RL_LOCOMOTION_SCORES = {  # environment -> (ref_min, ref_max), every D4RL dataset of it
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
}
# Measured (return mean +- std, success rate): UMaze random 21.52 +- 35.52 (34%), controller
# 243.20 +- 32.72 (100%); Medium 11.60 +- 28.30 (18%) / 495.72 +- 50.38 (100%); Large 9.00 +- 42.29
# (8%) / 632.34 +- 79.45 (100%).
GENERATED_MAZE_SCORES = {  # dataset name -> (ref_min, ref_max) on the evaluation task
    "gen-maze2d-umaze": (21.52, 243.20),
    "gen-maze2d-medium": (11.60, 495.72),
    "gen-maze2d-large": (9.00, 632.34),
}


def reference_scores(dataset_name: str) -> tuple[float, float, str]:
    """(ref_min, ref_max, where the numbers come from) for a dataset name."""
    if dataset_name in GENERATED_MAZE_SCORES:
        return (*GENERATED_MAZE_SCORES[dataset_name], GENERATED_MAZE_SOURCE)
    if dataset_name in D4RL_MAZE_SCORES:
        return (*D4RL_MAZE_SCORES[dataset_name], D4RL_SOURCE)
    if env_name := locomotion_env_name(dataset_name):
        return (*D4RL_LOCOMOTION_SCORES[env_name], f"{D4RL_SOURCE} ({env_name})")
    raise EnvironmentUnavailable(
        f"No reference scores are known for dataset '{dataset_name}' (config key `dataset`); add them to "
        "diffuser/envs/scores.py, or for a Minari dataset set ref_min_score/ref_max_score in its metadata."
    )


def normalized_score(returns, ref_min: float, ref_max: float):
    """100 * (R - ref_min) / (ref_max - ref_min): 0 is the random policy, 100 the reference expert.
    Works on a float or an array of returns."""
    return 100.0 * (np.asarray(returns, dtype=np.float64) - ref_min) / (ref_max - ref_min)


def episode_scores(returns, successes, metadata: dict) -> np.ndarray:
    """The score of each episode by the dataset's `score` (module docstring): 100 * success for
    `success_rate`, else the normalized return."""
    if metadata.get("score", NORMALIZED_RETURN_SCORE) == SUCCESS_RATE_SCORE:
        return 100.0 * np.asarray(successes, dtype=np.float64)
    return normalized_score(returns, metadata["ref_min_score"], metadata["ref_max_score"])
