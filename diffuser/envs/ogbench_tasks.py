"""OGBench's single-task names: which environment, which dataset file, which data recipe.

A dataset name `ogbench:<task>` names one of OGBench's reward-based single-task variants, e.g.
`ogbench:cube-single-play-singletask-v0` (the default task) or `...-singletask-task3-v0`. OGBench's
own conventions (ogbench.utils.make_env_and_datasets) map it to
- the environment: the name without the dataset type (`cube-single-singletask-task3-v0`), a
  gymnasium id the package registers on import;
- the dataset file: the name without `singletask` and `taskN` (`cube-single-play-v0.npz`), shared
  by the five tasks of an environment, whose rewards come from relabelling it for the task.

Supported here are the names whose data OGBench made with the scripted oracles the package ships:
the manipulation `play` datasets and the point-maze `navigate` datasets. The ant and humanoid
mazes' (and ant soccer's) data came from trained expert policies that the package does not ship, so
those names stop with a message saying so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from diffuser.errors import DatasetError

PREFIX = "ogbench:"
INSTALL_HINT = "pip install 'ogbench==1.2.2'"

# environment family -> the recipe of its dataset type (OGBench's data_gen_scripts/commands.sh)
SUPPORTED = {
    "cube-single": "play",
    "cube-double": "play",
    "scene": "play",
    "puzzle-3x3": "play",
    "pointmaze-medium": "navigate",
    "pointmaze-large": "navigate",
}
_NAME = re.compile(r"(?P<family>[a-z0-9-]+?)-(?P<kind>[a-z]+)-singletask(?:-task(?P<task>[1-5]))?-(?P<version>v\d+)")
_EXPERT_FAMILIES = re.compile(r"(visual-)?(antmaze|humanoidmaze|antsoccer)-.*")


class OGBenchNameError(DatasetError):
    """A dataset name that is not a supported OGBench single-task name; the message says which are."""


@dataclass(frozen=True)
class OGBenchTask:
    name: str  # e.g. "cube-single-play-singletask-task3-v0" (without the "ogbench:" prefix)
    family: str  # "cube-single", "pointmaze-medium", ...
    kind: str  # the dataset type: "play" or "navigate"
    task_id: int | None  # 1..5, or None for the environment's default task
    version: str  # "v0"

    @property
    def env_id(self) -> str:
        """The single-task environment OGBench registers, e.g. cube-single-singletask-task3-v0."""
        task = f"-task{self.task_id}" if self.task_id else ""
        return f"{self.family}-singletask{task}-{self.version}"

    @property
    def collection_env_id(self) -> str:
        """The goal-conditioned environment the data is collected in, e.g. cube-single-v0."""
        return f"{self.family}-{self.version}"

    @property
    def dataset_file(self) -> str:
        """OGBench's file name of the (task-independent) dataset, e.g. cube-single-play-v0.npz."""
        return f"{self.family}-{self.kind}-{self.version}.npz"


def _supported_names() -> str:
    return ", ".join(f"{family}-{kind}-singletask[-task1..5]-v0" for family, kind in SUPPORTED.items())


def parse_task(name: str) -> OGBenchTask:
    """The OGBench task of `name` (with or without the `ogbench:` prefix); OGBenchNameError otherwise."""
    task = name[len(PREFIX):] if name.startswith(PREFIX) else name
    if _EXPERT_FAMILIES.fullmatch(task):
        raise OGBenchNameError(
            f"Dataset '{name}': OGBench made the ant and humanoid maze datasets with trained expert policies that the "
            f"ogbench package does not ship, so they cannot be generated here; use one of {_supported_names()}."
        )
    match = _NAME.fullmatch(task)
    if not match or SUPPORTED.get(match["family"]) != match["kind"] or match["version"] != "v0":
        raise OGBenchNameError(
            f"Dataset '{name}' is not a supported OGBench single-task name; use ogbench:<name> with one of "
            f"{_supported_names()}."
        )
    return OGBenchTask(
        name=task,
        family=match["family"],
        kind=match["kind"],
        task_id=int(match["task"]) if match["task"] else None,
        version=match["version"],
    )


def is_ogbench_env_id(env_id: str) -> bool:
    """Whether `env_id` is one of the single-task environments the `ogbench` package registers."""
    return any(env_id.startswith(f"{family}-singletask") for family in SUPPORTED)
