"""User-facing error types: each message says what is wrong, where, and what to do (one line)."""

from __future__ import annotations


class WorkflowLocked(RuntimeError):
    """Another live Snakemake is running the same experiment in this directory."""


class GpuRequestError(ValueError):
    """A GPU request (`-g`, `--resources gpu=`) that this machine cannot meet."""
