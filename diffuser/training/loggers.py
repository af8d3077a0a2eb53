"""Where a cell's metrics go: the tidy metrics.csv always, mirrored to the loggers a config names.

`loggers: [csv, tensorboard, wandb, dvclive]` (diffuser/schemas/cell.schema.yaml). metrics.csv is
the source of truth (the report reads only it); every mirror receives exactly the rows the CSV
receives, under the same metric names and steps:

- tensorboard: event files in `<cell>/tensorboard/`, one scalar tag per metric;
- wandb: a run in `<cell>/wandb/`, offline unless `wandb_project` is set (then online, and the
  API key must already be configured: a job never asks for a login);
- dvclive: `<cell>/dvclive/` (plots/metrics/<name>.tsv, metrics.json), listed in the DVC
  repository's dvc.yaml (`register_with_dvc`) so `dvc plots show` and `dvc exp show` read it.

A run resumed from the checkpoint of step S repeats the steps after S, so each logger drops them:
the CSV rewrites itself without them, TensorBoard writes a purge marker at S + 1 (readers discard
the older events at and after it), DVCLive's tables are cut at S, and wandb keeps the run id, so
the server ignores steps it already has (offline: each part is its own run file with the same id,
merged by `wandb sync`).
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import netrc
import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

from diffuser.errors import LoggerUnavailable
from diffuser.training.metrics import MetricsLogger

MIRRORS = ("tensorboard", "wandb", "dvclive")
# The package each optional logger needs (checked with the spec, diffuser.config, before any job).
LOGGER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "dvclive": "dvclive"}
WANDB_DEFAULT_URL = "https://api.wandb.ai"
TENSORBOARD_DIRNAME = "tensorboard"
WANDB_DIRNAME = "wandb"
DVCLIVE_DIRNAME = "dvclive"


def _missing_package(logger: str, package: str) -> LoggerUnavailable:
    return LoggerUnavailable(
        f"loggers: '{logger}' needs the {package} package, which is not installed: "
        f"pip install {package} (or remove '{logger}' from loggers)."
    )


class TensorBoardMirror:
    def __init__(self, log_dir: Path, resume_step: int | None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise _missing_package("tensorboard", "tensorboard") from err
        if resume_step is None:
            shutil.rmtree(log_dir, ignore_errors=True)  # a fresh run: no events of an older run under it
        # purge_step: readers drop events of the killed run logged at steps >= resume_step + 1
        purge = None if resume_step is None else resume_step + 1
        self._writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge)

    def log(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self._writer.add_scalar(name, value, global_step=step)
        # as the CSV: a row logged is on disk, so a killed run loses none that resume will not repeat
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def wandb_api_key() -> str | None:
    """The key a `wandb login` (or WANDB_API_KEY) left on this machine, read without wandb or the network."""
    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"]
    host = urlparse(os.environ.get("WANDB_BASE_URL", WANDB_DEFAULT_URL)).hostname
    try:
        auth = netrc.netrc(os.environ.get("NETRC")).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None
    return auth[2] if auth else None


def wandb_login_problem(project: str) -> str:
    return (f"wandb_project is {project!r} but no wandb API key is configured on this machine: run `wandb login` "
            "once outside the job or set WANDB_API_KEY, or unset wandb_project to log offline.")


def wandb_run_id(run_dir: Path) -> str:
    """A stable id per cell directory, so a resumed cell continues its own wandb run."""
    return hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]


def experiment_and_cell(run_dir: Path) -> tuple[str | None, str]:
    """('maze2d-umaze-demo', 'online_training~True/seed~100') for results/<exp>/cells/<cell>; else
    (None, the folder's name)."""
    parts = run_dir.resolve().parts
    if "cells" in parts[:-1]:
        at = len(parts) - 1 - parts[::-1].index("cells")
        return parts[at - 1], "/".join(parts[at + 1:])
    return None, run_dir.name


class WandbMirror:
    def __init__(self, run_dir: Path, config: dict, resume_step: int | None):
        try:
            import wandb
        except ImportError as err:
            raise _missing_package("wandb", "wandb") from err
        project = config.get("wandb_project")
        mode = "online" if project else "offline"
        if mode == "online" and not wandb_api_key():  # checked with the spec too; a cluster node may differ
            raise LoggerUnavailable(wandb_login_problem(project))
        directory = run_dir / WANDB_DIRNAME
        if resume_step is None and mode == "offline":
            shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True, exist_ok=True)
        experiment, cell = experiment_and_cell(run_dir)
        self._run = wandb.init(
            project=project or "diffuser",
            dir=str(run_dir),
            id=wandb_run_id(run_dir),
            name=cell,
            group=experiment,
            config=config,
            mode=mode,
            resume="allow",
            reinit="create_new",
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
        )

    def log(self, step: int, values: dict[str, float]) -> None:
        self._run.log(values, step=step)

    def close(self) -> None:
        self._run.finish()


class DVCLiveMirror:
    def __init__(self, log_dir: Path, resume_step: int | None):
        try:
            from dvclive import Live
        except ImportError as err:
            raise _missing_package("dvclive", "dvclive") from err
        if resume_step is None:
            shutil.rmtree(log_dir, ignore_errors=True)
        else:
            _cut_dvclive_tables(log_dir, resume_step)
        # save_dvc_exp=False: a cell is one job of a sweep, not a DVC experiment of its own;
        # dvcyaml=None: the cell is registered below, under a lock, since the cells of a sweep run at once
        self._live = Live(str(log_dir), resume=resume_step is not None, save_dvc_exp=False, report=None, dvcyaml=None)
        register_with_dvc(log_dir)

    def log(self, step: int, values: dict[str, float]) -> None:
        self._live.step = step
        for name, value in values.items():
            self._live.log_metric(name, value)
        self._live.make_summary()

    def close(self) -> None:
        self._live.end()


def register_with_dvc(live_dir: Path) -> Path | None:
    """Lists a DVCLive folder's metrics.json and plots in the root dvc.yaml of the DVC repository
    holding it (top-level `metrics` and `plots`), so `dvc exp show`, `dvc metrics show` and `dvc
    plots show` read it, as DVCLive does for a single run. The root file, because DVC reads no
    dvc.yaml inside a git-ignored folder (results/) or a stage's output (cells/). Returns the
    dvc.yaml changed, or None outside a DVC repository.
    """
    live_dir = live_dir.resolve()
    root = next((parent for parent in live_dir.parents if (parent / ".dvc").is_dir()), None)
    if root is None or not (root / "dvc.yaml").exists():
        return None
    relative = live_dir.relative_to(root).as_posix()
    metrics, plots = f"{relative}/metrics.json", f"{relative}/plots/metrics"
    lock_path = root / ".dvc" / "tmp" / "dvclive-register.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _add_to_dvc_yaml(root / "dvc.yaml", metrics, plots)
    return root / "dvc.yaml"


def _add_to_dvc_yaml(path: Path, metrics: str, plots: str) -> None:
    """Appends `metrics` to the top-level metrics and `plots` (x: step) to the top-level plots of
    `path`, keeping its comments, indentation and line lengths (ruamel round trip, as DVC's own)."""
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096
    yaml.preserve_quotes = True
    data = yaml.load(path.read_text())
    listed = data.setdefault("metrics", [])
    changed = metrics not in listed
    if changed:
        listed.append(metrics)
    listed = data.setdefault("plots", [])
    if not any(plots == entry or (isinstance(entry, dict) and plots in entry) for entry in listed):
        listed.append({plots: {"x": "step"}})
        changed = True
    if changed:
        tmp = path.with_suffix(".yaml.tmp")
        with open(tmp, "w") as f:
            yaml.dump(data, f)
        os.replace(tmp, path)


def _cut_dvclive_tables(log_dir: Path, resume_step: int) -> None:
    """Drops the rows after `resume_step` from DVCLive's per-metric tables (plots/metrics/*.tsv)."""
    for table in (log_dir / "plots" / "metrics").rglob("*.tsv"):
        with open(table, newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))
        if not rows:
            continue
        step_column = rows[0].index("step")
        kept = [rows[0]] + [row for row in rows[1:] if int(row[step_column]) <= resume_step]
        tmp = table.with_suffix(".tsv.tmp")
        with open(tmp, "w", newline="") as f:
            csv.writer(f, delimiter="\t", lineterminator="\n").writerows(kept)
        os.replace(tmp, table)


class RunLoggers:
    """metrics.csv plus the mirrors named by `config["loggers"]`; `log(step, values)` writes to all.

    Only finite values are logged (the CSV's rule), so every logger holds the same rows.
    """

    def __init__(self, run_dir: str | os.PathLike, config: dict, resume_step: int | None = None):
        run_dir = Path(run_dir)
        names = [name for name in config["loggers"] if name in MIRRORS]
        self.csv = MetricsLogger(run_dir / "metrics.csv", resume_step=resume_step)
        self.mirrors: list = []
        try:
            for name in dict.fromkeys(names):
                if name == "tensorboard":
                    self.mirrors.append(TensorBoardMirror(run_dir / TENSORBOARD_DIRNAME, resume_step))
                elif name == "wandb":
                    self.mirrors.append(WandbMirror(run_dir, config, resume_step))
                else:
                    self.mirrors.append(DVCLiveMirror(run_dir / DVCLIVE_DIRNAME, resume_step))
        except BaseException:
            self.close()
            raise

    def log(self, step: int, values: dict[str, float]) -> None:
        logged = self.csv.log(step, values)
        for mirror in self.mirrors:
            mirror.log(int(step), logged)

    def close(self) -> None:
        for logger in (self.csv, *self.mirrors):
            logger.close()
