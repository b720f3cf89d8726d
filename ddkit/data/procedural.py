"""`procedural` — a tiny dataset generated in code, for unit tests and smoke runs (no files).

Each class is a sinusoidal grating with one of 5 orientations × 2 spatial frequencies; every image
gets a random phase, contrast, a small orientation jitter and pixel noise. A small ConvNet separates
the classes well above chance within seconds, but not trivially (noise and phase must be ignored).
`procedural:3` has the same labels and gratings, tinted by a random per-image color, so RGB code
paths are exercised. Everything is derived from fixed seeds: identical on every run and machine.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from ddkit.data.base import DatasetInfo, ImageDataset
from ddkit.data.stats import channel_stats
from ddkit.errors import InvalidInput
from ddkit.seeding import numpy_rng

SEED = 0
SIZE = 16
PER_CLASS = {"train": 40, "test": 20}
ANGLES = (0, 36, 72, 108, 144)  # degrees
CYCLES = {"coarse": 2.0, "fine": 4.0}  # periods across the image
CLASS_NAMES = tuple(f"{kind}-{angle}" for kind in CYCLES for angle in ANGLES)


def _parse_channels(arg: str | None) -> int:
    if arg in (None, "1"):
        return 1
    if arg == "3":
        return 3
    raise InvalidInput(f"procedural:{arg} is not a channel count", "use procedural (1 channel) or procedural:3")


def generate(split: str, channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """uint8 N×C×16×16 images and int64 labels of `split`, deterministic."""
    n = PER_CLASS[split] * len(CLASS_NAMES)
    rng = numpy_rng(SEED, "procedural", split)  # structure: shared by 1- and 3-channel variants
    labels = rng.permutation(np.arange(n) % len(CLASS_NAMES))
    angle = np.deg2rad(np.asarray(ANGLES)[labels % len(ANGLES)] + rng.uniform(-12, 12, n))
    cycles = np.asarray(list(CYCLES.values()))[labels // len(ANGLES)]
    phase = rng.uniform(0, 2 * np.pi, n)
    contrast = rng.uniform(0.1, 0.35, n)

    yy, xx = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")
    coord = np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy
    grating = np.sin(2 * np.pi * cycles[:, None, None] * coord / SIZE + phase[:, None, None])  # N×H×W

    color_rng = numpy_rng(SEED, "procedural-color", split, channels)
    tint = np.ones((n, 1)) if channels == 1 else color_rng.uniform(0.4, 1.0, (n, channels))
    noise = color_rng.normal(0.0, 0.25, (n, channels, SIZE, SIZE))
    pixels = 0.5 + (contrast[:, None] * tint)[:, :, None, None] * grating[:, None] + noise
    images = np.clip(np.round(pixels * 255.0), 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


@functools.lru_cache(maxsize=8)
def _cached(split: str, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = generate(split, channels)
    return torch.from_numpy(images), torch.from_numpy(labels)


def load(arg: str | None, split: str) -> ImageDataset:
    """The `procedural[:3]` split; normalization is the train split's per-channel mean/std."""
    channels = _parse_channels(arg)
    info = DatasetInfo(
        "procedural" if arg is None else f"procedural:{arg}", CLASS_NAMES, (channels, SIZE, SIZE),
        channel_stats(_cached("train", channels)[0]),
    )
    images, labels = _cached(split, channels)
    return ImageDataset(info, split, images.clone(), labels.clone(), source="generated in code (ddkit.data.procedural)")
