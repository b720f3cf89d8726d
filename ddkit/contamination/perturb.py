"""The perturbation suite: the edits a leaked test image plausibly went through before it landed in a
pool or a distilled set (re-encoding, cropping, a small shift or rotation, a brightness change...).

Each perturbation is registered by name in `PERTURBATIONS`, takes uint8 images N×C×H×W (numpy) and
a seed, and returns uint8 images of the same shape: the suite is what the detector is calibrated
on (over TRAIN images) and benchmarked on (over TEST images), so both use this one definition.
Strengths are drawn per image from the ranges written in each docstring.
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F

from ddkit.errors import InvalidInput
from ddkit.registry import Registry
from ddkit.seeding import numpy_rng

PERTURBATIONS = Registry("perturbation")
# The single edits a combined perturbation draws two (different) of.
SINGLE = ("noise", "shift", "flip", "crop", "jpeg", "brightness", "rotation")


def _unit(images: np.ndarray) -> torch.Tensor:
    # a read-only block (a memmap) is copied: torch wants writable memory
    return torch.from_numpy(np.require(images, requirements=["C", "W"])).float().div_(255.0)


def _uint8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).numpy()


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Bilinear resampling by per-image affine maps (N×2×3, normalized coordinates); what comes in
    from outside the image is black, as in the usual pad-and-crop and rotate augmentations."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@PERTURBATIONS.register("exact", "an exact copy")
def exact(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return images.copy()


@PERTURBATIONS.register("noise", "Gaussian pixel noise, σ 4–10 grey levels of 255")
def noise(images, rng):
    sigma = rng.uniform(4.0, 10.0, (len(images), 1, 1, 1))
    return np.clip(images + rng.normal(0.0, 1.0, images.shape) * sigma, 0, 255).round().astype(np.uint8)


@PERTURBATIONS.register("shift", "a translation by 1–2 px in x and/or y (black comes in)")
def shift(images, rng):
    n, _, h, w = images.shape
    moves = np.array([(dx, dy) for dx in range(-2, 3) for dy in range(-2, 3) if (dx, dy) != (0, 0)])
    dx, dy = moves[rng.integers(0, len(moves), n)].T
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = torch.from_numpy(-2.0 * dx / w).float()  # sample from x − dx: the content moves by +dx
    theta[:, 1, 2] = torch.from_numpy(-2.0 * dy / h).float()
    return _uint8(_warp(_unit(images), theta))


@PERTURBATIONS.register("flip", "a horizontal mirror image")
def flip(images, rng):
    return images[..., ::-1].copy()


@PERTURBATIONS.register("crop", "a random crop of 90% of each side, resized back (bilinear)")
def crop(images, rng):
    n = len(images)
    scale = 0.9
    cx, cy = rng.uniform(-(1 - scale), 1 - scale, (2, n))  # crop centre, normalized coordinates
    return _uint8(_warp(_unit(images), _crop_theta(scale, cx, cy)))


def _crop_theta(scale: float, cx: np.ndarray, cy: np.ndarray) -> torch.Tensor:
    theta = torch.zeros(len(cx), 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = scale
    theta[:, 0, 2] = torch.from_numpy(np.asarray(cx, np.float64)).float()
    theta[:, 1, 2] = torch.from_numpy(np.asarray(cy, np.float64)).float()
    return theta


def cropped(images: np.ndarray, scale: float, cx: float, cy: float) -> np.ndarray:
    """Every image's crop of `scale` of each side centred at (cx, cy) (normalized coordinates),
    resized back: one fixed view of the `crop` edit."""
    n = len(images)
    return _uint8(_warp(_unit(images), _crop_theta(scale, np.full(n, cx), np.full(n, cy))))


@PERTURBATIONS.register("jpeg", "JPEG at quality 75 (Pillow), decoded back")
def jpeg(images, rng, quality: int = 75):
    from PIL import Image

    out = np.empty_like(images)
    for i, img in enumerate(images):
        pil = Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0))
        buffer = io.BytesIO()
        pil.save(buffer, format="JPEG", quality=quality)
        decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert(pil.mode))
        out[i] = decoded[None] if img.shape[0] == 1 else decoded.transpose(2, 0, 1)
    return out


@PERTURBATIONS.register("brightness", "brightness scaled by 1 ± 10% (either sign, clipped)")
def brightness(images, rng):
    factor = 1.0 + 0.1 * rng.choice([-1.0, 1.0], (len(images), 1, 1, 1))
    return np.clip(images * factor, 0, 255).round().astype(np.uint8)


@PERTURBATIONS.register("rotation", "a rotation by 3–8 degrees either way about the centre (bilinear)")
def rotation(images, rng):
    n = len(images)
    angle = np.radians(rng.uniform(3.0, 8.0, n) * rng.choice([-1.0, 1.0], n))
    return _uint8(_warp(_unit(images), _rotation_theta(angle)))


def _rotation_theta(angle: np.ndarray) -> torch.Tensor:
    cos, sin = torch.from_numpy(np.cos(angle)).float(), torch.from_numpy(np.sin(angle)).float()
    theta = torch.zeros(len(angle), 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    return theta


def rotated(images: np.ndarray, degrees: float) -> np.ndarray:
    """Every image rotated by `degrees` about its centre (bilinear, black corners): one fixed view
    of the `rotation` edit."""
    return _uint8(_warp(_unit(images), _rotation_theta(np.full(len(images), np.radians(degrees)))))


@PERTURBATIONS.register("combined", "two different single edits in a row, drawn per image")
def combined(images, rng):
    out = images.copy()
    first = rng.integers(0, len(SINGLE), len(images))
    second = (first + rng.integers(1, len(SINGLE), len(images))) % len(SINGLE)
    for step in (first, second):
        for k, name in enumerate(SINGLE):
            rows = np.flatnonzero(step == k)
            if len(rows):
                out[rows] = PERTURBATIONS.get(name)(out[rows], rng)
    return out


def perturb(images: np.ndarray, kind: str, seed: int) -> np.ndarray:
    """`images` (uint8 N×C×H×W) after perturbation `kind`, drawn from `seed` alone."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise InvalidInput(f"perturb takes uint8 images N×C×H×W, got {images.dtype} {images.shape}")
    if len(images) == 0:
        return images.copy()
    return PERTURBATIONS.get(kind)(images, numpy_rng(seed, "perturbation", kind))


def suite_kinds() -> list[str]:
    """Every perturbation, in the order tables list them (exact first, combined last)."""
    singles = [k for k in SINGLE if k in PERTURBATIONS]
    return ["exact", *singles, "combined"]

