"""A distilled file's metadata read and checked without torch: header, content hash, stored labels,
composite and the names of its label payloads — everything but the pixels.

`DistilledDataset` opens a file through `read_distilled_meta` (and adds the pixels and tensors);
`ddkit info` uses it alone, so describing a file does not import torch. The checks shared by the
writer and the readers (labels, header provenance) live here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ddkit.errors import FileFormatError, InvalidInput
from ddkit.store.composite import AdditiveComposite, read_composite
from ddkit.store.formation import FORMATION_SCHEMA, MultiFormation, instance_count, read_formation
from ddkit.store.h5io import DAMAGED_FIX
from ddkit.store.schema import DistilledHeader, attr_text, decode_attrs

IMAGE_DTYPES = ("float16", "uint8")


def check_labels(labels, num_classes: int, count: int, what: str = "labels") -> None:
    """Refuse labels (a tensor or an array) that are not one int per image, or fall outside [0, num_classes)."""
    array = labels.detach().cpu().numpy() if hasattr(labels, "detach") else np.asarray(labels)
    if array.ndim != 1 or len(array) != count:
        raise InvalidInput(f"{what} have shape {tuple(array.shape)}, expected ({count},)", "one label per image")
    if array.dtype.kind not in "iu":
        raise InvalidInput(f"{what} have dtype {array.dtype}, expected an integer type")
    if count and (int(array.min()) < 0 or int(array.max()) >= num_classes):
        raise InvalidInput(
            f"{what} span [{int(array.min())}, {int(array.max())}] but the dataset has {num_classes} classes",
            "labels are class indices in [0, num_classes)",
        )


def check_provenance(method: str, config, teachers) -> None:
    """Refuse header fields the reader could not type back: shared by distilled and selection files."""
    if not method or not isinstance(method, str):
        raise InvalidInput(f"the method name must be a non-empty string, got {method!r}", "set the method name")
    if not isinstance(config, dict):
        raise InvalidInput(f"config must be a dict (or a dataclass), got {type(config).__name__}")
    if not isinstance(teachers, (list, tuple)):
        raise InvalidInput(f"teachers must be a list of dicts, got {type(teachers).__name__}")
    for i, teacher in enumerate(teachers):
        if not isinstance(teacher, dict) or not all(isinstance(teacher.get(k), str) for k in ("arch", "sha256")):
            raise InvalidInput(f"teacher record {i} must be a dict with string 'arch' and 'sha256', "
                               f"got {repr(teacher)[:80]}")


@dataclass
class DistilledMeta:
    """What a `.ddk.h5` file says about itself, checked against itself; `labels` are per instance
    (the stored images' labels, then the composed instances'; or, with a formation, each stored
    image's label once per decoded instance)."""

    header: DistilledHeader
    content_sha256: str
    num_stored: int
    stored_labels: np.ndarray
    composite: AdditiveComposite | None
    soft_schemes: list[str]
    formation: MultiFormation | None = None

    @property
    def labels(self) -> np.ndarray:
        if self.formation is not None:
            return self.formation.labels(self.stored_labels)
        if self.composite is None:
            return self.stored_labels
        return np.concatenate([self.stored_labels, self.stored_labels[self.composite.members.reshape(-1)]])


def read_distilled_meta(h5: h5py.File, path: Path) -> DistilledMeta:
    """Read and check the metadata of the open distilled file `h5` (declared sizes against each other
    and the header before any array is read); FileFormatError/InvalidInput for a damaged one."""
    header = DistilledHeader(**decode_attrs(DistilledHeader, h5.attrs))
    check_provenance(header.method, header.config, header.teachers)
    content = attr_text(h5.attrs["content_sha256"])
    for name in ("images", "labels"):
        if not isinstance(h5.get(name), h5py.Dataset):
            raise FileFormatError(f"{path} has no /{name} dataset", DAMAGED_FIX)
    images, labels = h5["images"], h5["labels"]
    shape = tuple(header.dataset.info.image_shape)
    if images.dtype.name not in IMAGE_DTYPES or images.ndim != 4 or images.shape[1:] != shape:
        raise FileFormatError(
            f"{path}: /images is {images.dtype} {images.shape}, expected float16/uint8 N×{'×'.join(map(str, shape))}",
            DAMAGED_FIX,
        )
    num_stored = images.shape[0]
    formation = None
    if "formation" in h5:
        if int(h5.attrs["schema"]) < FORMATION_SCHEMA:
            raise FileFormatError(f"{path} has a /formation group but schema {int(h5.attrs['schema'])}", DAMAGED_FIX)
        if "composite" in h5:
            raise FileFormatError(f"{path} has both a /composite and a /formation", DAMAGED_FIX)
        formation = read_formation(h5["formation"], path)
        formation.check(shape)
    if labels.shape != (num_stored,) or instance_count(num_stored, formation) > header.budget.instances:
        raise FileFormatError(
            f"{path}: /labels {labels.shape} and /images {images.shape} disagree with each other or with the "
            f"recorded {header.budget.instances} instances", DAMAGED_FIX)
    stored_labels = labels[()]
    check_labels(stored_labels, header.num_classes, num_stored, "/labels")
    composite = None
    if "composite" in h5:
        composite = read_composite(h5["composite"], path)
        composite.check(num_stored, shape)
    soft = sorted(h5["soft"]) if "soft" in h5 else []
    return DistilledMeta(header, content, num_stored, stored_labels.astype(np.int64), composite, soft, formation)
