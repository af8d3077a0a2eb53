"""The PointMaze waypoint controller: routes through free cells, the xy <-> cell geometry, and
that it actually reaches the goal on every maze."""

import numpy as np
import pytest

from diffuser.envs.compute_reference_scores import maze_controller_policy, run_episodes
from diffuser.envs.make import make_env, make_vector_env
from diffuser.envs.maze_controller import MazeWaypointController
from diffuser.envs.specs import env_spec_for_dataset

MAZES = ["umaze", "medium", "large"]


def _maze(maze: str):
    env = make_env(env_spec_for_dataset(f"gen-maze2d-{maze}"))
    env.close()
    return env.unwrapped.maze


@pytest.mark.parametrize("maze", MAZES)
def test_noiseless_controller_reaches_the_goal(maze):
    envs = make_vector_env(env_spec_for_dataset(f"gen-maze2d-{maze}"), 20)
    _, successes = run_episodes(envs, maze_controller_policy(envs), seed=1000, stop_at_success=True)
    envs.close()
    assert successes.mean() >= 0.95


@pytest.mark.parametrize("maze", MAZES)
def test_route_steps_through_adjacent_free_cells_to_the_goal(maze):
    controller = MazeWaypointController(_maze(maze))
    free_cells = np.argwhere(controller.free)
    rng = np.random.default_rng(0)
    for _ in range(30):
        start, goal = free_cells[rng.choice(len(free_cells), size=2, replace=False)]
        cell, steps = start, 0
        while not np.array_equal(cell, goal):
            next_cell = controller.next_cell[goal[0], goal[1], cell[0], cell[1]]
            assert np.abs(next_cell - cell).sum() == 1, "a route step moves to a 4-neighbour"
            assert controller.free[tuple(next_cell)], "a route never enters a wall"
            cell, steps = next_cell, steps + 1
            assert steps <= controller.free.size, "the route loops"


@pytest.mark.parametrize("maze", MAZES)
def test_cell_geometry_matches_gymnasium_robotics(maze):
    env_maze = _maze(maze)
    controller = MazeWaypointController(env_maze)
    rng = np.random.default_rng(0)
    for row, col in np.argwhere(controller.free):
        centre = env_maze.cell_rowcol_to_xy(np.array([row, col]))
        np.testing.assert_allclose(controller.cell_to_xy(np.array([row, col])), centre)
        point = centre + rng.uniform(-0.49, 0.49, size=2)
        np.testing.assert_array_equal(controller.xy_to_cell(point), env_maze.cell_xy_to_rowcol(point))


def test_controller_acts_on_a_batch_like_on_single_observations():
    controller = MazeWaypointController(_maze("medium"))
    rng = np.random.default_rng(0)
    observations = np.concatenate([rng.uniform(-2.5, 2.5, (8, 2)), rng.normal(0, 1, (8, 2))], axis=1)
    goals = rng.uniform(-2.5, 2.5, (8, 2))
    batched = controller(observations, goals)
    single = np.stack([controller(o, g) for o, g in zip(observations, goals, strict=True)])
    np.testing.assert_allclose(batched, single)


def test_controller_steers_toward_the_goal_inside_the_goal_cell():
    controller = MazeWaypointController(_maze("umaze"), p_gain=10.0, d_gain=1.0)
    goal = controller.cell_to_xy(np.array([1, 1])) + 0.2
    position = goal + np.array([0.1, -0.1])
    action = controller(np.array([*position, 0.0, 0.0]), goal)
    np.testing.assert_allclose(action, 10.0 * (goal - position))
