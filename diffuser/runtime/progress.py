"""Progress bars on a terminal, silence in logs."""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(total: int, initial: int = 0, desc: str = "") -> tqdm:
    return tqdm(total=total, initial=initial, desc=desc, disable=not sys.stderr.isatty(), dynamic_ncols=True)
