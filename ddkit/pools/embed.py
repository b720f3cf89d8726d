"""Teacher outputs on pool images: logits and L2-normalized embeddings of clean views.

The one place teacher scores of pool images come from (`ddkit pool score`, `ddkit pool dedup`).
"""

from __future__ import annotations

import numpy as np
import torch

from ddkit.errors import InvalidInput

EMBEDDINGS = ("map", "pooled")


def check_embedding(embedding: str) -> str:
    if embedding not in EMBEDDINGS:
        raise InvalidInput(f"unknown embedding {embedding!r}", f"use one of {', '.join(EMBEDDINGS)}")
    return embedding


@torch.no_grad()
def teacher_outputs(teacher, images: torch.Tensor, normalization, embedding: str | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One batch of clean images ([0, 1] pixels, uint8 or float) through a teacher: its logits and,
    with `embedding`, the L2-normalized embeddings (both float32 on the CPU).

    The only view is the teacher's normalization (no augmentation), so the outputs are a
    deterministic function of the pixels: the one place teacher scores of pool images come from.
    """
    device = next(teacher.model.parameters()).device
    x = images.to(device)  # uint8 pixels cross to a GPU: a quarter of the float32 bytes, converted there
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    result = teacher.model.forward_all(normalization.apply(x))
    vectors = None
    if embedding is not None:
        vectors = result.feature_map.flatten(1) if check_embedding(embedding) == "map" else result.pooled
        vectors = torch.nn.functional.normalize(vectors.float(), dim=1).cpu()
    return result.logits.float().cpu(), vectors


def teacher_embeddings(teacher, images: torch.Tensor, normalization, embedding: str = "map",
                       batch_size: int = 512) -> np.ndarray:
    """L2-normalized teacher embeddings of clean images ([0, 1] pixels, uint8 or float).

    `map`: the flattened last feature map (keeps the layout, so copies stand out from merely
    similar images of a class); `pooled`: the classifier's input (more invariant: distinct images
    of one class come close, so it over-reports duplicates).
    """
    check_embedding(embedding)
    out = [teacher_outputs(teacher, images[start : start + batch_size], normalization, embedding)[1]
           for start in range(0, len(images), batch_size)]
    return torch.cat(out).numpy()
