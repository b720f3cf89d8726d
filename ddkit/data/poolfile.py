"""The unlabeled image pool file (`.pool.h5`): its writer, its reader and the `pool:PATH` dataset.

Pools are web-style sample pools for selectors such as KD³. Building one from datasets,
deduplicating it and scoring it with a teacher live in `ddkit.pools`; this module only knows the
file, so loading a pool needs no model, index or store code.

A pool is a chunked HDF5 file of uint8 images with stable sample ids and a fingerprint (sha256 of
the ids and the pixels). It is made for one *task* (a registered dataset: class names, image shape,
normalization), so a teacher of that task can score it, but it carries no training labels: any
labels its sources had (and where each sample came from) are kept aside under `/aside` for analysis
only. Loading a pool as a dataset (`load_dataset("pool:PATH")`, or `load_pool`) gives an
`ImageDataset` whose labels are a constant placeholder, so nothing downstream can train on or
select with the aside labels by accident; `read_aside` is the one way to read them. A pool whose
pixels exceed the memory limit loads as a `StreamedPoolDataset` (rows read from the file on
demand, `PoolReader`) with the same ids, id hash and fingerprint; the fingerprint has one
definition (`PoolHasher`), fed in row blocks by the writer and the checks alike.

Layout: root attrs `format="ddkit.pool"`, `schema`, `name`, `task` (DatasetInfo JSON of the task),
`fingerprint`, `size`, `origins` (JSON list of origin names), `provenance` (JSON), `created`,
`ddkit_version`; datasets `/images` (N×C×H×W uint8, chunked by rows, gzip), `/ids` (int64, unique),
`/aside/labels` (int64, −1 unknown), `/aside/origin` (int16 index into `origins`), `/aside/source_ids`
(int64 row in the source, −1 unknown); `ddkit pool dedup` adds `/dedup/*` (what it dropped and why).
The pool's split for selection is "train"; its "test" split is the task dataset's test split (the
set the pool's students are evaluated on).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import h5py
import numpy as np
import torch

from ddkit.data.base import DatasetInfo, ImageDataset
from ddkit.data.stream import StreamedImageDataset, should_stream
from ddkit.errors import DdkitError, FileFormatError, InvalidInput
from ddkit.fileio import atomic_output, attr_text, open_checked_h5
from ddkit.h5safe import open_hdf5
from ddkit.provenance import Stamp

POOL_FORMAT = "ddkit.pool"
POOL_SCHEMA = 1
DEFAULT_CHUNK_ROWS = 1024
CHUNK_BYTES = 4 << 20  # at most this much uint8 per HDF5 chunk (fewer rows for large images)
HASH_BLOCK_BYTES = 64 << 20  # rows hashed per block (bounded memory whatever the pool's size)
READ_CACHE_BYTES = 16 << 20  # HDF5 chunk cache of a streamed pool reader (per process; > a few chunks)


@dataclass
class PoolSummary:
    path: str
    name: str
    size: int
    fingerprint: str
    origins: dict = field(default_factory=dict)  # origin -> count


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    if images.dtype == torch.uint8:
        return images
    return (images.float().clamp(0, 1) * 255.0).round().to(torch.uint8)


class PoolHasher:
    """The pool fingerprint computed as the pixels go by: sha256 of the format, the id list, the
    images' shape and their uint8 bytes in row order. Fed whole or in row blocks of any size, it
    gives the same digest, so the in-memory and the streamed paths share one definition."""

    def __init__(self, ids: np.ndarray, shape: tuple):
        self.h = hashlib.sha256(f"{POOL_FORMAT}/{POOL_SCHEMA}|".encode())
        self.h.update(np.ascontiguousarray(ids, dtype="<i8").tobytes())
        self.h.update(f"{tuple(int(s) for s in shape)}|uint8|".encode())

    def update(self, block) -> None:
        block = block.numpy() if isinstance(block, torch.Tensor) else np.asarray(block)
        self.h.update(np.ascontiguousarray(block, dtype=np.uint8).tobytes())

    def hexdigest(self) -> str:
        return self.h.hexdigest()


def block_rows(image_shape, rows: int = DEFAULT_CHUNK_ROWS * 16, max_bytes: int = HASH_BLOCK_BYTES) -> int:
    """Rows per block: at most `rows`, and at most `max_bytes` of uint8 pixels (large images)."""
    return max(1, min(rows, max_bytes // max(1, int(np.prod(image_shape)))))


def pool_fingerprint(ids: np.ndarray, images) -> str:
    """sha256 of the id list and the pixels (read in row blocks; `images` may be an h5py dataset)."""
    h = PoolHasher(ids, images.shape)
    step = block_rows(images.shape[1:])
    for start in range(0, int(images.shape[0]), step):
        h.update(images[start : start + step])
    return h.hexdigest()


def write_pool(out: str | os.PathLike, images: torch.Tensor, ids: np.ndarray, task: DatasetInfo, name: str,
               aside: dict[str, np.ndarray], origins: list[str], provenance: dict | None = None,
               extra_groups: dict[str, tuple[dict, dict]] | None = None, overwrite: bool = False,
               chunk_rows: int = DEFAULT_CHUNK_ROWS) -> PoolSummary:
    """Write a pool file atomically from images in memory (see `write_pool_blocks`)."""
    images = to_uint8(images)
    if len(ids) != len(images):
        raise InvalidInput(f"{len(images)} images but {len(ids)} ids")
    step = block_rows(images.shape[1:])
    blocks = (images[s : s + step] for s in range(0, len(images), step))
    return write_pool_blocks(out, blocks, tuple(images.shape[1:]), ids, task, name, aside, origins, provenance,
                             extra_groups, overwrite, chunk_rows)


def write_pool_blocks(out: str | os.PathLike, blocks: Iterable[torch.Tensor], image_shape: tuple, ids: np.ndarray,
                      task: DatasetInfo, name: str, aside: dict[str, np.ndarray], origins: list[str],
                      provenance: dict | None = None, extra_groups: dict[str, tuple[dict, dict]] | None = None,
                      overwrite: bool = False, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> PoolSummary:
    """Write a pool file atomically, its images arriving as row blocks (uint8, or floats in [0, 1]):
    the one writer used by `ddkit.pools.build_pool` and `dedup_pool`. Memory holds one block at a
    time; the fingerprint is computed as the blocks are written. `ids` gives the row count: the
    blocks must add up to exactly that many rows, or nothing is written."""
    ids = np.asarray(ids, dtype=np.int64)
    n, image_shape = len(ids), tuple(int(s) for s in image_shape)
    if n == 0:
        raise InvalidInput("the pool would be empty", "give at least one image")
    if len(np.unique(ids)) != n:
        raise InvalidInput("pool ids must be unique")
    hasher = PoolHasher(ids, (n, *image_shape))
    with atomic_output(out, overwrite) as tmp:
        with h5py.File(tmp, "w") as h5:
            rows = max(1, min(chunk_rows, block_rows(image_shape, chunk_rows, CHUNK_BYTES), n))
            images = h5.create_dataset("images", shape=(n, *image_shape), dtype=np.uint8,
                                       chunks=(rows, *image_shape), compression="gzip", compression_opts=1,
                                       shuffle=True)
            at = 0
            for block in blocks:
                block = to_uint8(torch.as_tensor(block))
                if tuple(block.shape[1:]) != image_shape or at + len(block) > n:
                    raise InvalidInput(f"pool images: a block of shape {tuple(block.shape)} at row {at} does not "
                                       f"fit {n} images of {image_shape}")
                images[at : at + len(block)] = block.numpy()
                hasher.update(block)
                at += len(block)
            if at != n:
                raise InvalidInput(f"{at} images but {n} ids")
            h5.create_dataset("ids", data=ids)
            group = h5.create_group("aside")
            for key, value in aside.items():
                group.create_dataset(key, data=np.asarray(value))
            for gname, (attrs, arrays) in (extra_groups or {}).items():
                g = h5.create_group(gname)
                for key, value in arrays.items():
                    g.create_dataset(key, data=np.asarray(value))
                for key, value in attrs.items():
                    g.attrs[key] = json.dumps(value)
            fingerprint = hasher.hexdigest()
            h5.attrs.update({
                "format": POOL_FORMAT, "schema": POOL_SCHEMA, "name": name, "task": json.dumps(task.to_dict()),
                "fingerprint": fingerprint, "size": n, "origins": json.dumps(list(origins)),
                "provenance": json.dumps(provenance or {}), **Stamp().to_dict(),
            })
    counts = np.bincount(np.asarray(aside["origin"], dtype=np.int64), minlength=len(origins))
    return PoolSummary(str(out), name, n, fingerprint, {o: int(c) for o, c in zip(origins, counts)})


def open_pool(path: str | os.PathLike, cache_bytes: int | None = None) -> h5py.File:
    """The pool file opened read-only, its format and schema checked (the caller closes it).

    `cache_bytes`: HDF5 chunk cache per dataset; row blocks smaller than a chunk then decompress
    each chunk once instead of once per block.
    """
    return open_checked_h5(path, fmt=POOL_FORMAT, schema=POOL_SCHEMA, kind="pool",
                           remedy="build one with `ddkit pool build`", cache_bytes=cache_bytes)


class PoolReader:
    """Rows of a pool file's /images for `StreamedImageDataset` (picklable: the file is opened once
    per process, with a chunk cache, so a run of batches decompresses each chunk once)."""

    def __init__(self, path: str, n: int, shape: tuple):
        self.path, self.n, self.shape = path, n, tuple(shape)
        self._file, self._pid = None, None

    def __len__(self) -> int:
        return self.n

    def __getstate__(self):
        return {"path": self.path, "n": self.n, "shape": self.shape, "_file": None, "_pid": None}

    def read(self, rows: np.ndarray) -> torch.Tensor:
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = open_pool(self.path, cache_bytes=READ_CACHE_BYTES), os.getpid()
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return torch.zeros((0, *self.shape), dtype=torch.uint8)
        order = np.argsort(rows, kind="stable")
        unique, inverse = np.unique(rows[order], return_inverse=True)
        if unique[-1] - unique[0] + 1 == len(unique):  # a run of rows: one slice, not a point selection
            block = self._file["images"][int(unique[0]) : int(unique[-1]) + 1]
        else:
            block = self._file["images"][unique]  # h5py wants increasing indices
        out = np.empty((len(rows), *self.shape), dtype=np.uint8)
        out[order] = block[inverse]
        return torch.from_numpy(out)


class _PoolIdentity:
    """What makes a dataset a pool, shared by the in-memory and the streamed pool: placeholder
    labels (`labeled = False`), ids hashed with the pool's name, and the fingerprint stored in the
    file (checked against the pixels when loaded) for the whole pool."""

    labeled = False
    pool_name: str
    path: str
    _pool_fingerprint: str

    def ids_sha256(self) -> str:
        return pool_ids_sha256(self.pool_name, self.ids.numpy())

    def fingerprint(self) -> str:
        return self._pool_fingerprint


class PoolDataset(_PoolIdentity, ImageDataset):
    """A pool in memory as an ImageDataset: placeholder labels (all 0), the pool's stored fingerprint."""

    def __init__(self, info: DatasetInfo, images: torch.Tensor, ids: torch.Tensor, fingerprint: str, pool_name: str,
                 path: str):
        placeholder = torch.zeros(len(images), dtype=torch.long)
        super().__init__(info, "train", images, placeholder, ids, source=f"pool {pool_name} ({path})")
        self.pool_name = pool_name
        self.path = path
        self._pool_fingerprint = fingerprint


class StreamedPoolDataset(_PoolIdentity, StreamedImageDataset):
    """A pool too large for memory: the same samples, ids and fingerprint as `PoolDataset`, its
    pixels read from the file on demand (`ddkit.data.stream`). A subset is a plain streamed dataset,
    as a subset of `PoolDataset` is a plain `ImageDataset`."""

    def __init__(self, info: DatasetInfo, reader: PoolReader, ids: torch.Tensor, fingerprint: str, pool_name: str,
                 path: str):
        placeholder = torch.zeros(len(reader), dtype=torch.long)
        super().__init__(info, "train", reader, placeholder, ids, source=f"pool {pool_name} ({path})",
                         base_fingerprint=fingerprint)
        self.pool_name = pool_name
        self.path = path
        self._pool_fingerprint = fingerprint


def pool_ids_sha256(pool_name: str, ids: np.ndarray) -> str:
    """Hash of a pool's name and id list (`PoolDataset.ids_sha256`, also computable without the pixels)."""
    h = hashlib.sha256(f"{POOL_FORMAT}/{pool_name}/".encode())
    h.update(np.ascontiguousarray(ids, dtype="<i8").tobytes())
    return h.hexdigest()


def load_pool(path: str | os.PathLike, verify: bool = True,
              stream: bool | None = None) -> PoolDataset | StreamedPoolDataset:
    """The pool as a dataset named `pool:PATH` (absolute path): in memory, or streamed from the file
    when its pixels exceed the memory limit (`ddkit.data.stream.should_stream`) or `stream` says so
    (a single pass in batches, e.g. scoring, never needs the pixels whole).

    With `verify`, the fingerprint is recomputed from the ids and pixels (in row blocks when
    streamed) and must match the header.
    """
    path = Path(path).resolve()
    with open_pool(path) as h5:  # read whole or in whole-chunk blocks: no chunk cache needed
        try:
            task = DatasetInfo.from_dict(json.loads(h5.attrs["task"]))
            ids = h5["ids"][()]
            stored = attr_text(h5.attrs["fingerprint"])
            name = attr_text(h5.attrs["name"])
            shape = tuple(h5["images"].shape)
            if shape != (len(ids), *task.image_shape) or h5["images"].dtype != np.uint8:
                raise ValueError(f"/images is {h5['images'].dtype} {shape} for {len(ids)} ids of {task.image_shape}")
            streamed = should_stream(len(ids), task.image_shape) if stream is None else stream
            images = h5["images"] if streamed else torch.from_numpy(h5["images"][()])
            if verify and pool_fingerprint(ids, images) != stored:
                raise FileFormatError(f"{path}: the pool's ids or pixels do not match its fingerprint (changed or "
                                      "corrupted)", "rebuild the pool; selections made on it cannot be trusted")
        except (KeyError, ValueError, OSError) as exc:
            raise FileFormatError(f"{path}: damaged pool file ({exc})", "rebuild it with `ddkit pool build`") from None
    info = DatasetInfo(f"pool:{path}", task.class_names, task.image_shape, task.normalization)
    ids_t = torch.from_numpy(ids.astype(np.int64))
    if streamed:
        return StreamedPoolDataset(info, PoolReader(str(path), len(ids), task.image_shape), ids_t, stored, name,
                                   str(path))
    return PoolDataset(info, images, ids_t, stored, name, str(path))


def pool_task(path: str | os.PathLike) -> DatasetInfo:
    with open_pool(path) as h5:
        return DatasetInfo.from_dict(json.loads(h5.attrs["task"]))


def read_aside(path: str | os.PathLike) -> dict:
    """The analysis-only side data: `ids`, `labels` (−1 unknown), `origin` (names per sample),
    `source_ids`, and the `origins` list. Never used by training or selection."""
    with open_pool(path) as h5:
        origins = json.loads(h5.attrs["origins"])
        out = {key: h5["aside"][key][()] for key in h5["aside"]}
        out["ids"] = h5["ids"][()]
        out["origins"] = origins
        out["origin_name"] = np.array(origins, dtype=object)[out["origin"].astype(np.int64)] if len(origins) else None
    return out


def read_dedup_record(path: str | os.PathLike) -> dict | None:
    """What `ddkit pool dedup` dropped (arrays and the report), or None for a pool never deduplicated."""
    with open_pool(path) as h5:
        if "dedup" not in h5:
            return None
        g = h5["dedup"]
        out = {key: g[key][()] for key in g}
        out["report"] = json.loads(g.attrs["report"])
    return out


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def is_pool_file(path: str | os.PathLike) -> bool:
    """Whether `path` is a pool file, read without trusting it: only an unsealed HDF5 file (sealed
    ddkit files start with their seal, which the store checks before HDF5 parses a byte) is opened."""
    try:
        with open(path, "rb") as fh:
            if fh.read(len(_HDF5_SIGNATURE)) != _HDF5_SIGNATURE:
                return False
        with open_hdf5(path, what="pool file") as h5:  # the reader policy, the walk in a child first
            return attr_text(h5.attrs.get("format", "")) == POOL_FORMAT
    except (OSError, ValueError, DdkitError):
        return False


def record_pool_provenance(path: str | os.PathLike, key: str, record: dict) -> None:
    """Set `key` of the pool's provenance to `record` (the pixels, ids and fingerprint are unchanged),
    atomically: a copy is edited and renamed over the original."""
    path = Path(path)
    data = path.read_bytes()
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_bytes(data)
        with h5py.File(tmp, "r+") as h5:
            provenance = json.loads(attr_text(h5.attrs.get("provenance", "{}")))
            provenance[key] = record
            h5.attrs["provenance"] = json.dumps(provenance)
