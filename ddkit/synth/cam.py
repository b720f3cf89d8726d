"""Class activation maps and crop scoring, for any registered model (no per-model code).

`normalized_cam` is the CAM of Zhou et al. (2016) computed from the model's own contract
(`forward_all` → last conv feature map, `class_activation_map` → Σ_k w_{y,k} A_k): ReLU, bilinear
upsampling to the image size, min–max normalization to [0, 1] per image. A map with no positive
evidence for the class (all zero after ReLU) stays all zero.

`cam_ratio` is the share of an image's CAM mass that falls inside a crop box (NRR-DD's CIDD score);
`class_confidence` is the model's softmax probability of the class (RDED's and NRR-DD's crop score).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def normalized_cam(model, images: torch.Tensor, classes: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B×H×W CAM in [0, 1], B×K logits) of normalized `images` for `classes` (one per image, or one int)."""
    out = model.forward_all(images)
    b, _, h, w = images.shape
    classes = torch.as_tensor(classes, device=images.device).long().expand(b)
    cam = model.class_activation_map(out.feature_map, classes).float().clamp(min=0)
    cam = F.interpolate(cam.unsqueeze(1), size=(h, w), mode="bilinear", align_corners=False).squeeze(1)
    return minmax(cam), out.logits


def minmax(cam: torch.Tensor) -> torch.Tensor:
    """Per-map (B×H×W) min–max scaling to [0, 1]; a constant map becomes all zeros."""
    flat = cam.flatten(1)
    lo = flat.min(1).values.view(-1, 1, 1)
    span = (flat.max(1).values.view(-1, 1, 1) - lo)
    return torch.where(span > 0, (cam - lo) / span.clamp(min=torch.finfo(cam.dtype).tiny), torch.zeros_like(cam))


def box_mask(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """B×H×W: pixels whose centres lie in each box (x0, y0, x1, y1), the convention of
    `ddkit.augment.RandomResizedCrop` (pixel j is covered when x0 ≤ j ≤ x1 − 1)."""
    boxes = boxes.float()
    ys = torch.arange(height, device=boxes.device, dtype=boxes.dtype).view(1, height, 1)
    xs = torch.arange(width, device=boxes.device, dtype=boxes.dtype).view(1, 1, width)
    x0, y0, x1, y1 = (boxes[:, i].view(-1, 1, 1) for i in range(4))
    return (xs >= x0) & (xs <= x1 - 1) & (ys >= y0) & (ys <= y1 - 1)


def cam_ratio(cam: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """r = Σ_{i∈box} cam_i / Σ_i cam_i per image (0 for an all-zero map)."""
    inside = (cam * box_mask(boxes.to(cam.device), *cam.shape[-2:])).flatten(1).sum(1)
    total = cam.flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp(min=torch.finfo(cam.dtype).tiny), torch.zeros_like(total))


@torch.no_grad()
def class_confidence(model, images: torch.Tensor, classes: torch.Tensor | int, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax probability of the class, whether it is the arg-max) for normalized `images`."""
    probs = torch.cat([F.softmax(model(images[i: i + batch_size]).float(), -1) for i in range(0, len(images), batch_size)])
    classes = torch.as_tensor(classes, device=probs.device).long().expand(len(probs))
    rows = torch.arange(len(probs), device=probs.device)
    return probs[rows, classes], probs.argmax(1) == classes


__all__ = ["box_mask", "cam_ratio", "class_confidence", "minmax", "normalized_cam"]
