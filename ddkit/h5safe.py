"""The reader policy for every HDF5 file ddkit opens: a file may be written by anyone.

A seal or a content hash proves a file is intact, not that its author means well, and HDF5 lets
a file reach outside itself or promise far more data than it holds. `open_hdf5` opens a local
path read-only and, before a single dataset value is read, walks the whole tree and refuses:

- links other than plain hard links (external links name another file; soft links alias
  objects; ddkit writes neither), and any object reached twice (a cycle or an alias);
- datasets whose bytes live outside the file: external storage (raw bytes of any path, e.g.
  /etc/passwd) and virtual datasets (views over other files);
- datasets that declare more data than the file holds: unwritten contiguous data or missing
  chunks (the reader would get megabytes of fill values per byte of file), chunks stored with a
  filter ddkit does not write, chunk sizes beyond deflate's best ratio, or chunks that alias each
  other (more allocated bytes than the file has);
- variable-length or object dtypes in datasets; attributes over `MAX_ATTR_BYTES`, and arrays of
  variable-length attributes (each element could point at the same large string).

So memory and time spent on a file stay bounded by a fixed multiple of what the file really
holds, and nothing outside the named file is ever opened. Every ddkit HDF5 format (distilled,
selection, experts, pool, pool scores, pool logits) is opened through `open_hdf5`; the readers
then check declared shapes against their header's counts before loading arrays.

Crash isolation. These checks run inside the HDF5 C library, and a crafted file (one byte of an
attribute's datatype message changed, then re-sealed: anyone can re-seal) can crash that library
with a segfault or send it into an endless loop, which no Python `except` catches. So before a
local file is opened in-process, `check_file` runs the walk in a forked child process: a crash, a
hang or a runaway allocation there becomes one FileFormatError in the command. The child's walk
goes further than the in-process one (every attribute value and one element of every dataset are
read), so the first reads a reader makes have already run once where a crash is harmless. A
passing verdict is remembered in `$DDKIT_CACHE/h5-checked/`, keyed by the file's identity (device,
inode, size, mtime, ctime) and its first 4 KiB (a ddkit file's seal: the sha256 of all its bytes),
so opening the same bytes again costs a stat and a 4 KiB read, not a process. `read_isolated`
runs a whole read in a child and hands back its JSON result: header reads of remote files (whose
ranged reads thus go through the walk before any dataset is read) and catalog scans use it.
"""

from __future__ import annotations

import contextlib
import faulthandler
import hashlib
import json
import os
import select
import signal
import stat
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import h5py
import numpy as np

from ddkit import errors
from ddkit.errors import DdkitError, FileFormatError

MAX_ATTR_BYTES = 1 << 20  # one attribute; ddkit's largest (a JSON header) is far smaller
# Deflate cannot expand data by more than 1032:1; a chunk claiming more is not honest data.
MAX_DEFLATE_RATIO = 1032
ALLOWED_FILTERS = {h5py.h5z.FILTER_DEFLATE: "gzip", h5py.h5z.FILTER_SHUFFLE: "shuffle",
                   h5py.h5z.FILTER_FLETCHER32: "fletcher32"}
DATASET_KINDS = "biufcS"  # fixed-size numbers and byte strings; no vlen, references or compounds

_FIX = "the file is damaged or was not written by ddkit; write or download it again from a trusted source"

POLICY_VERSION = 1  # part of every remembered verdict: a stricter policy re-checks every file once
CHECK_SECONDS = 30.0  # a child walk taking longer is a hang ($DDKIT_H5_CHECK_SECONDS overrides)
CHILD_MEMORY = 1 << 30  # address space a child may add to its parent's before allocations fail
MAX_RESULT_BYTES = 64 << 20  # the JSON a child hands back
_HEAD_BYTES = 4096  # the first bytes of a file that key its verdict (a ddkit seal is the first 512)
_LOOPS = "the HDF5 library loops on it: a damaged or crafted file"


def open_hdf5(path: str | os.PathLike, *, cache_bytes: int | None = None, what: str = "HDF5 file") -> h5py.File:
    """Open the local file `path` read-only, refusing it unless it passes `check_tree` (the first
    time in a child process, see `check_file`).

    `cache_bytes` sets HDF5's chunk cache per dataset; `what` names the file in messages. The
    caller closes the result. Missing paths, folders and unreadable files are a FileFormatError.
    """
    path = Path(path)
    if not path.exists():
        raise FileFormatError(f"{what} {path} does not exist", "check the path")
    if path.is_dir():
        raise FileFormatError(f"{path} is a directory, not a file", f"give the path of a {what}")
    check_file(path, what)
    try:
        h5 = h5py.File(path, "r", **({"rdcc_nbytes": cache_bytes} if cache_bytes else {}))
    except (OSError, ValueError) as exc:
        raise FileFormatError(
            f"{path} is not a readable HDF5 file (truncated, corrupt or another format: {exc})",
            "re-download or re-create the file; a partial download is the usual cause",
        ) from None
    try:
        check_tree(h5, path)
    except BaseException:
        h5.close()
        raise
    return h5


def check_tree(h5: h5py.File, path: str | os.PathLike, file_bytes: int | None = None, deep: bool = False) -> None:
    """Refuse (FileFormatError) a file that breaks the reader policy (see the module docstring).

    `file_bytes` is the file's size (default: the size of the local file `path`). With `deep`, also
    read every attribute value and one element of every dataset (what the child walk does)."""
    file_bytes = os.path.getsize(path) if file_bytes is None else file_bytes
    allocated = [0]
    seen: set[int] = set()
    try:
        _check_object(h5, "/", path, seen, allocated, file_bytes, deep)
    except (FileFormatError, MemoryError):
        raise
    except Exception as exc:  # whatever h5py or numpy raise on a damaged structure
        raise FileFormatError(f"{path} could not be read: {_short(exc)}", _FIX) from None
    if allocated[0] > file_bytes:
        raise FileFormatError(
            f"{path}: its datasets claim {allocated[0]} stored bytes but the file has {file_bytes} (chunks alias "
            "each other: a crafted file)", _FIX)


def _refuse(path, name: str, problem: str) -> FileFormatError:
    return FileFormatError(f"{path}: {name} {problem}", _FIX)


def _check_object(obj, name: str, path, seen: set[int], allocated: list[int], file_bytes: int, deep: bool) -> None:
    address = h5py.h5o.get_info(obj.id).addr
    if address in seen:
        raise _refuse(path, name, "is a second link to an object already in the file (ddkit files are trees)")
    seen.add(address)
    _check_attrs(obj, name, path, deep)
    if isinstance(obj, h5py.Dataset):
        allocated[0] += _check_dataset(obj, name, path, file_bytes)
        if deep and obj.shape is not None and 0 not in obj.shape:
            obj[(0,) * len(obj.shape)]  # one element: the dtype conversion and the first chunk
    if not isinstance(obj, h5py.Group):
        return
    for child in obj:  # iterating link names resolves nothing
        child_name = f"{name.rstrip('/')}/{child}"
        kind = obj.id.links.get_info(child.encode()).type
        if kind == h5py.h5l.TYPE_EXTERNAL:
            target = obj.get(child, getlink=True)
            raise _refuse(path, child_name, f"is an external link to {target.filename}:{target.path}; ddkit never "
                                            "reads another file named inside a file")
        if kind == h5py.h5l.TYPE_SOFT:
            raise _refuse(path, child_name, f"is a soft link to {obj.get(child, getlink=True).path} (ddkit files hold "
                                            "plain objects only)")
        if kind != h5py.h5l.TYPE_HARD:
            raise _refuse(path, child_name, "is a user-defined link, which ddkit does not follow")
        _check_object(obj[child], child_name, path, seen, allocated, file_bytes, deep)


def _check_attrs(obj, name: str, path, deep: bool = False) -> None:
    for key in obj.attrs:
        attr = obj.attrs.get_id(key)
        where = f"attribute {key!r} of {name}"
        size = attr.get_storage_size()
        if size > MAX_ATTR_BYTES:
            raise _refuse(path, where, f"is {size} bytes, over the {MAX_ATTR_BYTES} byte limit for an attribute")
        if attr.dtype.kind == "O" or h5py.check_vlen_dtype(attr.dtype) is not None:
            if attr.shape not in ((), (1,)):
                raise _refuse(path, where, f"is an array of {int(np.prod(attr.shape))} variable-length values "
                                           "(ddkit stores one string per attribute)")
            value = obj.attrs[key]  # one value: at most the file's size, so reading it is bounded
            value = value.reshape(-1)[0] if isinstance(value, np.ndarray) and value.size else value
            length = len(value) if isinstance(value, (str, bytes)) else 0
            if length > MAX_ATTR_BYTES:
                raise _refuse(path, where, f"is {length} characters, over the {MAX_ATTR_BYTES} byte limit")
        elif deep:
            obj.attrs[key]  # at most MAX_ATTR_BYTES


def _check_dataset(ds: h5py.Dataset, name: str, path, file_bytes: int) -> int:
    """Refuse a dataset that reads outside the file or declares more than it stores; its stored bytes."""
    plist = ds.id.get_create_plist()
    layout = plist.get_layout()
    if layout == h5py.h5d.VIRTUAL:
        sources = sorted({plist.get_virtual_filename(i) for i in range(plist.get_virtual_count())})
        raise _refuse(path, f"dataset {name}", f"is a virtual dataset over {', '.join(sources)}; ddkit reads only "
                                               "data stored in the file itself")
    if plist.get_external_count():
        target = plist.get_external(0)[0].decode(errors="replace")
        raise _refuse(path, f"dataset {name}", f"keeps its bytes in external file {target}; ddkit reads only data "
                                               "stored in the file itself")
    if ds.dtype.kind not in DATASET_KINDS or h5py.check_vlen_dtype(ds.dtype) is not None:
        raise _refuse(path, f"dataset {name}", f"has dtype {ds.dtype}, not a fixed-size number or string")
    declared = 0 if ds.shape is None else int(np.prod(ds.shape, dtype=object)) * ds.dtype.itemsize
    stored = int(ds.id.get_storage_size())
    if layout == h5py.h5d.CHUNKED:
        _check_chunks(ds, name, path, plist, declared, stored)
    elif declared and stored < declared:
        raise _refuse(path, f"dataset {name}", f"declares {ds.shape} ({declared} bytes) but stores {stored}: "
                                               "the rest would be read as fill values")
    if declared > MAX_DEFLATE_RATIO * max(file_bytes, 1):
        raise _refuse(path, f"dataset {name}", f"declares {declared} bytes, more than any {file_bytes}-byte file holds")
    return stored


def _check_chunks(ds: h5py.Dataset, name: str, path, plist, declared: int, stored: int) -> None:
    filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    unknown = [f for f in filters if f not in ALLOWED_FILTERS]
    if unknown:
        raise _refuse(path, f"dataset {name}", f"uses HDF5 filter(s) {unknown}, which ddkit does not write or read")
    chunk = ds.chunks
    expected = int(np.prod([-(-int(s) // int(c)) for s, c in zip(ds.shape, chunk)], dtype=object))
    present = int(ds.id.get_num_chunks())
    if present != expected:
        raise _refuse(path, f"dataset {name}", f"declares {ds.shape} in {expected} chunks but stores {present}: "
                                               "the rest would be read as fill values")
    chunk_bytes = int(np.prod(chunk, dtype=object)) * ds.dtype.itemsize
    if expected * chunk_bytes > MAX_DEFLATE_RATIO * max(stored, 1):
        raise _refuse(path, f"dataset {name}", f"declares {declared} bytes stored in {stored}, a ratio no honest "
                                               "compression reaches")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


# -- crash isolation ------------------------------------------------------------------------------


def check_file(path: str | os.PathLike, what: str = "HDF5 file") -> None:
    """Refuse the local file `path` unless its deep walk passes in a child process; remember a pass.

    A crash or hang of the HDF5 library on the file is a FileFormatError here, never a crash of the
    caller. A file whose verdict is remembered (same identity and first bytes) is not walked again.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise FileFormatError(f"{what} {path} cannot be read ({exc.strerror or exc})", "check the path") from None
    if not stat.S_ISREG(mode):
        raise FileFormatError(f"{path} is not a regular file (a folder, pipe or device)", f"give the path of a {what}")
    key = _verdict_key(path)
    if key is not None and _verdict_path(key).exists():
        return
    read_isolated(path, lambda h5: None, what=what)
    if key is not None:
        _remember(key)


def read_isolated(source: str | os.PathLike | Callable[[], tuple[BinaryIO, int]], reader: Callable[[h5py.File], Any],
                  what: str = "HDF5 file", label: str | None = None, timeout: float | None = None,
                  slow: str = _LOOPS) -> Any:
    """Open `source` under the reader policy in a child process, run `reader(h5)` there, return its result.

    `source` is a local path, or a callable (run in the child) giving a seekable binary file object
    and its size: how remote files are read (an fsspec file fetches the byte ranges HDF5 asks for).
    The deep walk (`check_tree(deep=True)`) runs before `reader` sees the file. The result must be
    JSON-serializable (numpy scalars and arrays are converted); a DdkitError raised in the child is
    raised here with its class, message and fix. `label` names the file in messages (default: the
    path); `slow` says what a read past `timeout` means.
    """
    name = label or str(source)
    return run_isolated(_read_in_child, source, reader, name, what=what, label=name, timeout=timeout, slow=slow)


def _read_in_child(source, reader, name: str):
    if callable(source):
        fileobj, size = source()
    else:
        if not Path(source).is_file():
            raise FileFormatError(f"{source} is not a regular file", "give the path of a file")
        fileobj, size = source, os.path.getsize(source)
    try:
        h5 = h5py.File(fileobj, "r")
    except TimeoutError as exc:  # a remote source that stopped answering (an OSError too)
        raise FileFormatError(f"{name}: reading it timed out ({_short(exc)})",
                              "check the network and the server, then retry") from None
    except (OSError, ValueError) as exc:
        raise FileFormatError(
            f"{name} is not a readable HDF5 file (truncated, corrupt or another format: {_short(exc)})",
            "re-download or re-create the file; a partial download is the usual cause",
        ) from None
    try:
        check_tree(h5, name, file_bytes=size, deep=True)
        return reader(h5)
    finally:
        h5.close()


def run_isolated(fn: Callable[..., Any], *args, what: str = "HDF5 file", label: str = "",
                 timeout: float | None = None, slow: str = _LOOPS) -> Any:
    """`fn(*args)` run in a forked child process; its JSON result, or one FileFormatError.

    The child gets `timeout` seconds (default `CHECK_SECONDS`, or $DDKIT_H5_CHECK_SECONDS) and
    `CHILD_MEMORY` more address space than this process; a signal, a hang or an allocation beyond
    that ends the child and is reported as a refusal of `label`. Where fork does not exist (Windows),
    `fn` runs in this process: the checks still hold, the isolation does not.
    """
    timeout = _check_seconds() if timeout is None else timeout
    if not hasattr(os, "fork"):
        return json.loads(json.dumps(fn(*args), default=_jsonable))
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Python ≥ 3.12 warns on fork with threads
        pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_end)
        _child(write_end, fn, args, timeout)
    os.close(write_end)
    reaped = False
    try:
        data, timed_out = _read_all(read_end, timeout)
        if timed_out:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        reaped = True
    finally:
        os.close(read_end)
        if not reaped:  # interrupted (Ctrl-C): the child goes with us
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
    label = label or what
    if timed_out:
        raise FileFormatError(f"{label}: reading its HDF5 structure did not finish in {timeout:g} s ({slow})", _FIX)
    if os.WIFSIGNALED(status) and not data:
        sig = _signal_name(os.WTERMSIG(status))
        raise FileFormatError(f"{label}: reading its HDF5 structure crashed the HDF5 library ({sig}): a damaged or "
                              "crafted file", _FIX)
    try:
        payload = json.loads(data)
    except ValueError:
        raise FileFormatError(f"{label}: the check of its HDF5 structure ended without a verdict "
                              f"(exit status {status})", _FIX) from None
    if "error" in payload:
        kind, problem, fix = payload["error"]
        cls = getattr(errors, kind, None)
        cls = cls if isinstance(cls, type) and issubclass(cls, DdkitError) else FileFormatError
        raise cls(problem, fix)
    if "failed" in payload:
        raise FileFormatError(f"{label} could not be read: {payload['failed']}", _FIX)
    return payload["ok"]


def _check_seconds() -> float:
    """$DDKIT_H5_CHECK_SECONDS when it is a positive number, else `CHECK_SECONDS`."""
    try:
        value = float(os.environ.get("DDKIT_H5_CHECK_SECONDS", CHECK_SECONDS))
    except ValueError:
        return CHECK_SECONDS
    return value if 0 < value < float("inf") else CHECK_SECONDS


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _child(write_end: int, fn, args, timeout: float) -> None:
    """The forked child: bounded in time and memory, reports one JSON line, exits without cleanup."""
    try:
        with contextlib.suppress(OSError, ValueError):  # each step is a nicety; the verdict does not need it
            faulthandler.disable()  # a crash here is the verdict, not a Python traceback on the user's terminal
            quiet = os.open(os.devnull, os.O_WRONLY)
            os.dup2(quiet, 1)  # nor glibc's or HDF5's messages about a heap the file corrupted
            os.dup2(quiet, 2)
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it kills us on Ctrl-C
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(int(timeout) + 5)  # outlive no parent that died without killing us
        _limit_memory()
        try:
            payload = {"ok": fn(*args)}
        except DdkitError as exc:
            payload = {"error": [type(exc).__name__, exc.problem, exc.fix]}
        except MemoryError:
            payload = {"failed": f"it needs more than {CHILD_MEMORY >> 30} GiB of memory to read its structure"}
        except BaseException as exc:  # noqa: BLE001 — every failure is the file's verdict
            payload = {"failed": _short(exc)}
        data = json.dumps(payload, default=_jsonable).encode()
        if len(data) > MAX_RESULT_BYTES:
            data = json.dumps({"failed": f"its header is over {MAX_RESULT_BYTES >> 20} MiB"}).encode()
        view = memoryview(data)
        while view:
            view = view[os.write(write_end, view):]
    finally:
        os._exit(0)


def _read_all(fd: int, timeout: float) -> tuple[bytes, bool]:
    """Everything written to pipe `fd` until it closes, or (partial, True) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    chunks, total = [], 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return b"".join(chunks), True
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks), False
        total += len(chunk)
        if total > MAX_RESULT_BYTES + 1024:
            return b"", True
        chunks.append(chunk)


def _limit_memory() -> None:
    try:
        import resource

        with open("/proc/self/status") as fh:
            vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        soft = vm + CHILD_MEMORY
        resource.setrlimit(resource.RLIMIT_AS, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
    except (OSError, ValueError, StopIteration, ImportError):
        pass  # no /proc or no rlimits: the time limit still holds


def _jsonable(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    raise TypeError(f"{type(obj).__name__} is not JSON-serializable")


# -- remembered verdicts --------------------------------------------------------------------------


def _verdict_dir() -> Path:
    return Path(os.environ.get("DDKIT_CACHE") or Path.home() / ".cache" / "ddkit") / "h5-checked"


def _verdict_path(key: str) -> Path:
    return _verdict_dir() / key


def _verdict_key(path: str | os.PathLike) -> str | None:
    """The identity of the file's current bytes (None when it cannot be read: the walk will say why)."""
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            head = fh.read(_HEAD_BYTES)
    except OSError:
        return None
    ident = f"{POLICY_VERSION}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|"
    return hashlib.sha256(ident.encode() + head).hexdigest()[:40]


def _remember(key: str) -> None:
    """Record a passing verdict; a cache folder that cannot be written only costs a re-check later."""
    with contextlib.suppress(OSError):
        folder = _verdict_dir()
        folder.mkdir(parents=True, exist_ok=True)
        _verdict_path(key).touch()
