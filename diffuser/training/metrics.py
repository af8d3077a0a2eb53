"""One tidy metrics table per run: `metrics.csv` with columns step, metric, value."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path


class MetricsLogger:
    """Appends (step, metric, value) rows; on resume, drops rows logged after the resumed step.

    Rows past the checkpoint's step were written by the part of a killed run that is now
    repeated; keeping them would give two values for one step.
    """

    HEADER = ("step", "metric", "value")

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None or not self.path.exists():
            self._rewrite([])
        else:
            self._rewrite([r for r in self.read_rows() if int(r[0]) <= resume_step])
        self._file = open(self.path, "a", newline="")
        self._writer = csv.writer(self._file)

    def read_rows(self) -> list[tuple[str, str, str]]:
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        return [tuple(r) for r in rows[1:] if len(r) == 3]

    def _rewrite(self, rows) -> None:
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(self.HEADER)
            w.writerows(rows)
        os.replace(tmp, self.path)

    def log(self, step: int, values: dict[str, float]) -> dict[str, float]:
        """Writes the finite values of `values` at `step`; returns them (what was logged)."""
        logged = {name: float(value) for name, value in values.items() if math.isfinite(float(value))}
        for name, value in logged.items():
            self._writer.writerow((int(step), name, repr(value)))
        self._file.flush()
        return logged

    def close(self) -> None:
        self._file.close()
