"""Building a pool (`ddkit pool build`): images from several origins concatenated into one `.pool.h5`.

Each origin's labels and source rows go aside (see `ddkit.data.poolfile`); sample ids are the rows
in build order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddkit.data.base import DatasetInfo, ImageDataset, check_pixels
from ddkit.data.poolfile import DEFAULT_CHUNK_ROWS, PoolSummary, to_uint8, write_pool
from ddkit.errors import InvalidInput


@dataclass
class PoolPart:
    """Images from one origin (e.g. "fashion-mnist/train shifted", "digits", "noise").

    `images` N×C×H×W, uint8 or float in [0, 1] (float is rounded to uint8, as any web image is);
    `labels` and `source_ids` are optional and only ever stored aside.
    """

    origin: str
    images: torch.Tensor
    labels: torch.Tensor | None = None
    source_ids: torch.Tensor | None = None




def _check_task_info(info: DatasetInfo, part: PoolPart) -> None:
    check_pixels(part.images, info.image_shape, f"pool part {part.origin!r}")
    n = len(part.images)
    for what, arr in (("labels", part.labels), ("source_ids", part.source_ids)):
        if arr is not None and (arr.ndim != 1 or len(arr) != n):
            raise InvalidInput(f"pool part {part.origin!r}: {what} has shape {tuple(arr.shape)}, expected ({n},)")



def build_pool(out: str | os.PathLike, parts: list[PoolPart], task: DatasetInfo, name: str | None = None,
               provenance: dict | None = None, overwrite: bool = False,
               chunk_rows: int = DEFAULT_CHUNK_ROWS) -> PoolSummary:
    """Concatenate `parts` into a pool for `task`; sample ids are the rows in build order (0..N−1)."""
    if not parts:
        raise InvalidInput("a pool needs at least one source", "pass --from DATASET (repeatable)")
    for part in parts:
        _check_task_info(task, part)
    origins = [p.origin for p in parts]
    if len(set(origins)) != len(origins):
        raise InvalidInput(f"origin names repeat: {origins}", "give each source its own origin name")
    images = torch.cat([to_uint8(p.images) for p in parts])
    n = len(images)

    def fill(arr, k):
        return np.full(k, -1, np.int64) if arr is None else arr.numpy().astype(np.int64)

    aside = {
        "labels": np.concatenate([fill(p.labels, len(p.images)) for p in parts]),
        "source_ids": np.concatenate([fill(p.source_ids, len(p.images)) for p in parts]),
        "origin": np.concatenate([np.full(len(p.images), i, np.int16) for i, p in enumerate(parts)]),
    }
    return write_pool(out, images, np.arange(n, dtype=np.int64), task, name or Path(out).name.split(".")[0], aside,
                      origins, provenance, overwrite=overwrite, chunk_rows=chunk_rows)



def dataset_part(dataset: ImageDataset, origin: str | None = None) -> PoolPart:
    """A registered dataset's images as a pool part (its labels and ids go aside)."""
    return PoolPart(origin or f"{dataset.info.name}/{dataset.split}", dataset.images, dataset.labels, dataset.ids)

