"""A dataset's images as uint8 rows: in memory for an in-memory dataset, else a temporary
uncompressed row file (`numpy.memmap`) read once, so passes and descriptor fits hold candidate
vectors in memory, never a streamed pool's pixels."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from ddkit.contamination.detector import as_uint8
from ddkit.data.base import ImageDataset
from ddkit.data.stream import is_streamed, iter_batches

QUERY_BLOCK = 4096  # images read (and queries matched) per block (a multiple of the detector's verification block)


@contextlib.contextmanager
def pixel_rows(dataset: ImageDataset, positions: np.ndarray, workdir: str | Path | None = None) -> Iterator[np.ndarray]:
    """The uint8 images of `positions`: in memory for an in-memory dataset, else a read-only
    `numpy.memmap` of an uncompressed temporary file under `workdir` (removed on exit)."""
    positions = np.asarray(positions, np.int64)
    if not is_streamed(dataset):
        yield as_uint8(dataset.images[positions])
        return
    shape = (len(positions), *dataset.info.image_shape)
    with tempfile.TemporaryDirectory(prefix="ddkit-rows-", dir=workdir) as tmp:
        path = Path(tmp) / "rows.u8"
        if len(positions):
            rows, at = np.memmap(path, np.uint8, "w+", shape=shape), 0
            for b in iter_batches(dataset, QUERY_BLOCK, positions, normalized=False, raw=True):
                rows[at : at + len(b.x)] = as_uint8(b.x)
                at += len(b.x)
            rows.flush()
            del rows
            yield np.memmap(path, np.uint8, "r", shape=shape)
        else:
            yield np.zeros(shape, np.uint8)
