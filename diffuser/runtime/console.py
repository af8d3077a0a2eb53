"""Status lines a job shows on the sweep's console as well as in its own log.

A pipeline job's output goes to its log file; the train rule also hands the job the console's
stream as file descriptor `DIFFUSER_CONSOLE_FD` (`3>&2` in the rule), so a one-line event such as
"resumed from step N" is seen where the user is looking, not only in the log.
"""

from __future__ import annotations

import os

CONSOLE_FD_VARIABLE = "DIFFUSER_CONSOLE_FD"


def announce(message: str) -> None:
    """Print `message` to stdout (the job log) and, when the job was given one, to the console."""
    print(message, flush=True)
    fd = os.environ.get(CONSOLE_FD_VARIABLE)
    if not fd:
        return
    try:
        os.write(int(fd), (message + "\n").encode())
    except (OSError, ValueError):
        pass  # no console given after all (the variable leaked into a process without that descriptor)
