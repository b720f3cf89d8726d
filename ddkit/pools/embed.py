"""Teacher outputs on pool images: logits and L2-normalized embeddings of clean views.

The one place teacher scores of pool images come from (`ddkit pool score`, `ddkit pool dedup`, the
pool logits of the active-learning selectors); whole passes stream (`dataset_outputs`).
"""

from __future__ import annotations

import numpy as np
import torch

from ddkit.data.base import ImageDataset
from ddkit.data.stream import iter_batches
from ddkit.errors import InvalidInput
from ddkit.training import inference_batch

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


def dataset_outputs(teacher, dataset: ImageDataset, embedding: str | None = None, batch_size: int | None = None,
                    positions=None, normalization=None) -> tuple[torch.Tensor, np.ndarray | None]:
    """`teacher_outputs` over a whole dataset (or its `positions`, in that order), in one pass of
    `iter_batches`: a streamed dataset is decoded ahead in workers, never held whole. Returns the
    logits (N×C float32) and, with `embedding`, the embeddings (N×D float32 numpy).
    `normalization` defaults to the dataset's own."""
    normalization = normalization or dataset.info.normalization
    batch_size = batch_size or inference_batch(dataset.info.image_shape)
    was = teacher.model.training
    teacher.model.eval()
    logits, vectors = [], []
    try:
        for batch in iter_batches(dataset, batch_size, positions, normalized=False, raw=True):
            z, v = teacher_outputs(teacher, batch.x, normalization, embedding)
            logits.append(z)
            if v is not None:
                vectors.append(v)
    finally:
        teacher.model.train(was)
    out = torch.cat(logits) if logits else torch.empty(0, dataset.info.num_classes)
    if embedding is None:
        return out, None
    return out, torch.cat(vectors).numpy() if vectors else np.empty((0, 0), np.float32)


def teacher_embeddings(teacher, images, normalization, embedding: str = "map",
                       batch_size: int | None = None) -> np.ndarray:
    """L2-normalized teacher embeddings of clean images ([0, 1] pixels, uint8 or float), or of a
    dataset's images (`images` an ImageDataset, streamed or not, read in one pass).

    `map`: the flattened last feature map (keeps the layout, so copies stand out from merely
    similar images of a class); `pooled`: the classifier's input (more invariant: distinct images
    of one class come close, so it over-reports duplicates).
    """
    check_embedding(embedding)
    if isinstance(images, ImageDataset):
        return dataset_outputs(teacher, images, embedding, batch_size, normalization=normalization)[1]
    batch_size = batch_size or inference_batch(images.shape[1:])
    out = [teacher_outputs(teacher, images[start : start + batch_size], normalization, embedding)[1]
           for start in range(0, len(images), batch_size)]
    return torch.cat(out).numpy()
