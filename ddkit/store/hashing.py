"""The content hash of a ddkit HDF5 file, shared by the distilled and the selection file.

`content_sha256` covers every dataset's path, dtype, shape and bytes in sorted path order, and
nothing under `/results`: adding an evaluation card to a file does not change the identity of the
data it evaluates. Attributes are not covered (DESIGN §4 hashes "every dataset's bytes"); they
have their own `header_sha256` (every attribute outside `/results` but the two hashes), so an edited
or corrupted header (say, the normalization) is refused instead of silently trusted.
"""

from __future__ import annotations

import hashlib

import h5py
import numpy as np

EXCLUDED_GROUPS = ("results",)
HASH_ATTRS = ("content_sha256", "header_sha256")
_DOMAIN = b"ddkit.content.v1\0"
_BLOCK_BYTES = 16 << 20  # read big datasets in blocks of about this size


def stored_datasets(h5: h5py.Group) -> list[tuple[str, h5py.Dataset]]:
    """Every dataset in the file except those under `/results`, as (path, dataset), sorted by path."""
    found: list[tuple[str, h5py.Dataset]] = []

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Dataset) and name.split("/")[0] not in EXCLUDED_GROUPS:
            found.append((name, obj))

    h5.visititems(visit)
    return sorted(found, key=lambda item: item[0])


def iter_blocks(dataset: h5py.Dataset):
    """The dataset in blocks of whole rows of about 16 MiB, so big files hash and check in bounded memory."""
    if dataset.ndim == 0:
        yield np.asarray(dataset[()])
        return
    row_bytes = max(1, dataset.dtype.itemsize * int(np.prod(dataset.shape[1:], dtype=np.int64)))
    step = max(1, _BLOCK_BYTES // row_bytes)
    for start in range(0, dataset.shape[0], step):
        yield dataset[start : start + step]


def content_sha256(h5: h5py.Group) -> str:
    """Hex sha256 of the file's data; raises ValueError on a non-numeric dataset."""
    h = hashlib.sha256(_DOMAIN)
    for path, dataset in stored_datasets(h5):
        if dataset.dtype.kind not in "biuf":
            raise ValueError(f"dataset /{path} has unsupported dtype {dataset.dtype}")
        h.update(f"{path}\0{dataset.dtype.str}\0{tuple(dataset.shape)}\0".encode())
        for block in iter_blocks(dataset):
            h.update(np.ascontiguousarray(block).tobytes())
    return h.hexdigest()


def _attr_bytes(value) -> bytes:
    if isinstance(value, bytes):
        return b"b\0" + value
    if isinstance(value, str):
        return b"s\0" + value.encode("utf-8", "surrogatepass")
    array = np.asarray(value)
    if array.dtype.kind in "OSUV":
        return b"o\0" + repr(array.tolist()).encode("utf-8", "surrogatepass")
    return f"{array.dtype.str}\0{array.shape}\0".encode() + np.ascontiguousarray(array).tobytes()


def _header_objects(h5: h5py.Group) -> list[tuple[str, h5py.HLObject]]:
    objects = [("", h5)]
    h5.visititems(lambda name, obj: objects.append((name, obj)) if name.split("/")[0] not in EXCLUDED_GROUPS else None)
    return sorted(objects, key=lambda item: item[0])


def _header_hash(items) -> str:
    h = hashlib.sha256(b"ddkit.header.v1\0")
    for name, key, value in items:
        h.update(f"{name}\0{key}\0".encode())
        h.update(_attr_bytes(value))
    return h.hexdigest()


def header_sha256(h5: h5py.Group) -> str:
    """Hex sha256 of every attribute (root and groups, sorted) outside `/results`, except the hashes."""
    return _header_hash((name, key, obj.attrs[key]) for name, obj in _header_objects(h5) for key in sorted(obj.attrs)
                        if not (name == "" and key in HASH_ATTRS))


def header_attrs(h5: h5py.Group) -> dict[str, dict[str, str | int]] | None:
    """The attributes `header_sha256` covers, as JSON (object path, "" for the root -> {key: value}),
    from which `header_sha256_of` gives the same hash; None when one is neither a string nor an int64
    (ddkit writes no other kind). Exports carry it so a signature can be checked without the file."""
    out: dict[str, dict[str, str | int]] = {}
    for name, obj in _header_objects(h5):
        for key in sorted(obj.attrs):
            if name == "" and key in HASH_ATTRS:
                continue
            value = obj.attrs[key]
            if isinstance(value, str):
                out.setdefault(name, {})[key] = value
            elif isinstance(value, np.integer) and np.asarray(value).dtype.str == "<i8":
                out.setdefault(name, {})[key] = int(value)
            else:
                return None
    return out


def header_sha256_of(attrs: dict[str, dict[str, str | int]]) -> str:
    """`header_sha256` of a file whose attributes are `attrs` (as `header_attrs` gives them)."""
    items = []
    for name in sorted(attrs):
        for key in sorted(attrs[name]):
            value = attrs[name][key]
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise ValueError(f"header attribute {name}/{key} is a {type(value).__name__}, not a string or integer")
            items.append((name, key, value if isinstance(value, str) else np.int64(value)))
    return _header_hash(items)
