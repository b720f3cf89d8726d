"""Composite instances (`/composite`): training instances composed from stored parts at load time.

INFER stores K real images per class and a few compensators, each shared by a group of base images
across all classes; the composed instances `clamp(image + compensator)` are never written out (the
official code saves them as JPEG; ddkit stores the parts losslessly and composes on read).

Instance order of a file with a composite: the N stored images, then for each compensator u and
each member j of its group, `clamp(images[members[u, j]] + compensators[u], 0, 1)` with the label
of `images[members[u, j]]`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import h5py
import numpy as np

from ddkit.errors import FileFormatError, InvalidInput
from ddkit.store.arrays import as_array, check_finite
from ddkit.store.h5io import read_group_arrays
from ddkit.store.schema import attr_text


@dataclass
class AdditiveComposite:
    """Compensators (U×C×H×W float32) added to the stored images listed in `members` (U×G int64).

    `extra` holds small per-compensator index arrays a method wants to keep (e.g. `group_of`,
    `teacher_of`); they are stored and read back as they are.
    """

    kind: ClassVar[str] = "additive"
    compensators: np.ndarray
    members: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        self.compensators = as_array(self.compensators, np.float32, 4, "composite compensators")
        self.members = as_array(self.members, np.int64, 2, "composite members")
        self.extra = {k: as_array(v, None, None, f"composite extra {k!r}") for k, v in self.extra.items()}

    @property
    def num_instances(self) -> int:
        """How many instances the composite adds after the stored images (U·G)."""
        return self.members.size

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays().values())

    def check(self, num_stored: int, image_shape: tuple[int, ...]) -> None:
        """Refuse (InvalidInput) compensators or members that do not fit the stored images."""
        if tuple(self.compensators.shape[1:]) != tuple(image_shape):
            raise InvalidInput(
                f"compensators have shape C×H×W = {self.compensators.shape[1:]}, expected {tuple(image_shape)}"
            )
        if len(self.members) != len(self.compensators):
            raise InvalidInput(f"{len(self.compensators)} compensators but {len(self.members)} rows of members")
        check_finite(self.compensators, "compensators")
        if self.members.size and (self.members.min() < 0 or self.members.max() >= num_stored):
            raise InvalidInput(
                f"composite members span [{self.members.min()}, {self.members.max()}] but only {num_stored} images are stored",
                "members are row indices into /images",
            )

    def split(self, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For composed-instance offsets (instance index − N): their base image rows and compensators."""
        return self.members.reshape(-1)[offsets], offsets // self.members.shape[1]

    def compose(self, base, compensator_rows: np.ndarray):
        """clamp(base + compensators[rows], 0, 1) for float32 base pixels B×C×H×W (a tensor)."""
        import torch

        comps = torch.from_numpy(self.compensators[np.asarray(compensator_rows)])
        return (base + comps).clamp_(0.0, 1.0)

    def labels(self, base_labels):
        """The labels of the composed instances, in instance order (a tensor or an array, like `base_labels`)."""
        return base_labels[self.members.reshape(-1)]

    # -- storage ---------------------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        return {"compensators": self.compensators, "members": self.members, **{f"extra/{k}": v for k, v in self.extra.items()}}

    def attrs(self) -> dict[str, str]:
        return {"kind": self.kind}


def instance_labels(stored_labels, composite: AdditiveComposite | None):
    """Labels of every instance (a tensor): the stored images' labels, then the composed instances'."""
    import torch

    stored_labels = stored_labels.long()
    return torch.cat([stored_labels, composite.labels(stored_labels)]) if composite is not None else stored_labels


def read_composite(group: h5py.Group, path) -> AdditiveComposite:
    """The composite stored in `group`; a kind this ddkit cannot compose is refused."""
    kind = attr_text(group.attrs["kind"])
    if kind != AdditiveComposite.kind:
        raise FileFormatError(
            f"{path} composes its instances with {kind!r}, which this ddkit does not know",
            "upgrade ddkit: pip install -U ddkit",
        )
    arrays = read_group_arrays(group)
    extra = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("extra/")}
    return AdditiveComposite(arrays["compensators"], arrays["members"], extra)
