"""Datasets too large to hold in memory: rows read on demand and decoded in DataLoader workers.

A `StreamedImageDataset` has the interface of `ImageDataset` (labels, ids, `subset`,
`class_indices`, `pixels`, `normalized`, `fingerprint`) but keeps only the index in memory: its
pixels come from a *row reader* (image files through their manifest, or a pool file's chunks:
`ddkit.data.poolfile.PoolReader`).
Small reads (a few images per class, a batch) decode at once; whole passes go through
`iter_batches`, which decodes batches in worker processes ahead of the consumer, so memory is
bounded by a few batches whatever the dataset's size. A read that would materialize more than the
memory limit is refused with a clear message instead of exhausting the machine.

Which path a source takes is decided by its size against $DDKIT_MEMORY_LIMIT (bytes, default
512 MiB) and can be forced with $DDKIT_DATA_MODE=memory|stream (the CLI's `--data-mode`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from ddkit.data.base import DatasetInfo, ImageDataset, indexed_fingerprint
from ddkit.data.batch_decode import DecodePlan, bytes_tensor, check_decoded_shape, decode_files, decode_plan
from ddkit.data.decode import FolderFit, decode_image
from ddkit.data.manifest import PathTable, stream_workers
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
    """Rows of an indexed image folder: each decoded (and fitted) from its file, by `backend`
    ("pil" or "torchvision", `ddkit.data.batch_decode`); `read_encoded` + `decode` split the work
    for the GPU path (workers read bytes, the consumer decodes the batch on its device)."""

    def __init__(self, root: str, paths: PathTable, sizes: np.ndarray, shape: tuple, fit: FolderFit | None,
                 backend: str = "pil"):
        self.root, self.paths, self.sizes, self.shape, self.fit = root, paths, sizes, tuple(shape), fit
        self.backend = backend

    def __len__(self) -> int:
        return len(self.paths)

    def with_backend(self, backend: str) -> "FolderReader":
        return self if backend == self.backend else FolderReader(self.root, self.paths, self.sizes, self.shape,
                                                                 self.fit, backend)

    def read_encoded(self, rows: np.ndarray) -> list[torch.Tensor]:
        """Each row's file bytes as a uint8 1-D tensor, checked against the indexed size (no decoding)."""
        out = []
        for row in np.asarray(rows).tolist():
            path = os.path.join(self.root, self.paths[row])
            try:
                with open(path, "rb") as fh:
                    data = fh.read()
                if len(data) != self.sizes[row]:
                    raise FileFormatError("it changed size since the folder was indexed")
            except (OSError, FileFormatError) as exc:
                raise _changed(f"{path} cannot be read as it was indexed ({getattr(exc, 'problem', None) or exc})") \
                    from None
            out.append(bytes_tensor(data))
        return out

    def decode(self, rows: np.ndarray, encoded: list[torch.Tensor], device: torch.device | str = "cpu",
               backend: str | None = None) -> torch.Tensor:
        """uint8 N×C×H×W of the rows' bytes (from `read_encoded`), decoded by `backend` (default the
        reader's) and left on `device` (PIL decodes on the CPU, torchvision on `device`)."""
        backend = backend or self.backend
        paths = [os.path.join(self.root, self.paths[row]) for row in np.asarray(rows).tolist()]
        try:
            if backend == "torchvision":
                return decode_files(encoded, paths, self.shape, self.fit, device)
            out = np.empty((len(paths), *self.shape), dtype=np.uint8)
            for k, (path, data) in enumerate(zip(paths, encoded)):
                array = decode_image(path, self.fit, data.numpy().tobytes())
                check_decoded_shape(path, array.shape, self.shape)
                out[k] = array
        except (FileFormatError, InvalidInput) as exc:
            raise _changed(exc.problem) from None
        return torch.from_numpy(out).to(device)

    def read(self, rows: np.ndarray) -> torch.Tensor:
        return self.decode(rows, self.read_encoded(rows))


def _changed(problem: str) -> FileFormatError:
    """A file of an indexed folder no longer reads as it was indexed."""
    return FileFormatError(f"{problem}: the folder changed during the run",
                           "leave the folder unchanged while ddkit reads it; the next run re-indexes it")


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

    def _check_read(self, n: int) -> None:
        """Refuse to hold `n` images at once when they would exceed the memory limit."""
        nbytes = n * int(np.prod(self.info.image_shape))
        if nbytes > memory_limit():
            raise InvalidInput(
                f"reading {n} images of {self.info.name} at once would take {nbytes / 2**30:.2f} GiB, over the "
                f"memory limit ({memory_limit() / 2**30:.2f} GiB): this pass does not stream",
                "raise DDKIT_MEMORY_LIMIT if the machine has the memory, or use a smaller subset",
            )

    def raw(self, index=slice(None)) -> torch.Tensor:
        """uint8 pixels of `index`, decoded now; refused when they would exceed the memory limit."""
        rows = self._positions(index)
        self._check_read(len(rows))
        x = self.reader.read(rows)
        return x[0] if isinstance(index, (int, np.integer)) else x

    def pixels(self, index=slice(None)) -> torch.Tensor:
        return self.raw(index).float().div_(255.0)

    def subset(self, indices) -> "StreamedImageDataset":
        idx = np.asarray(indices, dtype=np.int64)
        t = torch.as_tensor(idx, dtype=torch.long)
        return StreamedImageDataset(self.info, self.split, self.reader, self.labels[t], self.ids[t], self.rows[idx],
                                    self.transform, self.target_transform, self.source, self.base_fingerprint)

    def materialize(self, batch_size: int = 512) -> ImageDataset:
        """The same samples held in memory (refused above the memory limit), decoded `batch_size` at a time
        by the workers (a smaller batch spreads a small read over more of them)."""
        self._check_read(len(self))
        batches = [b.x for b in iter_batches(self, batch_size, normalized=False, raw=True)]
        images = torch.cat(batches) if batches else torch.zeros((0, *self.info.image_shape), dtype=torch.uint8)
        out = ImageDataset(self.info, self.split, images, self.labels, self.ids, self.transform,
                           self.target_transform, self.source)
        if self.base_fingerprint and np.array_equal(self.rows, self.ids.numpy()):
            out.indexed_content = (self.base_fingerprint, len(self.reader))
        return out

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = indexed_fingerprint(self.ids_sha256(), self.base_fingerprint, len(self.reader),
                                                    self.rows, self.labels)
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
    """Worker task: one batch of reader rows → uint8 pixels (`encoded`: → the files' bytes, undecoded)."""

    def __init__(self, reader, encoded: bool = False):
        self.reader, self.encoded = reader, encoded

    def __getitem__(self, rows: np.ndarray):
        return (rows, self.reader.read_encoded(rows)) if self.encoded else self.reader.read(rows)


def _identity(x):
    return x


def read_rows(reader, row_batches: Iterable[np.ndarray], workers: int | None = None, pin: bool = False,
              device: torch.device | str | None = None, plan: DecodePlan | None = None) -> Iterator[torch.Tensor]:
    """uint8 pixels of each row batch, in order, decoded a few batches ahead.

    By default (and for any reader but an image folder's) `workers` processes decode and the batches
    come back on the CPU. An image folder decodes as `plan` says (default: `decode_plan(device)`,
    from $DDKIT_DECODE): when it names a device, the workers only read the files' bytes and each
    batch is decoded here, at once, on that device — then it is left on `device` (the CPU when None).
    """
    workers = stream_workers() if workers is None else workers
    encoded = False
    if isinstance(reader, FolderReader):
        plan = plan or decode_plan(device)
        reader, encoded = reader.with_backend(plan.backend), plan.device is not None
        if plan.backend == "torchvision":  # imported here, not in each worker: seconds apiece before its first batch
            import torchvision.io  # noqa: F401
    loader = torch.utils.data.DataLoader(_ReadRows(reader, encoded), sampler=row_batches, batch_size=None,
                                         num_workers=workers, collate_fn=_identity, pin_memory=pin and not encoded,
                                         prefetch_factor=2 if workers else None)
    if not encoded:
        yield from loader
        return
    target = torch.device(device) if device is not None else torch.device("cpu")
    for rows, data in loader:
        yield reader.decode(rows, data, plan.device).to(target, non_blocking=True)


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
                           workers if len(chunks) > 1 else 0, pin=device is not None and device.type == "cuda",
                           device=device)
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
        for x in read_rows(self.dataset.reader, rows, pin=self.device.type == "cuda", device=self.device):
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
