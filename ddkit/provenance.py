"""Where a ddkit file came from: the one clock and the stamp every file and result card carries.

Every `created` timestamp in ddkit (distilled and selection files, pools, pool scores, teachers,
result cards) comes from `utc_now`, so they all read the same way: ISO-8601 UTC to the second with
a `Z` suffix. Older files that wrote `+00:00` instead stay valid: nothing parses the value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import ddkit


def utc_now() -> str:
    """The current time as an ISO-8601 UTC string with a `Z` suffix (the `created` attribute)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Stamp:
    """When and by which ddkit version a file was written (two root attributes of every side file)."""

    created: str = field(default_factory=utc_now)
    ddkit_version: str = ddkit.__version__

    def to_dict(self) -> dict:
        return asdict(self)
