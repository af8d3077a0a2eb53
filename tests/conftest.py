import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_maze_data(tmp_path_factory) -> Path:
    """A data dir with a small generated UMaze dataset (3000 steps, noise 0.5, seed 0), built once per session.

    Configs that use it set `dataset_steps: 3000` (test_training.TINY does), which names its directory.
    """
    from diffuser.datasets.prepare import prepare_dataset

    data_dir = tmp_path_factory.mktemp("data")
    prepare_dataset("gen-maze2d-umaze", data_dir, steps=3000, action_noise=0.5, seed=0)
    return data_dir


def python_env() -> dict:
    """Environment for subprocesses that import this package from the checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


PYTHON = sys.executable
