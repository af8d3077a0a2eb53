"""Evaluation environments, the PointMaze waypoint controller, and reference scores."""

from diffuser.envs.make import EnvironmentUnavailable, make_env, make_vector_env
from diffuser.envs.maze_controller import MazeWaypointController
from diffuser.envs.scores import normalized_score, reference_scores
from diffuser.envs.specs import env_spec_for_dataset

__all__ = [
    "EnvironmentUnavailable",
    "MazeWaypointController",
    "env_spec_for_dataset",
    "make_env",
    "make_vector_env",
    "normalized_score",
    "reference_scores",
]
