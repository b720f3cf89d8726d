"""Small file helpers of the interchange formats: atomic output folders, source hashes, `.npy` I/O.

An export is a folder; like every ddkit output it appears under its final name only when complete
(written as a hidden sibling, then renamed), so an interrupted export never leaves a folder that
looks finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ddkit.errors import FileFormatError, OutputExists, OutputUnwritable
from ddkit.fileio import sha256_file
from ddkit.paths import kind, output_folder, read_small, walk

MARKER = ".ddkit-output.json"  # what an output folder holds, written last by `atomic_folder`
MARKER_FORMAT = "ddkit.output-folder"


def _marker_files(folder: Path) -> set[str] | None:
    """The files the marker of `folder` lists, or None when there is no readable marker."""
    from ddkit.records import parse_json

    if kind(folder / MARKER) != "file":
        return None
    try:
        record = parse_json(read_small(folder / MARKER, "output marker"), str(folder / MARKER))
    except FileFormatError:
        return None
    files = record.get("files") if isinstance(record, dict) and record.get("format") == MARKER_FORMAT else None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    return set(files)


def replaceable(folder: str | os.PathLike) -> str | None:
    """None when `--overwrite` may replace the existing folder `folder`: it is empty, or it holds
    only files that ddkit's marker says ddkit wrote there. Otherwise the reason it may not."""
    folder = Path(folder)
    tree = walk(folder)
    if tree.refused:
        path, reason = tree.refused[0]
        return f"it holds {path.relative_to(folder)}, {reason}"
    found = {p.relative_to(folder).as_posix() for p in tree.files} - {MARKER}
    if not found:
        return None
    listed = _marker_files(folder)
    if listed is None:
        return f"it holds files ddkit did not write there (e.g. {sorted(found)[0]}; no {MARKER} marker)"
    extra = sorted(found - listed)
    if extra:
        return f"it holds files ddkit did not write there ({', '.join(extra[:3])}{', …' if len(extra) > 3 else ''})"
    return None


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, overwrite: bool = False, written_by: str = "ddkit") -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces `path` and lists its files in a marker.

    `path` is checked first (`ddkit.paths.output_folder`: never `.`, `/`, a link, …). An existing
    folder is replaced only with `overwrite`, and only when `replaceable` (empty, or holding just
    what an earlier ddkit output wrote there, as its marker lists): `--overwrite` never deletes a
    file of the user's, the set being exported, or anything a link points to.
    """
    final = output_folder(path)
    _check_replace(final, overwrite)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as exc:
        raise OutputUnwritable(f"cannot create {final} ({exc.strerror or exc})",
                               "choose an output folder you can write") from None
    try:
        yield tmp
        files = sorted(p.relative_to(tmp).as_posix() for p in walk(tmp).files)
        record = {"format": MARKER_FORMAT, "version": 1, "written_by": written_by, "files": files}
        (tmp / MARKER).write_text(json.dumps(record, indent=1) + "\n")
        _check_replace(final, overwrite)  # again: the folder may have changed while the output was made
        old = final.with_name(f".{final.name}.{os.getpid()}.old")
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_replace(final: Path, overwrite: bool) -> None:
    if not final.exists():
        return
    if not overwrite:
        raise OutputExists(f"{final} already exists", "pass --overwrite (overwrite=True) or choose another path")
    reason = replaceable(final)
    if reason is not None:
        raise OutputExists(f"refusing to replace {final}: {reason}",
                           "choose a new folder; --overwrite replaces only a folder an earlier ddkit export or pack "
                           "wrote (remove other files yourself if you mean it)")


def source_sha256(path: str | os.PathLike, follow_symlinks: bool = False) -> str:
    """sha256 of a file, or of a folder (every file's relative path and sha256, in sorted order).

    A folder is walked by `ddkit.paths.walk`: a link or special file in it is refused unless
    `follow_symlinks` (then a linked file is hashed as what it points to, as it was read).
    """
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    tree = walk(path, follow_symlinks=follow_symlinks)
    tree.raise_refused("import source")
    h = hashlib.sha256(b"ddkit.folder.v1\0")
    for item in tree.files:
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
    tree = walk(folder, match=lambda p: p.suffix == ".npy")
    tree.raise_refused("extras folder")
    return {p.relative_to(folder).with_suffix("").as_posix(): load_npy(p) for p in tree.files}
