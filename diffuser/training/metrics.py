"""One tidy metrics table per run (`metrics.csv`: step, metric, value), and the sums behind its rows."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import torch


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


class MetricSums:
    """Sums and counts of each metric since the last log row, kept where the metrics are computed.

    Adding a step's loss terms (0-d tensors) stacks them and adds them to a float64 sum on their
    device: nothing is read back to the host, so a GPU step never waits for it. `means()` reads all
    sums at once (one host read). A NaN or infinite term leaves its sum non-finite, so the reader
    learns which term went bad since the last row. Plain numbers (environment returns) are summed on
    the host.
    """

    def __init__(self):
        self._groups: dict[tuple[str, ...], list] = {}  # names -> [sums [len(names)] float64, count]
        self._host: dict[str, list] = {}  # name -> [sum, count]

    def add(self, metrics: dict) -> None:
        tensors = {name: value for name, value in metrics.items() if isinstance(value, torch.Tensor)}
        for name, value in metrics.items():
            if name not in tensors:
                entry = self._host.setdefault(name, [0.0, 0])
                entry[0] += float(value)
                entry[1] += 1
        if not tensors:
            return
        names = tuple(tensors)
        stacked = torch.stack([value.detach() for value in tensors.values()])
        group = self._groups.get(names)
        if group is None:
            self._groups[names] = [stacked.to(torch.float64), 1]
        else:
            group[0].add_(stacked)
            group[1] += 1

    def __bool__(self) -> bool:
        return bool(self._groups or self._host)

    def means(self) -> dict[str, float]:
        """The mean of each metric since the last reset; reads every device sum in one transfer."""
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        if self._groups:
            values = torch.cat([group[0] for group in self._groups.values()]).tolist()
            position = 0
            for names, (_, count) in self._groups.items():
                for name in names:
                    sums[name] = sums.get(name, 0.0) + values[position]
                    counts[name] = counts.get(name, 0) + count
                    position += 1
        for name, (total, count) in self._host.items():
            sums[name] = sums.get(name, 0.0) + total
            counts[name] = counts.get(name, 0) + count
        return {name: total / counts[name] for name, total in sums.items()}

    def reset(self) -> None:
        self._groups, self._host = {}, {}

    def state_dict(self) -> dict:
        """The sums as they are (tensors stay float64), so a resumed run adds to them in the same order."""
        return {
            "groups": [{"names": list(names), "sums": sums, "count": count}
                       for names, (sums, count) in self._groups.items()],
            "host": {name: list(entry) for name, entry in self._host.items()},
        }

    def load_state_dict(self, state: dict, device) -> None:
        self._groups = {tuple(g["names"]): [g["sums"].to(device), int(g["count"])] for g in state["groups"]}
        self._host = {name: [float(total), int(count)] for name, (total, count) in state["host"].items()}
