"""The copy descriptor: a small ConvNet that maps an image to a unit vector which an edited copy of
the image (noise, shift, crop, JPEG, brightness, rotation, two of these) keeps, and which a
different image does not. Learned without labels and without a teacher (`ddkit.contamination.fit`).

Before the network an image is (1) resized to a working side of at most `MAX_SIDE` px (area
averaging: a copy at 64 px or 256 px is found by what it shows, not by its fine grain), (2) moved
to the canonical frame of the pixel-align detector (`detector.canonical`: intensity centroid to the
centre, radius of gyration to a fixed size; with `DescriptorArch.orient`, off by default and in the
shipped descriptor, also the principal axis turned upright), so a shift or a crop barely moves it, and (3)
standardized per image (a brightness change barely moves it). The network then only has to learn
what survives resampling (rotation, the crop's zoom) and re-encoding (noise, JPEG).

The network keeps the spatial layout (a linear map of the last feature map, no global pooling):
two plain shirts differ by where their texture is, and a copy keeps that.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ddkit.contamination.detector import ROW_BLOCK, canonical, unit_float
from ddkit.errors import InvalidInput
from ddkit.records import record_fields

MAX_SIDE = 32  # working side (px) of larger images


def working_side(height: int, width: int) -> int:
    """The side the descriptor sees: the image's shorter side, at most MAX_SIDE, a multiple of 4
    (two stride-2 stages)."""
    side = min(height, width, MAX_SIDE) // 4 * 4
    if side < 8:
        raise InvalidInput(f"images of {height}×{width} px are too small for the copy descriptor (at least 8×8)",
                           "use --detector pixel-align-1, or larger images")
    return side


@dataclass(frozen=True)
class DescriptorArch:
    """Shape of the network: input channels, working side, width (first stage's channels), output dim."""

    channels: int
    side: int
    width: int = 16
    dim: int = 64
    orient: bool = False  # also turn images upright in the canonical frame (`detector.canonical`)

    def __post_init__(self):
        if not isinstance(self.orient, bool):
            raise InvalidInput(f"descriptor orient must be true or false, got {self.orient!r}")
        for name in ("channels", "side", "width", "dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInput(f"descriptor {name} must be a positive integer, got {value!r}")
        if self.side % 4 or self.side < 8:
            raise InvalidInput(f"descriptor side must be a multiple of 4 and at least 8, got {self.side}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "descriptor arch") -> "DescriptorArch":
        return cls(**record_fields(cls, d, where))

    @classmethod
    def for_images(cls, shape, width: int = 16, dim: int = 64) -> "DescriptorArch":
        c, h, w = (int(s) for s in shape)
        return cls(c, working_side(h, w), width, dim)


class CopyNet(nn.Module):
    """uint8-derived [0, 1] images C×H×W → unit vectors of `arch.dim` (see the module docstring)."""

    def __init__(self, arch: DescriptorArch):
        super().__init__()
        self.arch = arch
        w = arch.width
        self.body = nn.Sequential(
            nn.Conv2d(arch.channels, w, 4, stride=2, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 4, stride=2, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(),
        )
        self.head = nn.Linear(4 * w * (arch.side // 4) ** 2, arch.dim)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images at any size → the working side, in the canonical frame, standardized."""
        if x.shape[1] != self.arch.channels:
            raise InvalidInput(f"the descriptor takes {self.arch.channels}-channel images, got {x.shape[1]}")
        if x.shape[-2:] != (self.arch.side, self.arch.side):
            x = F.interpolate(x, size=(self.arch.side, self.arch.side), mode="area")
        x = canonical(x, orient=self.arch.orient)
        x = x - x.mean((1, 2, 3), keepdim=True)
        return x / x.flatten(1).std(1).clamp_min(1e-3)[:, None, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prepare(x)
        if not self.training:  # inference runs channels-last (faster on CPU); training keeps the default layout
            x = x.contiguous(memory_format=torch.channels_last)
        z = self.body(x)
        return F.normalize(self.head(z.flatten(1)), dim=1)


@torch.no_grad()
def embed(net: CopyNet, images, mirror: bool = False, block: int = ROW_BLOCK, view=None) -> np.ndarray:
    """Descriptors (float32 N×dim) of uint8 images (N×C×H×W; a memmap is read by blocks);
    `mirror`: of their horizontal mirror images; `view` (uint8 block -> uint8 block of the same
    shape): of that view of each image."""
    net.eval()
    out = np.empty((len(images), net.arch.dim), np.float32)
    for start in range(0, len(images), block):
        rows = np.ascontiguousarray(images[start : start + block])
        x = unit_float(np.ascontiguousarray(view(rows)) if view is not None else rows)
        out[start : start + len(x)] = net(x.flip(-1) if mirror else x).numpy()
    return out
