"""The shape of one issue-26 sharing case: inputs crafted as a stranger would, one `ddkit` command run on
them, and what must come of it. Test modules build cases in this shape and run them in-process; the
replay benchmark (`scripts/bench_reliability_sharing.py`) imports the same lists and runs every case in a
fresh process under strace, a memory cap and a timeout, so one definition serves both.

A module that defines cases exposes `CASES: list[SharingCase]`; `ALL_CASE_MODULES` names them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# The modules whose CASES the replay benchmark runs (each may be absent on a branch that lacks it).
ALL_CASE_MODULES = ("crafted_paths", "crafted_hdf5")


@dataclass(frozen=True)
class SharingCase:
    """One crafted input and the command run on it.

    `build(work)` makes the inputs inside the empty folder `work` and returns the ddkit argv (without
    the leading `ddkit`), run with `work` as the current folder. `expect` is "refused" (non-zero exit,
    one clear `error:` message, no traceback) or "ok" (exit 0). `inside` lists the folders (relative to
    `work`, or absolute) the command may read or write; every other open under `work`'s parent is an
    outside access. `outputs` are paths (relative to `work`) that must not exist after a refusal.
    """

    surface: str  # pack | export | import | catalog | remote | info | validate | experts | ...
    name: str
    build: Callable[[Path], list[str]]
    expect: str = "refused"
    inside: tuple[str, ...] = (".",)
    outputs: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.surface}/{self.name}"
