"""The BatchNorm-statistics matching loss of SRe2L, used by INFER and NRR-DD.

Forward hooks on every BatchNorm layer of any registered model (no per-model code) record how far
the current batch's per-channel statistics at that layer's input are from the running statistics
the teacher learned: `R_l = ‖running_var_l − σ²_l‖₂ + ‖running_mean_l − μ_l‖₂` with μ, σ² the
per-channel mean and biased variance over (B, H, W). The loss is `w_1·R_1 + Σ_{l≥2} R_l`.
"""

from __future__ import annotations

import torch
from torch import nn


def bn_layer_distance(inputs: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor) -> torch.Tensor:
    """R_l for one layer: plain (not squared) L2 norms of the mean and variance gaps."""
    dims = [0] + list(range(2, inputs.ndim))
    mean = inputs.mean(dim=dims)
    var = inputs.var(dim=dims, unbiased=False)
    return torch.linalg.vector_norm(running_var - var) + torch.linalg.vector_norm(running_mean - mean)


class BNStatisticsLoss:
    """Hooks a model's BatchNorm layers; after each forward, `loss()` is the weighted sum of R_l.

    Use as a context manager so the hooks are removed afterwards:

        with BNStatisticsLoss(teacher, first_layer_weight=10.0) as bn:
            logits = teacher(x)
            loss = ce + r_bn * bn.loss()
    """

    def __init__(self, model: nn.Module, first_layer_weight: float = 10.0):
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not self.layers:
            raise ValueError("the model has no BatchNorm layers")
        self.first_layer_weight = first_layer_weight
        self._distances: list[torch.Tensor | None] = [None] * len(self.layers)
        self._handles = [layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(self.layers)]

    def _hook(self, index: int):
        def hook(module, inputs, output):
            self._distances[index] = bn_layer_distance(inputs[0], module.running_mean, module.running_var)

        return hook

    def per_layer(self) -> list[torch.Tensor]:
        if any(d is None for d in self._distances):
            raise RuntimeError("run a forward pass through the model before asking for the BN loss")
        return list(self._distances)  # type: ignore[arg-type]

    def loss(self) -> torch.Tensor:
        distances = self.per_layer()
        return self.first_layer_weight * distances[0] + sum(distances[1:], torch.zeros_like(distances[0]))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> "BNStatisticsLoss":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
