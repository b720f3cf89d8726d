"""Parameterized storage (`/formation`): each stored image decodes into several training instances.

Multi-formation (IDC: Kim et al., ICML 2022; the partition of IDM: Zhao et al., CVPR 2023): a stored
H×W image with factor n is cut into an n×n grid; every cell, upsampled (bilinear) back to H×W, is
one training instance with the stored image's label. The file keeps one image and the student sees
n² of them, so at the same bytes a class gets n² times as many (coarser) training images.

Instance order: stored image i decodes to instances i·n² … i·n² + n² − 1, its cells row by row
(grid row, then grid column). When n does not divide the side, the first `side mod n` rows (and
columns) of cells are one pixel larger, so every stored pixel belongs to exactly one cell (IDC's
initialisation splits the same way; its decoder pads the image with gray instead, which would put
pixels into the training instances that the file does not store).

`decode` is made of slicing and `F.interpolate`, so it is differentiable: synthesis optimizes the
stored pixels through it. Bilinear interpolation is a convex combination of pixels, so decoding
commutes with the per-channel normalization: decoding normalized images gives the normalized
decoded images. The decoder has no parameters; the factor is an attribute of the `/formation` group
(covered by the header hash), so its budget in bytes is 0 and `ddkit info` counts the images and
labels exactly as for a plain file, with n² instances per stored image.

A file with a formation is written as schema 2, so a ddkit that cannot decode it refuses it
("upgrade ddkit") instead of training on the undecoded images; files without one stay schema 1.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import ClassVar

import h5py
import numpy as np

from ddkit.errors import FileFormatError, InvalidInput
from ddkit.store.schema import attr_text

if typing.TYPE_CHECKING:
    import torch

FORMATION_SCHEMA = 2  # the schema a file with a /formation group is written at
MIN_CELL = 2  # pixels per cell side: a 1-pixel cell decodes to a constant image


def cell_bounds(size: int, factor: int) -> list[tuple[int, int]]:
    """[start, stop) of the `factor` cells along a side of `size` pixels; the first `size % factor`
    cells are one pixel longer."""
    base, extra = divmod(size, factor)
    bounds, start = [], 0
    for i in range(factor):
        stop = start + base + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


@dataclass(frozen=True)
class MultiFormation:
    """Multi-formation with factor n: one stored image → n² instances (see the module docstring)."""

    kind: ClassVar[str] = "multi"
    factor: int

    def __post_init__(self):
        if isinstance(self.factor, bool) or not isinstance(self.factor, (int, np.integer)) or self.factor < 1:
            raise InvalidInput(f"the formation factor must be an integer ≥ 1, got {self.factor!r}",
                               "use formation=1 (plain images), 2 or 3")
        object.__setattr__(self, "factor", int(self.factor))

    @property
    def per_image(self) -> int:
        """Training instances per stored image (n²)."""
        return self.factor**2

    def num_instances(self, num_stored: int) -> int:
        return num_stored * self.per_image

    def check(self, image_shape) -> None:
        """Refuse (InvalidInput) a factor whose cells would be under MIN_CELL pixels on a side."""
        h, w = (int(s) for s in tuple(image_shape)[-2:])
        if min(h, w) // self.factor < MIN_CELL:
            raise InvalidInput(
                f"formation factor {self.factor} cuts {h}×{w} images into cells of {min(h, w) // self.factor} pixel(s)",
                f"use a factor of at most {max(1, min(h, w) // MIN_CELL)} for these images",
            )

    # -- decoding --------------------------------------------------------------------------------
    def cells(self, image_hw: tuple[int, int]) -> list[tuple[int, int, int, int]]:
        """(top, bottom, left, right) of each cell, in instance order."""
        rows, cols = cell_bounds(image_hw[0], self.factor), cell_bounds(image_hw[1], self.factor)
        return [(r0, r1, c0, c1) for r0, r1 in rows for c0, c1 in cols]

    def decode_cells(self, images: torch.Tensor, cells) -> torch.Tensor:
        """Row k of the result is cell `cells[k]` of `images[k]` upsampled to the full size
        (B×C×H×W → B×C×H×W; differentiable in `images`)."""
        import torch
        import torch.nn.functional as F
        cells = torch.as_tensor(np.asarray(cells), dtype=torch.long).reshape(-1)
        if len(cells) != len(images):
            raise ValueError(f"{len(images)} images but {len(cells)} cell indices")
        h, w = images.shape[-2:]
        out = images.new_empty(images.shape)
        for k, (r0, r1, c0, c1) in enumerate(self.cells((h, w))):
            rows = torch.nonzero(cells == k).flatten()
            if len(rows):
                part = images[rows.to(images.device), :, r0:r1, c0:c1]
                out[rows.to(images.device)] = F.interpolate(part, size=(h, w), mode="bilinear", align_corners=False)
        return out

    def decode(self, images: torch.Tensor) -> torch.Tensor:
        """All instances of stored `images` (B×C×H×W → B·n²×C×H×W, in instance order; differentiable)."""
        import torch
        import torch.nn.functional as F
        if self.factor == 1:
            return images
        b, (h, w) = len(images), images.shape[-2:]
        parts = [F.interpolate(images[:, :, r0:r1, c0:c1], size=(h, w), mode="bilinear", align_corners=False)
                 for r0, r1, c0, c1 in self.cells((h, w))]
        return torch.stack(parts, 1).reshape(b * self.per_image, *images.shape[1:])

    def encode(self, instances: torch.Tensor) -> torch.Tensor:
        """Stored images whose cells are `instances` shrunk to cell size (antialiased bilinear):
        B·n² full-size images → B stored images. Used to start synthesis from real images (IDC's
        'mix' initialisation); decoding the result gives blurred versions of the instances."""
        import torch.nn.functional as F
        if len(instances) % self.per_image:
            raise ValueError(f"{len(instances)} instances is not a multiple of {self.per_image}")
        if self.factor == 1:
            return instances.clone()
        b, (h, w) = len(instances) // self.per_image, instances.shape[-2:]
        grouped = instances.reshape(b, self.per_image, *instances.shape[1:])
        out = instances.new_empty((b, *instances.shape[1:]))
        for k, (r0, r1, c0, c1) in enumerate(self.cells((h, w))):
            out[:, :, r0:r1, c0:c1] = F.interpolate(grouped[:, k], size=(r1 - r0, c1 - c0), mode="bilinear",
                                                    align_corners=False, antialias=True)
        return out

    # -- instance bookkeeping --------------------------------------------------------------------
    def split(self, instances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For instance indices: their stored image rows and cell indices."""
        instances = np.asarray(instances, dtype=np.int64)
        return instances // self.per_image, instances % self.per_image

    def labels(self, stored_labels):
        """The instances' labels (int64, a tensor for a tensor, else an array): each stored image's label n² times."""
        if hasattr(stored_labels, "repeat_interleave"):
            return stored_labels.long().repeat_interleave(self.per_image)
        return np.repeat(np.asarray(stored_labels, dtype=np.int64), self.per_image)

    # -- storage ---------------------------------------------------------------------------------
    def attrs(self) -> dict:
        return {"kind": self.kind, "factor": self.factor}

    def to_dict(self) -> dict:
        return self.attrs()


def formation_from_factor(factor: int) -> MultiFormation | None:
    """The formation a synthesizer option asks for: None for factor 1 (plain images)."""
    formation = MultiFormation(factor)
    return None if formation.factor == 1 else formation


def read_formation(group: h5py.Group, path) -> MultiFormation:
    """The formation stored in `group`; a kind this ddkit cannot decode is refused."""
    kind = attr_text(group.attrs["kind"]) if "kind" in group.attrs else None
    if kind != MultiFormation.kind:
        raise FileFormatError(
            f"{path} decodes its images with formation {kind!r}, which this ddkit does not know",
            "upgrade ddkit: pip install -U ddkit",
        )
    factor = group.attrs["factor"]
    if not isinstance(factor, (int, np.integer)) or factor < 2:
        raise FileFormatError(f"{path}: /formation has factor {factor!r}, expected an integer ≥ 2",
                              "the file is damaged or was not written by ddkit; write or download it again")
    return MultiFormation(int(factor))


def instance_count(num_stored: int, formation: MultiFormation | None) -> int:
    return num_stored if formation is None else formation.num_instances(num_stored)
