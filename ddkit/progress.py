"""Progress bars for long work, shown on rank 0 only and never in a pipe that is not a terminal
unless asked (DDKIT_PROGRESS=1)."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def progress(iterable=None, total: int | None = None, desc: str = "", **kwargs):
    """A tqdm bar that is silent on ranks other than 0 and when DDKIT_PROGRESS=0."""
    setting = os.environ.get("DDKIT_PROGRESS", "auto")
    if setting == "auto":
        enabled = sys.stderr.isatty()
    else:
        enabled = setting not in ("0", "false", "no")
    disable = (not enabled) or _rank() != 0
    return tqdm(iterable, total=total, desc=desc, disable=disable, dynamic_ncols=True, leave=False, **kwargs)


def say(message: str) -> None:
    """One log line on stderr (rank 0 only), printed so that it does not break a progress bar."""
    if _rank() == 0:
        tqdm.write(message, file=sys.stderr)
