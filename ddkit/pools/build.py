"""Building a pool (`ddkit pool build`): images from several origins concatenated into one `.pool.h5`.

Each origin's labels and source rows go aside (see `ddkit.data.poolfile`); sample ids are the rows
in build order. Sources are read in batches (`ddkit.data.stream.iter_batches`, raw uint8) and
appended chunk by chunk, so a source larger than memory (a streamed image folder or pool) builds
with bounded memory, with the same file and fingerprint as the in-memory path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ddkit.data.base import DatasetInfo, ImageDataset, check_pixels
from ddkit.data.poolfile import DEFAULT_CHUNK_ROWS, PoolSummary, block_rows, write_pool_blocks
from ddkit.data.stream import iter_batches
from ddkit.errors import InvalidInput

BLOCK_ROWS = 2048  # rows read and written per block ...
BLOCK_BYTES = 32 << 20  # ... at most this much uint8 (large images: fewer rows)


@dataclass
class PoolPart:
    """Images from one origin (e.g. "fashion-mnist/train shifted", "digits", "noise").

    `images` N×C×H×W, uint8 or float in [0, 1] (float is rounded to uint8, as any web image is), or
    a dataset (`dataset_part`), whose pixels are read batch by batch when the pool is written, so a
    streamed source is never held whole; `labels` and `source_ids` are optional and only ever
    stored aside.
    """

    origin: str
    images: torch.Tensor | ImageDataset
    labels: torch.Tensor | None = None
    source_ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.images)


def _check_task_info(info: DatasetInfo, part: PoolPart) -> None:
    if isinstance(part.images, ImageDataset):
        if tuple(part.images.info.image_shape) != tuple(info.image_shape):
            raise InvalidInput(f"pool part {part.origin!r} has images of shape C×H×W = "
                               f"{tuple(part.images.info.image_shape)}, expected {tuple(info.image_shape)}",
                               "resize/convert the images to the dataset's shape")
    else:
        check_pixels(part.images, info.image_shape, f"pool part {part.origin!r}")
    n = len(part)
    for what, arr in (("labels", part.labels), ("source_ids", part.source_ids)):
        if arr is not None and (arr.ndim != 1 or len(arr) != n):
            raise InvalidInput(f"pool part {part.origin!r}: {what} has shape {tuple(arr.shape)}, expected ({n},)")


def _blocks(part: PoolPart, rows: int) -> Iterator[torch.Tensor]:
    """The part's pixels in row blocks (a dataset's decoded ahead in workers when it streams)."""
    if isinstance(part.images, ImageDataset):
        for batch in iter_batches(part.images, rows, normalized=False, raw=True):
            yield batch.x
    else:
        for start in range(0, len(part.images), rows):
            yield part.images[start : start + rows]


def build_pool(out: str | os.PathLike, parts: list[PoolPart], task: DatasetInfo, name: str | None = None,
               provenance: dict | None = None, overwrite: bool = False,
               chunk_rows: int = DEFAULT_CHUNK_ROWS) -> PoolSummary:
    """Concatenate `parts` into a pool for `task`; sample ids are the rows in build order (0..N−1).

    The parts are read and written block by block (memory holds a few blocks, whatever the size),
    and the fingerprint is computed on the way; the file appears under its name only when whole.
    """
    if not parts:
        raise InvalidInput("a pool needs at least one source", "pass --from DATASET (repeatable)")
    for part in parts:
        _check_task_info(task, part)
    origins = [p.origin for p in parts]
    if len(set(origins)) != len(origins):
        raise InvalidInput(f"origin names repeat: {origins}", "give each source its own origin name")
    n = sum(len(p) for p in parts)

    def fill(arr, k):
        return np.full(k, -1, np.int64) if arr is None else arr.numpy().astype(np.int64)

    aside = {
        "labels": np.concatenate([fill(p.labels, len(p)) for p in parts]),
        "source_ids": np.concatenate([fill(p.source_ids, len(p)) for p in parts]),
        "origin": np.concatenate([np.full(len(p), i, np.int16) for i, p in enumerate(parts)]),
    }
    rows = block_rows(task.image_shape, BLOCK_ROWS, BLOCK_BYTES)
    blocks = (block for part in parts for block in _blocks(part, rows))
    return write_pool_blocks(out, blocks, tuple(task.image_shape), np.arange(n, dtype=np.int64), task,
                             name or Path(out).name.split(".")[0], aside, origins, provenance, overwrite=overwrite,
                             chunk_rows=chunk_rows)


def dataset_part(dataset: ImageDataset, origin: str | None = None) -> PoolPart:
    """A registered dataset (in memory or streamed) as a pool part (its labels and ids go aside)."""
    return PoolPart(origin or f"{dataset.info.name}/{dataset.split}", dataset, dataset.labels, dataset.ids)
