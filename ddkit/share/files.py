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


def check_npy_header(fh, size: int) -> None:
    """Refuse (ValueError) the `.npy` stream `fh` of `size` bytes unless its header declares plain
    numbers that fit in those bytes (a few hundred bytes can declare 1e13 elements, which numpy
    would allocate before reading). Leaves `fh` after the header."""
    version = np.lib.format.read_magic(fh)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f".npy format version {version} (ddkit writes 1.0 and 2.0)")
    shape, _, dtype = readers[version](fh)
    if dtype.hasobject:
        raise ValueError("it holds Python objects")
    held = size - fh.tell()
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if declared > held:
        raise ValueError(f"its header declares shape {shape} of {dtype} ({declared} bytes), the file holds "
                         f"{held} bytes")


def load_npy(path: Path) -> np.ndarray:
    """A `.npy` array, never unpickled (object arrays are refused), its header checked first."""
    try:
        with open(path, "rb") as fh:
            check_npy_header(fh, os.fstat(fh.fileno()).st_size)
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise FileFormatError(f"{path} is not a plain .npy array ({exc})", "re-export the set") from None


def load_npz(path: Path, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """The arrays of an `.npz` (`names` only, when given), each member's header checked like `load_npy`'s."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            members = {m.filename[:-4]: m for m in zf.infolist() if m.filename.endswith(".npy")}
            out = {}
            for name, member in members.items():
                if names is not None and name not in names:
                    continue
                with zf.open(member) as fh:
                    check_npy_header(fh, member.file_size)
                    fh.seek(0)
                    out[name] = np.lib.format.read_array(fh, allow_pickle=False)
            return out
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise FileFormatError(f"{path} is not a readable .npz of plain arrays ({exc})",
                              "save the arrays with np.savez") from None


def load_npy_tree(folder: Path) -> dict[str, np.ndarray]:
    """Every `.npy` below `folder`, keyed by its relative path without the suffix."""
    return {p.relative_to(folder).with_suffix("").as_posix(): load_npy(p) for p in sorted(folder.rglob("*.npy"))}
