"""`ddkit.load(path)`: any ddkit training set as a torch dataset, in one call.

A `.ddk.h5` file (a path, an fsspec URL, or a folder written by `ddkit pack`) opens as a
`DistilledDataset`; a `.sel.h5` selection resolves against its pool into an `ImageDataset` of the kept
samples. Both yield `(normalized image, label)` like a torchvision dataset; remote files are
downloaded into $DDKIT_CACHE and verified before they are opened.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ddkit.errors import InvalidInput


def load(
    path: str | os.PathLike,
    labels: str = "hard",
    transform: Callable | None = None,
    target_transform: Callable | None = None,
    dataset: str | None = None,
    verify: bool | str = "auto",
):
    """The training set at `path` as a dataset: `DistilledDataset` for a distilled file (with
    `labels="soft"`, its stored soft labels), the selected pool samples for a `.sel.h5` (whose pool is
    loaded by its recorded name, or from `dataset` when the file names it by a path)."""
    from ddkit.share.pack import resolve_train_set
    from ddkit.store import DistilledDataset
    from ddkit.store.h5io import open_store
    from ddkit.store.schema import DISTILLED_FORMAT, SELECTION_FORMAT

    local, _ = resolve_train_set(os.fspath(path), [])
    h5, kind = open_store(local, (DISTILLED_FORMAT, SELECTION_FORMAT), verify=False)  # refuses any other file
    h5.close()
    if kind == DISTILLED_FORMAT:
        return DistilledDataset(local, transform, target_transform, verify=verify, labels=labels)
    if labels != "hard":
        raise InvalidInput(f"{path} is a selection of real samples: it has hard labels only", 'use labels="hard"')
    from ddkit.data import load_dataset
    from ddkit.store.selection import resolve_selection

    subset = resolve_selection(local, load_dataset(dataset, "train") if dataset else None)
    subset.transform, subset.target_transform = transform, target_transform
    return subset
