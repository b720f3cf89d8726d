"""Per-channel pixel statistics, used to derive a Normalization from a dataset's train split."""

from __future__ import annotations

import torch

from ddkit.data.base import Normalization


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> Normalization:
    """Per-channel mean/std of uint8 N×C×H×W pixels scaled to [0, 1] (float64 accumulation).

    A constant channel (std ≈ 0) gets std 1 so normalizing it never divides by zero.
    """
    c = images.shape[1]
    total, sq, count = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64), 0
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].to(torch.float64).div_(255.0).transpose(0, 1).reshape(c, -1)
        total += x.sum(1)
        sq += (x * x).sum(1)
        count += x.shape[1]
    mean = total / max(count, 1)
    std = (sq / max(count, 1) - mean * mean).clamp_min(0).sqrt()
    std = torch.where(std < 1e-6, torch.ones_like(std), std)
    return Normalization(tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std))
