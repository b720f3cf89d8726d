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
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from ddkit.errors import FileFormatError

MAX_ATTR_BYTES = 1 << 20  # one attribute; ddkit's largest (a JSON header) is far smaller
# Deflate cannot expand data by more than 1032:1; a chunk claiming more is not honest data.
MAX_DEFLATE_RATIO = 1032
ALLOWED_FILTERS = {h5py.h5z.FILTER_DEFLATE: "gzip", h5py.h5z.FILTER_SHUFFLE: "shuffle",
                   h5py.h5z.FILTER_FLETCHER32: "fletcher32"}
DATASET_KINDS = "biufcS"  # fixed-size numbers and byte strings; no vlen, references or compounds

_FIX = "the file is damaged or was not written by ddkit; write or download it again from a trusted source"


def open_hdf5(path: str | os.PathLike, *, cache_bytes: int | None = None, what: str = "HDF5 file") -> h5py.File:
    """Open the local file `path` read-only, refusing it unless it passes `check_tree`.

    `cache_bytes` sets HDF5's chunk cache per dataset; `what` names the file in messages. The
    caller closes the result. Missing paths, folders and unreadable files are a FileFormatError.
    """
    path = Path(path)
    if not path.exists():
        raise FileFormatError(f"{what} {path} does not exist", "check the path")
    if path.is_dir():
        raise FileFormatError(f"{path} is a directory, not a file", f"give the path of a {what}")
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


def check_tree(h5: h5py.File, path: str | os.PathLike) -> None:
    """Refuse (FileFormatError) a file that breaks the reader policy (see the module docstring)."""
    file_bytes = os.path.getsize(path)
    allocated = [0]
    seen: set[int] = set()
    try:
        _check_object(h5, "/", path, seen, allocated, file_bytes)
    except FileFormatError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise FileFormatError(f"{path} could not be read: {exc}", _FIX) from None
    if allocated[0] > file_bytes:
        raise FileFormatError(
            f"{path}: its datasets claim {allocated[0]} stored bytes but the file has {file_bytes} (chunks alias "
            "each other: a crafted file)", _FIX)


def _refuse(path, name: str, problem: str) -> FileFormatError:
    return FileFormatError(f"{path}: {name} {problem}", _FIX)


def _check_object(obj, name: str, path, seen: set[int], allocated: list[int], file_bytes: int) -> None:
    address = h5py.h5o.get_info(obj.id).addr
    if address in seen:
        raise _refuse(path, name, "is a second link to an object already in the file (ddkit files are trees)")
    seen.add(address)
    _check_attrs(obj, name, path)
    if isinstance(obj, h5py.Dataset):
        allocated[0] += _check_dataset(obj, name, path, file_bytes)
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
        _check_object(obj[child], child_name, path, seen, allocated, file_bytes)


def _check_attrs(obj, name: str, path) -> None:
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
