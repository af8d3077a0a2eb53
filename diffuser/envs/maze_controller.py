"""A waypoint controller for gymnasium-robotics' PointMaze, in the spirit of D4RL's maze2d controller.

The route is a shortest path over the maze's grid cells (breadth-first search, 4-connected, so a
route never cuts a wall's corner); the point mass is steered by PD control toward the centre of the
next cell on that route, and toward the goal itself once it is in the goal's cell. Every route is
precomputed when the controller is built (the largest maze has 9 x 12 cells), so acting is a few
array lookups for any number of environments at once.
"""

from __future__ import annotations

from collections import deque

import numpy as np

_NEIGHBOUR_OFFSETS = ((-1, 0), (1, 0), (0, -1), (0, 1))


def _route_table(free: np.ndarray) -> np.ndarray:
    """next_cell[goal_row, goal_col, row, col] = the cell (row, col) to move to next toward the goal.

    A cell already at the goal, an unreachable cell and a wall cell with no free neighbour map to
    themselves. A wall cell (the point mass can sit in one only by numerical slop at a boundary)
    points to its free neighbour closest to the goal.
    """
    rows, cols = free.shape
    next_cell = np.zeros((rows, cols, rows, cols, 2), dtype=np.int64)
    next_cell[..., 0] = np.arange(rows)[:, None]
    next_cell[..., 1] = np.arange(cols)[None, :]
    for goal in map(tuple, np.argwhere(free)):
        distance = _grid_distances(free, goal)
        for row in range(rows):
            for col in range(cols):
                best = distance[row, col] if free[row, col] else np.inf
                for d_row, d_col in _NEIGHBOUR_OFFSETS:
                    n_row, n_col = row + d_row, col + d_col
                    if 0 <= n_row < rows and 0 <= n_col < cols and distance[n_row, n_col] < best:
                        best = distance[n_row, n_col]
                        next_cell[goal[0], goal[1], row, col] = (n_row, n_col)
    return next_cell


def _grid_distances(free: np.ndarray, goal: tuple[int, int]) -> np.ndarray:
    """Steps from every free cell to `goal` through free cells (inf where unreachable or a wall)."""
    distance = np.full(free.shape, np.inf)
    distance[goal] = 0.0
    queue = deque([goal])
    while queue:
        row, col = queue.popleft()
        for d_row, d_col in _NEIGHBOUR_OFFSETS:
            n_row, n_col = row + d_row, col + d_col
            inside = 0 <= n_row < free.shape[0] and 0 <= n_col < free.shape[1]
            if inside and free[n_row, n_col] and distance[n_row, n_col] == np.inf:
                distance[n_row, n_col] = distance[row, col] + 1
                queue.append((n_row, n_col))
    return distance


class MazeWaypointController:
    """Steers PointMaze's point mass to a goal along the shortest route through the maze's cells.

    `maze` is gymnasium-robotics' `Maze` (`env.unwrapped.maze`): its `maze_map` (1 = wall) and the
    geometry behind `cell_rowcol_to_xy` / `cell_xy_to_rowcol`, which this class applies to whole
    batches. The action is `p_gain * (target - position) - d_gain * velocity`, unclipped: like
    D4RL's controller it often exceeds the action bounds [-1, 1], which the environment clips;
    a caller adding exploration noise adds it to this raw action, then clips.
    """

    def __init__(self, maze, p_gain: float = 10.0, d_gain: float = 1.0):
        self.p_gain = p_gain
        self.d_gain = d_gain
        self.free = np.array([[cell != 1 for cell in row] for row in maze.maze_map])  # [rows, cols]
        self.scaling = float(maze.maze_size_scaling)
        self.x_map_center = float(maze.x_map_center)
        self.y_map_center = float(maze.y_map_center)
        self.next_cell = _route_table(self.free)  # [rows, cols, rows, cols, 2]

    @classmethod
    def for_env(cls, env, **gains) -> MazeWaypointController:
        """The controller for a PointMaze environment (any wrapper around it)."""
        return cls(env.unwrapped.maze, **gains)

    def xy_to_cell(self, xy: np.ndarray) -> np.ndarray:
        """[..., 2] positions -> [..., 2] (row, col) cells, clamped into the grid."""
        row = np.floor((self.y_map_center - xy[..., 1]) / self.scaling).astype(np.int64)
        col = np.floor((xy[..., 0] + self.x_map_center) / self.scaling).astype(np.int64)
        row = np.clip(row, 0, self.free.shape[0] - 1)
        col = np.clip(col, 0, self.free.shape[1] - 1)
        return np.stack([row, col], axis=-1)

    def cell_to_xy(self, cells: np.ndarray) -> np.ndarray:
        """[..., 2] (row, col) cells -> [..., 2] positions of their centres."""
        x = (cells[..., 1] + 0.5) * self.scaling - self.x_map_center
        y = self.y_map_center - (cells[..., 0] + 0.5) * self.scaling
        return np.stack([x, y], axis=-1)

    def waypoint(self, position: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """[..., 2] the point each point mass steers toward now: the next cell's centre, or the goal."""
        cell = self.xy_to_cell(position)
        goal_cell = self.xy_to_cell(goal)
        step = self.next_cell[goal_cell[..., 0], goal_cell[..., 1], cell[..., 0], cell[..., 1]]
        in_goal_cell = np.all(cell == goal_cell, axis=-1, keepdims=True)
        return np.where(in_goal_cell, goal, self.cell_to_xy(step))

    def __call__(self, observation: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """observation [..., 4] (x, y, vx, vy), goal [..., 2] -> raw actions [..., 2]."""
        observation = np.asarray(observation, dtype=np.float64)
        goal = np.asarray(goal, dtype=np.float64)
        position, velocity = observation[..., :2], observation[..., 2:4]
        return self.p_gain * (self.waypoint(position, goal) - position) - self.d_gain * velocity
