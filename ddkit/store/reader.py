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
from ddkit.errors import FileFormatError
from ddkit.store.composite import AdditiveComposite, instance_labels, read_composite
from ddkit.store.distilled import IMAGE_DTYPES, check_labels, check_provenance
from ddkit.store.formation import FORMATION_SCHEMA, MultiFormation, instance_count, read_formation
from ddkit.store.h5io import DAMAGED_FIX, open_h5, open_store, reading, should_verify, verify_content
from ddkit.store.payloads import LabelPayload, read_payload
from ddkit.store.results import read_results
from ddkit.store.schema import DISTILLED_FORMAT, Budget, DistilledHeader, attr_text, decode_attrs


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


class DistilledDataset(torch.utils.data.Dataset):
    """The training instances of a `.ddk.h5` file: `(transform(normalized image), target_transform(label))`.

    Instances are the stored images followed by the composite's composed images (if any), or, for
    a file with a formation, the decoded instances of each stored image in turn (`ddkit.store.formation`).
    `stored_pixels` reads the stored images themselves.
    `verify` is "auto" (recompute the content hash when the file is under 256 MiB), True or False.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        verify: bool | str = "auto",
    ):
        self.path = Path(path)
        self.transform = transform
        self.target_transform = target_transform
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

    def _load_metadata(self, h5: h5py.File) -> None:
        self.header: DistilledHeader = DistilledHeader(**decode_attrs(DistilledHeader, h5.attrs))
        check_provenance(self.header.method, self.header.config, self.header.teachers)
        self.content_sha256: str = attr_text(h5.attrs["content_sha256"])
        for name in ("images", "labels"):
            if not isinstance(h5.get(name), h5py.Dataset):
                raise FileFormatError(f"{self.path} has no /{name} dataset", DAMAGED_FIX)
        images, labels = h5["images"], h5["labels"]
        shape = tuple(self.header.dataset.info.image_shape)
        if images.dtype.name not in IMAGE_DTYPES or images.ndim != 4 or images.shape[1:] != shape:
            raise FileFormatError(
                f"{self.path}: /images is {images.dtype} {images.shape}, expected float16/uint8 N×{'×'.join(map(str, shape))}",
                DAMAGED_FIX,
            )
        self.num_stored = images.shape[0]
        self.formation: MultiFormation | None = None
        if "formation" in h5:
            if int(h5.attrs["schema"]) < FORMATION_SCHEMA:
                raise FileFormatError(f"{self.path} has a /formation group but schema {int(h5.attrs['schema'])}", DAMAGED_FIX)
            self.formation = read_formation(h5["formation"], self.path)
            self.formation.check(shape)
            if "composite" in h5:
                raise FileFormatError(f"{self.path} has both a /composite and a /formation", DAMAGED_FIX)
        # Declared sizes against each other and the header before any array is read.
        if labels.shape != (self.num_stored,) or instance_count(self.num_stored, self.formation) > self.header.budget.instances:
            raise FileFormatError(
                f"{self.path}: /labels {labels.shape} and /images {images.shape} disagree with each other or with the "
                f"recorded {self.header.budget.instances} instances", DAMAGED_FIX)
        stored_labels = torch.from_numpy(labels[()])
        check_labels(stored_labels, self.header.num_classes, self.num_stored, "/labels")
        self.stored_labels: torch.Tensor = stored_labels.long()
        self.composite: AdditiveComposite | None = None
        if "composite" in h5:
            self.composite = read_composite(h5["composite"], self.path)
            self.composite.check(self.num_stored, shape)
        self.labels: torch.Tensor = (self.formation.labels(stored_labels) if self.formation is not None
                                     else instance_labels(stored_labels, self.composite))
        self.soft_schemes: list[str] = sorted(h5["soft"]) if "soft" in h5 else []

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
        return state

    # -- torchvision-style access ----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        i = operator.index(index)
        return transformed_sample(self.header.normalization.apply(self.pixels([i])[0]), int(self.labels[i]),
                                  self.transform, self.target_transform)

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
