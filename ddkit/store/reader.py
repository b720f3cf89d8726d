"""`DistilledDataset`: a `.ddk.h5` file as a torchvision-style dataset, read lazily.

Opening checks the file (format, schema, structure, and — for files under 256 MiB or when asked —
the content hash) and keeps only the small parts in memory: header, labels, composite or formation. Pixels are
read on demand through an HDF5 handle owned by the current process: h5py handles do not survive
fork, so a DataLoader worker notices the pid changed and opens its own, and pickling (spawned
workers) carries the path, never the handle.
"""

from __future__ import annotations

import contextlib
import operator
import os
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import torch

from ddkit.data.base import DatasetInfo, transformed_sample
from ddkit.errors import InvalidInput
from ddkit.store.composite import AdditiveComposite
from ddkit.store.formation import MultiFormation
from ddkit.store.h5io import open_h5, open_store, reading, should_verify, verify_content
from ddkit.store.meta import read_distilled_meta
from ddkit.store.payloads import LabelPayload, LogitsLabels, read_payload
from ddkit.store.results import read_results
from ddkit.store.schema import DISTILLED_FORMAT, Budget, DistilledHeader


def _positions(indices, n: int, what: str) -> np.ndarray:
    """`indices` (default: all of n) as int64 positions, negative ones counted from the end."""
    idx = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    idx = np.where(idx < 0, idx + n, idx)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise IndexError(f"{what} index out of range for {n} {what}s")
    return idx


def to_unit_float(array: np.ndarray) -> torch.Tensor:
    """Stored pixels (uint8 0..255 or float16/32 in [0, 1]) as float32 in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(array))
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


LABEL_KINDS = ("hard", "soft")
PER_INSTANCE_SCHEMES = ("logits", "topk")  # payloads with one target vector per instance, in this preference


class DistilledDataset(torch.utils.data.Dataset):
    """The training instances of a `.ddk.h5` file: `(transform(normalized image), target_transform(label))`.

    Instances are the stored images followed by the composite's composed images (if any), or, for
    a file with a formation, the decoded instances of each stored image in turn (`ddkit.store.formation`).
    `stored_pixels` reads the stored images themselves.
    `verify` is "auto" (recompute the content hash when the file is under 256 MiB), True or False.

    `labels="hard"` (default) yields each instance's class index; `labels="soft"` yields its stored
    soft label as a float32 vector over the classes: the `logits` payload's logits (what the `stored`
    protocols soften at their temperature), or the `topk` payload's k scores at their class indices
    and 0 elsewhere. `soft_scheme` picks one when a file stores both; a file without a per-instance
    payload (only hard labels, or NRR-DD's per-view `dbr` distances) is refused with the reason.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        verify: bool | str = "auto",
        labels: str = "hard",
        soft_scheme: str | None = None,
    ):
        if labels not in LABEL_KINDS:
            raise InvalidInput(f"labels={labels!r} is not one of {', '.join(LABEL_KINDS)}", 'use labels="hard" or labels="soft"')
        self.path = Path(path)
        self.transform = transform
        self.target_transform = target_transform
        self.label_kind = labels
        h5, _ = open_store(self.path, (DISTILLED_FORMAT,), verify)
        with h5:
            with reading(self.path):
                self._load_metadata(h5)
            if should_verify(self.path, verify):
                verify_content(h5, self.path)
        # Pixels are read through a handle opened on first use, by the process that uses it.
        self._handle: h5py.File | None = None
        self._pid = os.getpid()
        self._soft: dict[str, LabelPayload] | None = None
        self._targets: torch.Tensor | None = None
        self.soft_scheme = self._pick_soft_scheme(soft_scheme) if labels == "soft" else None

    def _pick_soft_scheme(self, asked: str | None) -> str:
        usable = [s for s in PER_INSTANCE_SCHEMES if s in self.soft_schemes]
        if asked is not None and asked not in usable:
            raise InvalidInput(f"{self.path} has no per-instance soft labels of scheme {asked!r} "
                               f"(it stores: {', '.join(self.soft_schemes) or 'hard labels only'})",
                               f"use soft_scheme one of {', '.join(usable)}" if usable else 'use labels="hard"')
        if not usable:
            why = ("its dbr payload holds teacher distances per replayed view, not a target per instance: train on it "
                   "with `ddkit evaluate --protocol dbr-cpu`") if "dbr" in self.soft_schemes else "it stores hard labels only"
            raise InvalidInput(f"{self.path} has no soft label per instance: {why}", 'use labels="hard"')
        return asked or usable[0]

    def _load_metadata(self, h5: h5py.File) -> None:
        meta = read_distilled_meta(h5, self.path)
        self.header: DistilledHeader = meta.header
        self.content_sha256: str = meta.content_sha256
        self.num_stored = meta.num_stored
        self.composite: AdditiveComposite | None = meta.composite
        self.formation: MultiFormation | None = meta.formation
        self.stored_labels: torch.Tensor = torch.from_numpy(meta.stored_labels)
        self.labels: torch.Tensor = torch.from_numpy(meta.labels)
        self.soft_schemes: list[str] = meta.soft_schemes

    # -- the per-process HDF5 handle -------------------------------------------------------------
    def _h5(self) -> h5py.File:
        if self._handle is None or self._pid != os.getpid():
            if self._handle is not None:  # inherited through fork: not ours to use
                with contextlib.suppress(Exception):
                    self._handle.close()
            self._handle = open_h5(self.path)
            self._pid = os.getpid()
        return self._handle

    def close(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = None

    def __enter__(self) -> DistilledDataset:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handle"] = None  # h5py handles cannot be pickled; workers open their own
        state["_soft"] = None  # re-read on demand rather than copied into every worker
        state["_targets"] = None
        return state

    # -- torchvision-style access ----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        i = operator.index(index)
        target = int(self.labels[i]) if self.label_kind == "hard" else self.soft_targets()[i]
        return transformed_sample(self.header.normalization.apply(self.pixels([i])[0]), target,
                                  self.transform, self.target_transform)

    def soft_targets(self) -> torch.Tensor:
        """The soft label of every instance (N × classes, float32) from `soft_scheme`'s payload."""
        if self._targets is None:
            payload = self.soft[self.soft_scheme or self._pick_soft_scheme(None)]
            if isinstance(payload, LogitsLabels):
                targets = torch.from_numpy(payload.values.astype(np.float32))
            else:  # top-k: the k scores at their class indices, 0 elsewhere
                targets = torch.zeros(len(self), self.num_classes)
                targets.scatter_(1, torch.from_numpy(payload.indices), torch.from_numpy(payload.values.astype(np.float32)))
            self._targets = targets
        return self._targets

    def __repr__(self) -> str:
        d = self.header.dataset
        stored = f"{self.num_stored} stored images"
        if self.composite is not None:
            stored += f" + {len(self.composite.compensators)} compensators"
        if self.formation is not None:
            stored += f", multi-formation factor {self.formation.factor}"
        lines = [
            f"DistilledDataset {self.header.method} {self.header.method_version}",
            f"    Number of datapoints: {len(self)} ({stored})",
            f"    Source: {d.info.name} ({d.split}), {d.info.num_classes} classes, image shape {tuple(d.info.image_shape)}",
            f"    Root location: {self.path}",
        ]
        if self.soft_schemes:
            lines.append(f"    Soft labels: {', '.join(self.soft_schemes)}")
        lines.append(f"    Targets: {self.label_kind}" + (f" ({self.soft_scheme})" if self.soft_scheme else ""))
        if self.transform is not None:
            lines.append(f"    Transform: {self.transform!r}")
        if self.target_transform is not None:
            lines.append(f"    Target transform: {self.target_transform!r}")
        return "\n".join(lines)

    # -- bulk access -----------------------------------------------------------------------------
    def pixels(self, indices=None) -> torch.Tensor:
        """Float32 pixels in [0, 1] of the instances at `indices` (default: all; composite expanded,
        formation decoded). Only the stored rows those instances come from are read."""
        idx = _positions(indices, len(self), "instance")
        if self.formation is not None:
            rows, cells = self.formation.split(idx)
            return self.formation.decode_cells(self._read_rows(rows), cells).clamp_(0.0, 1.0)
        rows, composed = idx.copy(), idx >= self.num_stored
        if composed.any():
            rows[composed], compensator_rows = self.composite.split(idx[composed] - self.num_stored)
        x = self._read_rows(rows)
        if composed.any():
            x[composed] = self.composite.compose(x[composed], compensator_rows)
        return x

    def stored_pixels(self, rows=None) -> torch.Tensor:
        """Float32 pixels in [0, 1] of the stored images at `rows` (default: all), not decoded."""
        return self._read_rows(_positions(rows, self.num_stored, "stored image"))

    def _read_rows(self, rows: np.ndarray) -> torch.Tensor:
        with reading(self.path):
            images = self._h5()["images"]
            if len(rows) == 0:
                return torch.empty((0, *images.shape[1:]))
            if len(rows) == 1:
                return to_unit_float(images[int(rows[0])][None])
            unique, inverse = np.unique(rows, return_inverse=True)
            # One sequential read beats h5py's point selection once a good share of rows is wanted.
            data = images[()][unique] if len(unique) * 4 > images.shape[0] else images[unique]
            return to_unit_float(data[inverse])

    @property
    def soft(self) -> dict[str, LabelPayload]:
        """The label payloads by scheme (read on first access)."""
        if self._soft is None:
            with reading(self.path):
                soft = {name: read_payload(self._h5()["soft"][name]) for name in self.soft_schemes}
                for payload in soft.values():
                    payload.check(len(self), self.header.num_classes)
            self._soft = soft
        return self._soft

    @property
    def results(self) -> dict[str, dict]:
        """Result cards by protocol, read from the file as it is now."""
        return read_results(self.path)

    @property
    def info(self) -> DatasetInfo:
        return self.header.info

    @property
    def budget(self) -> Budget:
        return self.header.budget

    @property
    def classes(self) -> list[str]:
        return list(self.header.dataset.info.class_names)

    @property
    def num_classes(self) -> int:
        return self.header.num_classes
