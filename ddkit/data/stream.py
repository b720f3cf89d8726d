"""Datasets too large to hold in memory: rows read on demand and decoded in DataLoader workers.

A `StreamedImageDataset` has the interface of `ImageDataset` (labels, ids, `subset`,
`class_indices`, `pixels`, `normalized`, `fingerprint`) but keeps only the index in memory: its
pixels come from a *row reader* (image files through their manifest, or a pool file's chunks).
Small reads (a few images per class, a batch) decode at once; whole passes go through
`iter_batches`, which decodes batches in worker processes ahead of the consumer, so memory is
bounded by a few batches whatever the dataset's size. A read that would materialize more than the
memory limit is refused with a clear message instead of exhausting the machine.

Which path a source takes is decided by its size against $DDKIT_MEMORY_LIMIT (bytes, default
512 MiB) and can be forced with $DDKIT_DATA_MODE=memory|stream (the CLI's `--data-mode`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from ddkit.data.base import DatasetInfo, ImageDataset
from ddkit.data.decode import FolderFit, decode_image
from ddkit.data.manifest import stream_workers
from ddkit.errors import FileFormatError, InvalidInput

DATA_MODES = ("auto", "memory", "stream")
DEFAULT_MEMORY_LIMIT = 512 << 20


def data_mode() -> str:
    mode = os.environ.get("DDKIT_DATA_MODE", "auto").strip() or "auto"
    if mode not in DATA_MODES:
        raise InvalidInput(f"DDKIT_DATA_MODE={mode!r} is not a data mode", f"use one of {', '.join(DATA_MODES)}")
    return mode


def memory_limit() -> int:
    value = os.environ.get("DDKIT_MEMORY_LIMIT", "").strip()
    if not value:
        return DEFAULT_MEMORY_LIMIT
    if not value.isdigit() or int(value) < 1:
        raise InvalidInput(f"DDKIT_MEMORY_LIMIT={value!r} is not a byte count", "set it to a positive integer")
    return int(value)


def should_stream(n: int, image_shape) -> bool:
    """Whether a source of `n` uint8 images of `image_shape` is streamed (see the module docstring)."""
    mode = data_mode()
    if mode != "auto":
        return mode == "stream"
    return n * int(np.prod(image_shape)) > memory_limit()


# -- row readers (picklable: they travel to the worker processes) ------------------------------------
class FolderReader:
    """Rows of an indexed image folder: each decoded (and fitted) from its file."""

    def __init__(self, root: str, paths: np.ndarray, sizes: np.ndarray, shape: tuple, fit: FolderFit | None):
        self.root, self.paths, self.sizes, self.shape, self.fit = root, paths, sizes, tuple(shape), fit

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, rows: np.ndarray) -> torch.Tensor:
        out = np.empty((len(rows), *self.shape), dtype=np.uint8)
        for k, row in enumerate(np.asarray(rows).tolist()):
            path = os.path.join(self.root, self.paths[row])
            try:
                if os.path.getsize(path) != self.sizes[row]:
                    raise FileFormatError(f"{path} changed size since the folder was indexed")
                array = decode_image(path, self.fit)
            except (OSError, FileFormatError) as exc:
                raise FileFormatError(
                    f"{path} cannot be read as it was indexed ({getattr(exc, 'problem', None) or exc}): the folder "
                    "changed during the run",
                    "leave the folder unchanged while ddkit reads it; the next run re-indexes it") from None
            if array.shape != self.shape:
                raise FileFormatError(f"{path} is now {array.shape}, indexed as {self.shape}: the folder changed",
                                      "leave the folder unchanged while ddkit reads it; the next run re-indexes it")
            out[k] = array
        return torch.from_numpy(out)


class PoolReader:
    """Rows of a pool file's /images, read chunk-wise (the file is opened once per process)."""

    def __init__(self, path: str, n: int, shape: tuple):
        self.path, self.n, self.shape = path, n, tuple(shape)
        self._file, self._pid = None, None

    def __len__(self) -> int:
        return self.n

    def __getstate__(self):
        return {"path": self.path, "n": self.n, "shape": self.shape, "_file": None, "_pid": None}

    def read(self, rows: np.ndarray) -> torch.Tensor:
        from ddkit.data.poolfile import open_pool

        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = open_pool(self.path), os.getpid()
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return torch.zeros((0, *self.shape), dtype=torch.uint8)
        order = np.argsort(rows, kind="stable")
        unique, inverse = np.unique(rows[order], return_inverse=True)
        block = self._file["images"][unique]  # h5py wants increasing indices
        out = np.empty((len(rows), *self.shape), dtype=np.uint8)
        out[order] = block[inverse]
        return torch.from_numpy(out)


# -- the dataset ------------------------------------------------------------------------------
class LazyImages:
    """`dataset.images` of a streamed dataset: indexable like the in-memory uint8 tensor."""

    dtype = torch.uint8
    ndim = 4

    def __init__(self, dataset: "StreamedImageDataset"):
        self._ds = dataset

    def __len__(self) -> int:
        return len(self._ds)

    @property
    def shape(self) -> tuple:
        return (len(self._ds), *self._ds.info.image_shape)

    def __getitem__(self, index) -> torch.Tensor:
        return self._ds.raw(index)

    def element_size(self) -> int:
        return 1

    def numel(self) -> int:
        return int(np.prod(self.shape))


class StreamedImageDataset(ImageDataset):
    """An `ImageDataset` whose pixels are read on demand (see the module docstring).

    `rows` are positions in the reader; `base_fingerprint` identifies the reader's content (the
    manifest's or the pool's fingerprint), combined with the id list for subsets.
    """

    streamed = True

    def __init__(self, info: DatasetInfo, split: str, reader, labels: torch.Tensor, ids: torch.Tensor | None = None,
                 rows: np.ndarray | None = None, transform: Callable | None = None,
                 target_transform: Callable | None = None, source: str = "", base_fingerprint: str = ""):
        n = len(reader) if rows is None else len(rows)
        if labels.ndim != 1 or len(labels) != n:
            raise InvalidInput(f"{n} rows but labels of shape {tuple(labels.shape)}", "one label per image")
        self.info, self.split, self.reader = info, split, reader
        self.rows = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        self.labels = labels.long()
        self.ids = torch.arange(n, dtype=torch.long) if ids is None else ids.long()
        self.transform, self.target_transform, self.source = transform, target_transform, source
        self.base_fingerprint = base_fingerprint
        self._fingerprint = None

    def __repr__(self) -> str:
        return super().__repr__().replace("ImageDataset", "StreamedImageDataset", 1)

    @property
    def images(self) -> LazyImages:
        return LazyImages(self)

    def _positions(self, index) -> np.ndarray:
        if isinstance(index, slice):
            return self.rows[index]
        if isinstance(index, (int, np.integer)):
            return self.rows[[int(index)]]
        return self.rows[np.asarray(torch.as_tensor(index).cpu(), dtype=np.int64)]

    def raw(self, index=slice(None)) -> torch.Tensor:
        """uint8 pixels of `index`, decoded now; refused when they would exceed the memory limit."""
        rows = self._positions(index)
        nbytes = len(rows) * int(np.prod(self.info.image_shape))
        if nbytes > memory_limit():
            raise InvalidInput(
                f"reading {len(rows)} images of {self.info.name} at once would take {nbytes / 2**30:.2f} GiB, over the "
                f"memory limit ({memory_limit() / 2**30:.2f} GiB): this pass does not stream",
                "raise DDKIT_MEMORY_LIMIT if the machine has the memory, or use a smaller subset",
            )
        x = self.reader.read(rows)
        return x[0] if isinstance(index, (int, np.integer)) else x

    def pixels(self, index=slice(None)) -> torch.Tensor:
        return self.raw(index).float().div_(255.0)

    def subset(self, indices) -> "StreamedImageDataset":
        idx = np.asarray(indices, dtype=np.int64)
        t = torch.as_tensor(idx, dtype=torch.long)
        return StreamedImageDataset(self.info, self.split, self.reader, self.labels[t], self.ids[t], self.rows[idx],
                                    self.transform, self.target_transform, self.source, self.base_fingerprint)

    def materialize(self) -> ImageDataset:
        """The same samples held in memory (refused above the memory limit)."""
        images = torch.cat([b.x for b in iter_batches(self, normalized=False, raw=True)]) if len(self) else \
            torch.zeros((0, *self.info.image_shape), dtype=torch.uint8)
        out = ImageDataset(self.info, self.split, images, self.labels, self.ids, self.transform,
                           self.target_transform, self.source)
        return out

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            h = hashlib.sha256(self.ids_sha256().encode())
            h.update(f"{self.base_fingerprint}/{len(self.reader)}".encode())
            h.update(self.rows.astype("<i8").tobytes())
            h.update(self.labels.numpy().astype("<i8").tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint


def is_streamed(dataset) -> bool:
    return isinstance(dataset, StreamedImageDataset)


# -- whole passes -------------------------------------------------------------------------------
@dataclass
class Batch:
    x: torch.Tensor  # normalized float32, or pixels in [0, 1], or raw uint8 (see iter_batches)
    y: torch.Tensor  # labels
    positions: torch.Tensor  # positions in the dataset


class _ReadRows:
    """Worker task: one batch of reader rows → uint8 pixels."""

    def __init__(self, reader):
        self.reader = reader

    def __getitem__(self, rows: np.ndarray) -> torch.Tensor:
        return self.reader.read(rows)


def _identity(x):
    return x


def read_rows(reader, row_batches: Iterable[np.ndarray], workers: int | None = None,
              pin: bool = False) -> Iterator[torch.Tensor]:
    """uint8 pixels of each row batch, in order, decoded by `workers` processes a few batches ahead."""
    workers = stream_workers() if workers is None else workers
    loader = torch.utils.data.DataLoader(_ReadRows(reader), sampler=row_batches, batch_size=None,
                                         num_workers=workers, collate_fn=_identity, pin_memory=pin,
                                         prefetch_factor=2 if workers else None)
    yield from loader


def iter_batches(dataset: ImageDataset, batch_size: int = 512, positions=None, *, normalized: bool = True,
                 raw: bool = False, device: torch.device | str | None = None,
                 workers: int | None = None) -> Iterator[Batch]:
    """The dataset (or its `positions`, in that order) in batches: the one way to make a whole pass.

    In memory it slices; streamed, batches are decoded in worker processes ahead of the consumer.
    `x` is normalized (default), pixels in [0, 1] (`normalized=False`), or uint8 (`raw=True`).
    """
    pos = torch.arange(len(dataset)) if positions is None else torch.as_tensor(np.asarray(positions), dtype=torch.long)
    chunks = [pos[i:i + batch_size] for i in range(0, len(pos), batch_size)]
    device = torch.device(device) if device is not None else None
    if is_streamed(dataset):
        source = read_rows(dataset.reader, [dataset.rows[c.numpy()] for c in chunks],
                           workers if len(chunks) > 1 else 0, pin=device is not None and device.type == "cuda")
    else:
        source = (dataset.images[c] for c in chunks)
    for c, x in zip(chunks, source):
        if not raw:
            x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        if device is not None:
            x = x.to(device, non_blocking=True)
        if normalized and not raw:
            x = dataset.info.normalization.apply(x)
        yield Batch(x, dataset.labels[c], c)


class StreamedViews:
    """Normalized images of a streamed dataset for a trainer: `views(index_batches)` yields each
    batch (in the given order) on `device`, decoded ahead in workers. Stands where trainers
    otherwise hold the whole normalized tensor."""

    def __init__(self, dataset: StreamedImageDataset, device: torch.device | str = "cpu"):
        self.dataset, self.device = dataset, torch.device(device)

    def __len__(self) -> int:
        return len(self.dataset)

    def to(self, device) -> "StreamedViews":
        return StreamedViews(self.dataset, device)

    def __getitem__(self, index) -> torch.Tensor:
        return self.dataset.normalized(index).to(self.device)

    def views(self, index_batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        rows = (self.dataset.rows[torch.as_tensor(i).cpu().numpy()] for i in index_batches)
        for x in read_rows(self.dataset.reader, rows, pin=self.device.type == "cuda"):
            x = x.to(self.device, non_blocking=True).float().div_(255.0)
            yield self.dataset.info.normalization.apply(x)


def batches_at(images, index_batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """`images[idx]` for each idx in order: direct for a tensor, prefetched for `StreamedViews`."""
    if isinstance(images, StreamedViews):
        yield from images.views(index_batches)
    else:
        for idx in index_batches:
            yield images[idx.to(images.device)]


def normalized_source(dataset: ImageDataset, device: torch.device | str = "cpu"):
    """What a trainer indexes: the whole normalized tensor on `device`, or `StreamedViews`."""
    return StreamedViews(dataset, device) if is_streamed(dataset) else dataset.normalized().to(device)
