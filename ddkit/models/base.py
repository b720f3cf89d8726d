"""The contract every registered model follows: feature map -> pooled features -> linear classifier.

Methods that need a model's insides (CAM for NRR-DD, KD³'s projector, feature-space selection) use
`features`, `pool` and `classifier` instead of editing a model per method.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class ModelOutput(NamedTuple):
    logits: torch.Tensor
    pooled: torch.Tensor  # classifier input, B×D
    feature_map: torch.Tensor  # last conv map, B×K×h×w


class ImageClassifier(nn.Module):
    """Base of every registered model.

    Subclasses build `self.body` (input -> last conv feature map), set `self.pooling` to "avg"
    (global average pool) or "flatten", and create `self.classifier` (nn.Linear on the pooled vector).
    `self.arch` and `self.arch_kwargs` record how to rebuild the model (teacher files store them).
    """

    pooling: str = "avg"
    body: nn.Module
    classifier: nn.Linear

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def pool(self, feature_map: torch.Tensor) -> torch.Tensor:
        if self.pooling == "avg":
            return feature_map.mean(dim=(2, 3))
        return feature_map.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))

    def forward_all(self, x: torch.Tensor) -> ModelOutput:
        fmap = self.features(x)
        pooled = self.pool(fmap)
        return ModelOutput(self.classifier(pooled), pooled, fmap)

    @property
    def feature_dim(self) -> int:
        return self.classifier.in_features

    def class_activation_map(self, feature_map: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Each location's contribution to the logit of `classes` (B×h×w, before ReLU/normalizing).

        For global average pooling this is the classic CAM `Σ_k w_{y,k} A_k`; for a flattening head
        it is the exact per-location term of the linear layer, `Σ_k W_{y,k,i,j} A_{k,i,j}`.
        """
        weight = self.classifier.weight[classes]  # B×D
        b, k, h, w = feature_map.shape
        if self.pooling == "avg":
            return torch.einsum("bk,bkhw->bhw", weight, feature_map)
        return (weight.view(b, k, h, w) * feature_map).sum(1)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def make_norm(kind: str, channels: int) -> nn.Module:
    """`batch` (BatchNorm2d), `instance` (per-channel GroupNorm with affine, the DC convention), `none`."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be batch, instance or none, got {kind!r}")
