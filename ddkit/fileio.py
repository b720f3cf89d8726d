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

from ddkit.errors import DdkitError, FileFormatError, OutputExists, OutputUnwritable


def check_output(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse to replace an existing file unless `overwrite`, a path naming a folder, and a folder
    that cannot be written; make sure the folder exists. Commands call it before any work starts."""
    path = check_output_folder(path)
    if path.exists() and not overwrite:
        raise OutputExists(f"{path} already exists", "pass --overwrite (overwrite=True) or choose another path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputUnwritable(f"cannot create the folder of {path} ({exc.strerror or exc})",
                               "choose an output path in a folder you can write") from None
    return path


def check_output_folder(path: str | os.PathLike) -> Path:
    """Without creating anything: refuse an output path that names a folder, or whose nearest
    existing ancestor folder cannot be written (for command-line checks before any work starts)."""
    if str(path).endswith(("/", os.sep)):
        raise OutputExists(f"{path} names a folder (it ends with '/')", "give a file path, e.g. DIR/name.ddk.h5")
    target = Path(path)
    if target.is_dir():
        raise OutputExists(f"{path} is a directory", "give a file path")
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputUnwritable(f"cannot write {path}: {folder} is not a folder", "choose an output path in a folder")
    check_writable(folder / target.name, str(path), "choose an output path in a folder you can write")
    return target


def check_writable(path: str | os.PathLike, what: str, fix: str) -> None:
    """Refuse (OutputUnwritable) when a file cannot be created beside `path` (so `path` cannot be
    written or replaced atomically). A real probe file, not `os.access`, which root always passes."""
    folder = Path(path).parent
    probe = folder / f".{Path(path).name}.{os.getpid()}.probe"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        probe.unlink()
    except OSError as exc:
        raise OutputUnwritable(f"cannot write {what}: folder {folder} is not writable ({exc.strerror or exc})",
                               fix) from None


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temp_path(final: Path, pid: int | None = None) -> Path:
    """The temporary name a write of `final` uses: `.NAME.PID.tmp` beside it."""
    return final.with_name(f".{final.name}.{os.getpid() if pid is None else pid}.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(final: Path) -> list[Path]:
    """Delete temporary files of earlier writes of `final` whose process is gone (a `kill -9`
    leaves them behind); temporary files of live processes are left alone. Returns what was removed."""
    removed = []
    prefix, suffix = f".{final.name}.", ".tmp"
    with contextlib.suppress(OSError):
        for entry in final.parent.iterdir():
            pid = entry.name[len(prefix) : -len(suffix)]
            if entry.name.startswith(prefix) and entry.name.endswith(suffix) and pid.isdigit():
                if int(pid) != os.getpid() and not _alive(int(pid)):
                    with contextlib.suppress(OSError):
                        entry.unlink()
                        removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path` in one rename.

    On any exception (and on SIGTERM/SIGHUP under the `ddkit` command, which turns them into
    SystemExit) the temporary file is removed and the previous file (if any) is untouched; the
    temporary files a killed process left behind are removed on the next write of the same path.
    """
    final = check_output(path, overwrite)
    remove_stale_temps(final)
    tmp = temp_path(final)
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


@contextlib.contextmanager
def folder_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive advisory lock (flock) on the folder of `path` for a read-modify-write of
    `path`: writers that take it (result cards) never interleave, so none loses another's update.
    The lock is on the folder, not the file, because the file is replaced by rename."""
    import fcntl

    fd = os.open(Path(path).parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


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
