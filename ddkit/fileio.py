"""Atomic output files and hashing helpers shared by every writer.

An output is written under `NAME.tmp` in the same directory, flushed to disk, then renamed over the
final name: a crash or a full disk never leaves a half-written file under the final name, and an
existing file is only replaced when the caller asked for it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from pathlib import Path
from typing import Iterator

from ddkit.errors import DdkitError, FileFormatError, OutputExists


def check_output(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse to replace an existing file unless `overwrite`; make sure the folder exists."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExists(f"{path} already exists", "pass --overwrite (overwrite=True) or choose another path")
    if path.is_dir():
        raise OutputExists(f"{path} is a directory", "give a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path` in one rename.

    On any exception the temporary file is removed and the previous file (if any) is untouched.
    """
    final = check_output(path, overwrite)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise DdkitError(
                f"no space left while writing {final} ({exc.strerror})",
                "free disk space or write elsewhere; the previous file (if any) is unchanged",
            ) from exc
        raise
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def attr_text(value) -> str:
    """A string attribute as str: h5py returns str for ddkit's own, bytes for some foreign writers."""
    return value.decode() if isinstance(value, bytes) else str(value)


def open_checked_h5(path: str | os.PathLike, *, fmt: str, schema: int, kind: str, remedy: str,
                    cache_bytes: int | None = None):
    """A ddkit side file (pool, scores) opened read-only under the reader policy of `ddkit.h5safe`,
    its `format` and `schema` attributes checked.

    `kind` names the file in messages ("pool", "pool-scores"); `remedy` says how to make a good one
    (e.g. "build one with `ddkit pool build`"). `cache_bytes`: HDF5 chunk cache per dataset. Raises
    FileFormatError for a missing, unreadable, foreign or newer file; the caller closes the result.
    """
    from ddkit.h5safe import open_hdf5

    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"{kind} file {path} does not exist", remedy)
    f = open_hdf5(path, cache_bytes=cache_bytes, what=f"{kind} file")
    found = attr_text(f.attrs.get("format", ""))
    if found != fmt:
        f.close()
        raise FileFormatError(f"{path} is not a ddkit {kind} file (format {found!r})", remedy)
    if int(f.attrs.get("schema", 0)) > schema:
        written = f.attrs["schema"]
        f.close()
        raise FileFormatError(f"{path} was written by a newer ddkit ({kind} schema {written})", "upgrade ddkit")
    return f
