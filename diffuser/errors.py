"""Every error a user can cause, at the bottom of the library so any layer can raise them.

Each message is one sentence: what is wrong, where, and what to do. The command line shows a
`UserError` as that one line, without a traceback (diffuser.cli).
"""


class UserError(Exception):
    """A problem the user can fix (a config, a file, a missing environment, a full GPU pool)."""


class ConfigError(UserError, ValueError):
    """A spec or cell config that cannot run; the message says what to change."""


class RegistryError(ConfigError):
    """A class-path name that is not registered, or whose module cannot be imported."""


class DatasetError(UserError):
    """A dataset file is missing, unreadable or inconsistent; the message names the file, the field and
    what to do."""


class EnvironmentUnavailable(UserError, RuntimeError):
    """The environment a dataset is evaluated on cannot be built here (unknown id or missing package)."""


class CheckpointError(UserError):
    """A checkpoint file is missing, corrupt, or was not written by this project."""


class TrainingDiverged(UserError):
    """A loss became NaN or infinite."""


class GpuPoolError(UserError, RuntimeError):
    """No GPU could be claimed: the pool stayed full, or a requested GPU is unusable."""


class LoggerUnavailable(UserError):
    """A logger the config asks for cannot run here (its package is missing, no wandb login)."""


class ReportError(UserError):
    """A problem with an experiment's results that the user can fix (a missing or malformed file)."""


class WorkflowLocked(UserError, RuntimeError):
    """Another live Snakemake is running the same experiment in this directory."""


class GpuRequestError(UserError, ValueError):
    """A GPU request (`-g`, `--resources gpu=`) that this machine cannot meet."""
