"""Small file helpers of the interchange formats: atomic output folders, source hashes, `.npy` I/O.

An export is a folder; like every ddkit output it appears under its final name only when complete
(written as a hidden sibling, then renamed), so an interrupted export never leaves a folder that
looks finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ddkit.errors import FileFormatError, OutputExists
from ddkit.fileio import sha256_file


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces `path` (refused if it exists, unless `overwrite`)."""
    final = Path(path)
    if final.exists() and not overwrite:
        raise OutputExists(f"{final} already exists", "pass --overwrite (overwrite=True) or choose another path")
    if final.exists() and not final.is_dir():
        raise OutputExists(f"{final} is a file, not a folder", "give a folder path")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        old = final.with_name(f".{final.name}.{os.getpid()}.old")
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def source_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a folder (every file's relative path and sha256, in sorted order)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256(b"ddkit.folder.v1\0")
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{item.relative_to(path).as_posix()}\0{sha256_file(item)}\n".encode())
    return h.hexdigest()


def save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.ascontiguousarray(array), allow_pickle=False)


def load_npy(path: Path) -> np.ndarray:
    """A `.npy` array, never unpickled (object arrays are refused)."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise FileFormatError(f"{path} is not a plain .npy array ({exc})", "re-export the set") from None


def load_npy_tree(folder: Path) -> dict[str, np.ndarray]:
    """Every `.npy` below `folder`, keyed by its relative path without the suffix."""
    return {p.relative_to(folder).with_suffix("").as_posix(): load_npy(p) for p in sorted(folder.rglob("*.npy"))}
