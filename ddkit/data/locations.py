"""Where dataset files are looked for and downloaded to, shared by every file-backed source.

The order is fixed and documented so a user can predict which copy is read: `$DDKIT_DATA` first
(an explicit choice wins), then `./data` (torchvision's habit), then the per-user cache
`~/.cache/ddkit`. Downloads go to `$DDKIT_DATA` when set, else to the cache.
"""

from __future__ import annotations

import os
from pathlib import Path

from ddkit.errors import DatasetUnavailable, InvalidInput

ENV_VAR = "DDKIT_DATA"


def env_root() -> Path | None:
    """`$DDKIT_DATA` as a path, or None when unset/empty."""
    value = os.environ.get(ENV_VAR, "").strip()
    return Path(value).expanduser() if value else None


def cache_root() -> Path:
    return Path("~/.cache/ddkit").expanduser()


def data_roots() -> list[Path]:
    """The roots searched for dataset files, in order (duplicates removed)."""
    roots = [r for r in (env_root(), Path("data"), cache_root()) if r is not None]
    seen, out = set(), []
    for root in roots:
        key = os.path.abspath(root)
        if key not in seen:
            seen.add(key)
            out.append(root)
    return out


def download_root() -> Path:
    """Where a download is written: `$DDKIT_DATA` when set, else `~/.cache/ddkit`."""
    return env_root() or cache_root()


def unavailable(name: str, error: BaseException, *alternatives: str, files: str = "its files") -> DatasetUnavailable:
    """The one message used when a dataset is neither on disk nor downloadable.

    It names every way to get the data: `alternatives` (e.g. a system package) first, then putting
    `files` under $DDKIT_DATA, then connecting to the internet.
    """
    ways = [*alternatives, f"put {files} in ${ENV_VAR} (now {os.environ.get(ENV_VAR) or 'unset'})",
            f"or connect to the internet so ddkit can download it into {download_root()}"]
    return DatasetUnavailable(
        f"dataset {name!r} is not on this machine and could not be downloaded ({type(error).__name__}: "
        f"{str(error).strip().splitlines()[0] if str(error).strip() else 'no detail'})",
        "; ".join(ways),
    )


def no_argument(name: str, arg: str | None) -> None:
    """Refuse `name:ARG` for sources that take no argument."""
    if arg is not None:
        raise InvalidInput(f"dataset {name!r} takes no argument, got {name}:{arg}", f"use plain {name!r}")
