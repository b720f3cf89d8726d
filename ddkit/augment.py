"""Seeded, replayable augmentation on batched tensors (on the device where the data lives).

Every transform separates *sampling* its random parameters (from an explicit torch.Generator, never
the global RNG) from *applying* them, in the manner of kornia: passing the same parameters back
replays exactly the same view. DBR label transfer and on-the-fly relabeling depend on that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import kornia
import torch
import torch.nn.functional as F

from ddkit.registry import Registry

Params = dict


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator, device=generator.device)


class Transform:
    """A per-sample or per-batch random transform: `sample` params, then `apply` them."""

    name = "transform"

    def sample(self, shape: torch.Size, generator: torch.Generator) -> Params:
        raise NotImplementedError

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply(x, self.sample(x.shape, generator))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


@dataclass(repr=False)
class RandomCropPad(Transform):
    """Zero-pad by `padding` pixels, then crop back to the original size at a random offset."""

    padding: int = 4
    name = "crop"

    def sample(self, shape, generator):
        b = shape[0]
        shift = torch.randint(0, 2 * self.padding + 1, (b, 2), generator=generator, device=generator.device)
        return {"shift": shift}

    def apply(self, x, params):
        if self.padding == 0:
            return x
        b, c, h, w = x.shape
        p = self.padding
        padded = F.pad(x, (p, p, p, p))
        shift = params["shift"].to(x.device)
        rows = (shift[:, 0:1] + torch.arange(h, device=x.device)).view(b, 1, h, 1).expand(b, c, h, w + 2 * p)
        out = padded.gather(2, rows)
        cols = (shift[:, 1:2] + torch.arange(w, device=x.device)).view(b, 1, 1, w).expand(b, c, h, w)
        return out.gather(3, cols)


@dataclass(repr=False)
class RandomHorizontalFlip(Transform):
    p: float = 0.5
    name = "flip"

    def sample(self, shape, generator):
        return {"flip": torch.rand(shape[0], generator=generator, device=generator.device) < self.p}

    def apply(self, x, params):
        flip = params["flip"].to(x.device).view(-1, 1, 1, 1)
        return torch.where(flip, x.flip(-1), x)


@dataclass(repr=False)
class RandomResizedCrop(Transform):
    """Crop a box of random area fraction `scale` and aspect `ratio`, resize back (bilinear)."""

    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    name = "resized_crop"

    def sample(self, shape, generator):
        b, _, h, w = shape
        area = _uniform(b, *self.scale, generator) * h * w
        log_ratio = _uniform(b, math.log(self.ratio[0]), math.log(self.ratio[1]), generator)
        aspect = torch.exp(log_ratio)
        bw = torch.sqrt(area * aspect).clamp(1, w)
        bh = torch.sqrt(area / aspect).clamp(1, h)
        x0 = _uniform(b, 0, 1, generator) * (w - bw)
        y0 = _uniform(b, 0, 1, generator) * (h - bh)
        return {"box": torch.stack([x0, y0, x0 + bw, y0 + bh], 1)}

    def apply(self, x, params):
        box = params["box"].to(x.device, x.dtype)
        x0, y0, x1, y1 = box.unbind(1)
        corners = torch.stack(
            [torch.stack([x0, y0], 1), torch.stack([x1 - 1, y0], 1), torch.stack([x1 - 1, y1 - 1], 1), torch.stack([x0, y1 - 1], 1)],
            1,
        )
        return kornia.geometry.transform.crop_and_resize(x, corners, x.shape[-2:], align_corners=True)


@dataclass(repr=False)
class ColorJitterDSA(Transform):
    """DSA's colour step: brightness shift, saturation and contrast scale, per sample."""

    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    name = "color"

    def sample(self, shape, generator):
        b = shape[0]
        return {
            "brightness": _uniform(b, -0.5, 0.5, generator) * self.brightness,
            "saturation": _uniform(b, 0, 1, generator) * self.saturation,
            "contrast": _uniform(b, 0, 1, generator) + self.contrast,
        }

    def apply(self, x, params):
        view = (-1, 1, 1, 1)
        x = x + params["brightness"].to(x).view(view)
        if x.shape[1] > 1:
            gray = x.mean(1, keepdim=True)
            x = (x - gray) * params["saturation"].to(x).view(view) + gray
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * params["contrast"].to(x).view(view) + mean


@dataclass(repr=False)
class RandomScale(Transform):
    """DSA's scale: per-axis factors in [1/s, s] about the image centre (factor > 1 shrinks the content,
    as DSA's sampling-grid convention has it), zero padding; kornia's differentiable warp."""

    scale: float = 1.2
    name = "scale"

    def sample(self, shape, generator):
        b = shape[0]
        return {"sx": _uniform(b, 1 / self.scale, self.scale, generator),
                "sy": _uniform(b, 1 / self.scale, self.scale, generator)}

    def apply(self, x, params):
        # DSA scales the sampling grid by (sx, sy); kornia scales the content, hence the reciprocal.
        factor = torch.stack([params["sx"], params["sy"]], 1).to(x).reciprocal()
        return kornia.geometry.transform.scale(x, factor, align_corners=True)


@dataclass(repr=False)
class RandomRotate(Transform):
    """DSA's rotation: an angle in ±`degrees` about the image centre, zero padding (kornia)."""

    degrees: float = 15.0
    name = "rotate"

    def sample(self, shape, generator):
        return {"angle": _uniform(shape[0], -self.degrees, self.degrees, generator)}

    def apply(self, x, params):
        return kornia.geometry.transform.rotate(x, params["angle"].to(x), align_corners=True)


@dataclass(repr=False)
class RandomCutout(Transform):
    """Zero one square of side `ratio`·size at a random centre, per sample."""

    ratio: float = 0.5
    name = "cutout"

    def sample(self, shape, generator):
        b, _, h, w = shape
        return {"center": torch.stack([torch.randint(0, h, (b,), generator=generator, device=generator.device),
                                       torch.randint(0, w, (b,), generator=generator, device=generator.device)], 1)}

    def apply(self, x, params):
        b, _, h, w = x.shape
        ch, cw = int(h * self.ratio + 0.5), int(w * self.ratio + 0.5)
        center = params["center"].to(x.device)
        ys = torch.arange(h, device=x.device).view(1, h, 1)
        xs = torch.arange(w, device=x.device).view(1, 1, w)
        y0 = (center[:, 0] - ch // 2).view(b, 1, 1)
        x0 = (center[:, 1] - cw // 2).view(b, 1, 1)
        inside = (ys >= y0) & (ys < y0 + ch) & (xs >= x0) & (xs < x0 + cw)
        return x * (~inside).unsqueeze(1).to(x)


class Compose(Transform):
    """Per-sample transforms applied in order; params are a list, one entry per transform."""

    name = "compose"

    def __init__(self, transforms: list[Transform]):
        self.transforms = list(transforms)

    def sample(self, shape, generator):
        return {"steps": [t.sample(shape, generator) for t in self.transforms]}

    def apply(self, x, params):
        for t, p in zip(self.transforms, params["steps"]):
            x = t.apply(x, p)
        return x


def take_rows(params: Params, rows: torch.Tensor) -> Params:
    """The parameters of the samples at `rows`, from a nest of dicts/lists of per-sample tensors."""
    if isinstance(params, dict):
        return {k: take_rows(v, rows) for k, v in params.items()}
    if isinstance(params, list):
        return [take_rows(v, rows) for v in params]
    return params[rows.to(params.device)]


DSA_STRATEGY = "color_crop_cutout_flip_scale_rotate"


class DSA(Transform):
    """Differentiable Siamese Augmentation (Zhao & Bilen, ICML 2021) in the `single` mode of the DC/DSA/DM
    code: each unit of samples gets ONE group of the strategy, with per-sample strengths.

    Groups and their published strengths: `color` (brightness shift ±0.5, saturation ×U(0, 2), contrast
    ×U(0.5, 1.5), in turn), `crop` (a translation of up to 0.125 × size, zero padded), `cutout` (a zero
    square of 0.5 × size), `flip` (p = 0.5), `scale` (per axis in [1/1.2, 1.2]), `rotate` (±15°). Every op
    is differentiable w.r.t. the pixels, so gradients reach synthetic images.

    Siamese use: sample once, apply to the real and the synthetic batch alike — row i of either batch of
    a unit sees the parameters of row i (`take_rows` picks them), which is what DSA's re-seeding achieves.
    `sample(shape, g, units=U)` splits the rows into U equal consecutive units (e.g. one per class), each
    with its own group; plain `__call__` treats the whole batch as one unit, as DSA's evaluation does.
    """

    name = "dsa"

    def __init__(self, strategy: str = DSA_STRATEGY, crop: float = 0.125, cutout: float = 0.5, flip: float = 0.5,
                 scale: float = 1.2, degrees: float = 15.0):
        groups = tuple(strategy.split("_"))
        unknown = sorted(set(groups) - {"color", "crop", "cutout", "flip", "scale", "rotate"})
        if unknown or not strategy:
            raise ValueError(f"DSA strategy {strategy!r}: unknown group(s) {unknown}; use e.g. {DSA_STRATEGY}")
        self.strategy, self.crop, self.cutout, self.flip, self.scale, self.degrees = strategy, crop, cutout, flip, scale, degrees
        self.groups = groups

    def _op(self, group: str, shape) -> Transform:
        if group == "color":
            return ColorJitterDSA()
        if group == "crop":
            return RandomCropPad(int(shape[-1] * self.crop + 0.5))
        if group == "cutout":
            return RandomCutout(self.cutout)
        if group == "flip":
            return RandomHorizontalFlip(self.flip)
        if group == "scale":
            return RandomScale(self.scale)
        return RandomRotate(self.degrees)

    def sample(self, shape, generator, units: int = 1):
        b = shape[0]
        if units < 1 or b % units:
            raise ValueError(f"{b} rows do not split into {units} equal units")
        pick = torch.randint(0, len(self.groups), (units,), generator=generator, device=generator.device)
        params: Params = {"group": pick.repeat_interleave(b // units)}
        for group in self.groups:
            params[group] = self._op(group, shape).sample(shape, generator)
        return params

    def apply(self, x, params):
        group = params["group"].to(x.device)
        if len(group) != len(x):
            raise ValueError(f"DSA parameters for {len(group)} rows applied to {len(x)} images (use take_rows)")
        present = torch.unique(group).tolist()
        if len(present) == 1:
            name = self.groups[present[0]]
            return self._op(name, x.shape).apply(x, params[name])
        pieces, order = [], []
        for g in present:  # each group on its own rows, then the rows back in place
            rows = torch.nonzero(group == g).flatten()
            name = self.groups[g]
            pieces.append(self._op(name, x.shape).apply(x[rows], take_rows(params[name], rows)))
            order.append(rows)
        return torch.cat(pieces)[torch.argsort(torch.cat(order))]


# -- batch mixing: one λ and one partner permutation per batch ----------------------------------


@dataclass(repr=False)
class MixUp(Transform):
    """x̃ = λ·x + (1−λ)·x[π], λ ~ Beta(α, α); the targets are mixed with the same λ by the caller."""

    alpha: float = 0.8
    name = "mixup"

    def sample(self, shape, generator):
        lam = _beta(self.alpha, generator)
        perm = torch.randperm(shape[0], generator=generator, device=generator.device)
        return {"lam": lam, "perm": perm}

    def apply(self, x, params):
        lam = float(params["lam"])
        return lam * x + (1 - lam) * x[params["perm"].to(x.device)]


@dataclass(repr=False)
class CutMix(Transform):
    """Paste one box from x[π] into x; λ is then the kept area fraction (recomputed exactly)."""

    alpha: float = 1.0
    name = "cutmix"

    def sample(self, shape, generator):
        b, _, h, w = shape
        lam = _beta(self.alpha, generator)
        cut = math.sqrt(1.0 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy = int(torch.randint(0, h, (1,), generator=generator, device=generator.device))
        cx = int(torch.randint(0, w, (1,), generator=generator, device=generator.device))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        perm = torch.randperm(b, generator=generator, device=generator.device)
        lam_exact = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
        return {"lam": torch.tensor(lam_exact), "perm": perm, "box": torch.tensor([y0, y1, x0, x1])}

    def apply(self, x, params):
        y0, y1, x0, x1 = (int(v) for v in params["box"])
        out = x.clone()
        out[:, :, y0:y1, x0:x1] = x[params["perm"].to(x.device)][:, :, y0:y1, x0:x1]
        return out


def _beta(alpha: float, generator: torch.Generator) -> torch.Tensor:
    """One Beta(α, α) draw from the generator (via two Gamma draws made from uniforms)."""
    if alpha <= 0:
        return torch.tensor(1.0)
    # Beta(α, α) = G1 / (G1 + G2). torch's Beta/Gamma samplers take no generator, so the gamma
    # variates come from Marsaglia–Tsang, which needs only the generator's normals and uniforms.
    g1 = _gamma(alpha, generator)
    g2 = _gamma(alpha, generator)
    return torch.tensor(g1 / (g1 + g2))


def _gamma(alpha: float, generator: torch.Generator) -> float:
    """Marsaglia–Tsang gamma sampler driven only by `generator` (boost for α < 1)."""
    boost = 1.0
    if alpha < 1.0:
        u = float(torch.rand(1, generator=generator, device=generator.device))
        boost = u ** (1.0 / alpha)
        alpha += 1.0
    d = alpha - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        z = float(torch.randn(1, generator=generator, device=generator.device))
        v = (1.0 + c * z) ** 3
        if v <= 0:
            continue
        u = float(torch.rand(1, generator=generator, device=generator.device))
        if math.log(max(u, 1e-300)) < 0.5 * z * z + d - d * v + d * math.log(v):
            return d * v * boost


AUGMENTATIONS = Registry("augmentation")
AUGMENTATIONS.register("none", summary="no augmentation")(lambda: Compose([]))
AUGMENTATIONS.register("crop-flip", summary="4-pixel zero-pad crop + horizontal flip")(
    lambda: Compose([RandomCropPad(4), RandomHorizontalFlip()]))
AUGMENTATIONS.register("resized-crop-flip", summary="random resized crop (area 0.5–1) + horizontal flip")(
    lambda: Compose([RandomResizedCrop((0.5, 1.0)), RandomHorizontalFlip()]))
AUGMENTATIONS.register("imagenet-crop-flip", summary="ImageNet's training view: random resized crop (area 0.08–1, "
                       "aspect 3/4–4/3) + horizontal flip, of the stored (decode-time resized) image")(
    lambda: Compose([RandomResizedCrop((0.08, 1.0)), RandomHorizontalFlip()]))
AUGMENTATIONS.register("dsa", summary="DSA single mode: one of color/crop/cutout/flip/scale/rotate per batch")(DSA)

MIXES = Registry("mix")
MIXES.register("none", summary="no mixing")(lambda: None)
MIXES.register("mixup", summary="MixUp, λ ~ Beta(0.8, 0.8), one λ per batch")(lambda: MixUp(0.8))
MIXES.register("cutmix", summary="CutMix, λ ~ Beta(1, 1), one box per batch")(lambda: CutMix(1.0))


def build_augmentation(name: str) -> Transform:
    """A fresh augmentation by registered name (`ddkit list augmentations`)."""
    return AUGMENTATIONS.create(name)


def build_mix(name: str) -> Transform | None:
    """A fresh batch-mixing transform by registered name; None for `none`."""
    return MIXES.create(name)
