"""The in-memory labeled image set every ddkit component consumes, and its describing records.

Pixels are kept in [0, 1] (uint8 or float); the normalization a dataset is trained with travels with
it and is applied when samples are read, so a stored file can be de-normalized and shown correctly.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Sequence

import numpy as np
import torch

# The records (torch-free, so headers can be read without torch) live in ddkit.datainfo.
from ddkit.datainfo import (  # noqa: F401
    MAX_CHANNELS,
    MAX_IMAGE_SIDE,
    DatasetInfo,
    Normalization,
    check_image_shape,
)
from ddkit.errors import InvalidInput
from ddkit.seeding import numpy_rng


def check_pixels(images: torch.Tensor, image_shape: Sequence[int] | None = None, what: str = "images") -> None:
    """Refuse NaN/inf, out-of-range values and wrong shapes with one clear message."""
    if images.ndim != 4:
        raise InvalidInput(f"{what} must be N×C×H×W, got shape {tuple(images.shape)}", "reshape to N×C×H×W")
    if image_shape is not None and tuple(images.shape[1:]) != tuple(image_shape):
        raise InvalidInput(
            f"{what} have shape C×H×W = {tuple(images.shape[1:])}, expected {tuple(image_shape)}",
            "resize/convert the images to the dataset's shape",
        )
    if images.dtype == torch.uint8:
        return
    if not torch.isfinite(images).all():
        bad = int((~torch.isfinite(images)).flatten(1).any(1).sum())
        raise InvalidInput(f"{what} contain NaN or inf values ({bad} images)", "drop or repair those images")
    if images.numel() == 0:
        return
    lo, hi = float(images.min()), float(images.max())
    if lo < 0.0 or hi > 1.0:
        raise InvalidInput(
            f"{what} have pixel values in [{lo:.4g}, {hi:.4g}], outside [0, 1]",
            "store de-normalized pixels in [0, 1] (clamp, or divide uint8 data by 255)",
        )


def transformed_sample(x: torch.Tensor, y: int, transform=None, target_transform=None) -> tuple:
    """One (image, label) sample after the optional torchvision-style transforms: the `__getitem__`
    contract shared by every ddkit dataset (real datasets and distilled files)."""
    if transform is not None:
        x = transform(x)
    if target_transform is not None:
        y = target_transform(y)
    return x, y


class ImageDataset(torch.utils.data.Dataset):
    """A labeled image set held in memory, in the torchvision dataset style.

    `images` are N×C×H×W, uint8 (0..255) or float in [0, 1]; `ids` are stable sample ids into the
    source split (the row in the source's canonical order), kept through `subset`. Items are
    `(transform(normalized image), target_transform(label))`.
    """

    def __init__(
        self,
        info: DatasetInfo,
        split: str,
        images: torch.Tensor,
        labels: torch.Tensor,
        ids: torch.Tensor | None = None,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        source: str = "",
    ):
        check_pixels(images, info.image_shape, f"{info.name}/{split} images")
        if labels.ndim != 1 or len(labels) != len(images):
            raise InvalidInput(f"{len(images)} images but labels of shape {tuple(labels.shape)}", "one label per image")
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= info.num_classes):
            raise InvalidInput(
                f"labels span [{int(labels.min())}, {int(labels.max())}] but the dataset has {info.num_classes} classes",
                "fix the labels or the class list",
            )
        self.info = info
        self.split = split
        self.images = images
        self.labels = labels.long()
        self.ids = torch.arange(len(images), dtype=torch.long) if ids is None else ids.long()
        self.transform = transform
        self.target_transform = target_transform
        self.source = source
        self._fingerprint: str | None = None
        # (fingerprint of an indexed source's content, its row count): set for sources read through an
        # index (image folders), so the same samples fingerprint alike in memory and streamed
        self.indexed_content: tuple[str, int] | None = None

    # -- torchvision-style access ------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return transformed_sample(self.info.normalization.apply(self.pixels(index)), int(self.labels[index]),
                                  self.transform, self.target_transform)

    def __repr__(self) -> str:
        lines = [
            f"ImageDataset {self.info.name} ({self.split})",
            f"    Number of datapoints: {len(self)}",
            f"    Image shape: {tuple(self.info.image_shape)}, classes: {self.info.num_classes}",
        ]
        if self.source:
            lines.append(f"    Source: {self.source}")
        if self.transform is not None:
            lines.append(f"    Transform: {self.transform!r}")
        return "\n".join(lines)

    # -- bulk access ---------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    def pixels(self, index=slice(None)) -> torch.Tensor:
        """Float32 pixels in [0, 1] for `index` (an int, slice, or index tensor)."""
        x = self.images[index]
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()

    def normalized(self, index=slice(None)) -> torch.Tensor:
        return self.info.normalization.apply(self.pixels(index))

    def subset(self, indices) -> "ImageDataset":
        """The samples at positions `indices`, keeping their source ids."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        out = ImageDataset(
            self.info, self.split, self.images[idx], self.labels[idx], self.ids[idx],
            self.transform, self.target_transform, self.source,
        )
        out.indexed_content = self.indexed_content
        return out

    def class_indices(self) -> list[torch.Tensor]:
        """Positions of each class's samples, in order."""
        return [torch.nonzero(self.labels == c).flatten() for c in range(self.num_classes)]

    def ids_sha256(self) -> str:
        """Hash of the dataset name, split and sample id list (the source id-list hash)."""
        h = hashlib.sha256(f"{self.info.name}/{self.split}/".encode())
        h.update(self.ids.numpy().astype("<i8").tobytes())
        return h.hexdigest()

    def fingerprint(self) -> str:
        """Hash of the id list and of the pixel data: ids resolve to the same pixels iff equal.

        For an indexed source the index's content hash stands for the pixels (`indexed_fingerprint`),
        which the streamed path computes without reading them."""
        if self._fingerprint is None and self.indexed_content is not None:
            self._fingerprint = indexed_fingerprint(self.ids_sha256(), *self.indexed_content, self.ids, self.labels)
        if self._fingerprint is None:
            h = hashlib.sha256(self.ids_sha256().encode())
            images = self.images.contiguous()
            h.update(str(images.dtype).encode() + str(tuple(images.shape)).encode())
            h.update(images.numpy().tobytes())
            h.update(self.labels.numpy().astype("<i8").tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint


def indexed_fingerprint(ids_sha256: str, content: str, total: int, rows, labels: torch.Tensor) -> str:
    """The fingerprint of samples at `rows` of an indexed source whose content hash is `content`."""
    h = hashlib.sha256(ids_sha256.encode())
    h.update(f"{content}/{total}".encode())
    h.update(np.asarray(rows, dtype="<i8").tobytes())
    h.update(labels.numpy().astype("<i8").tobytes())
    return h.hexdigest()


def train_val_split(dataset: ImageDataset, val_fraction: float = 0.1, seed: int = 0) -> tuple[ImageDataset, ImageDataset]:
    """Deterministic class-stratified split of a training set, used for every hyper-parameter choice.

    It depends only on the dataset's ids, labels and `seed`, never on the test split.
    """
    if dataset.split == "test":
        raise InvalidInput("refusing to split the test set for validation", "split the training set")
    if not 0.0 < val_fraction < 1.0:
        raise InvalidInput(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = numpy_rng(seed, "train-val-split", dataset.info.name)
    train_idx, val_idx = [], []
    for cls_idx in dataset.class_indices():
        order = cls_idx.numpy()[rng.permutation(len(cls_idx))]
        n_val = max(1, int(round(len(order) * val_fraction))) if len(order) > 1 else 0
        val_idx.append(np.sort(order[:n_val]))
        train_idx.append(np.sort(order[n_val:]))
    train = dataset.subset(np.sort(np.concatenate(train_idx)))
    val = dataset.subset(np.sort(np.concatenate(val_idx)))
    train.split, val.split = f"{dataset.split}[train]", f"{dataset.split}[val]"
    return train, val


def class_balanced_indices(dataset: ImageDataset, per_class: int, seed: int, salt: str = "random-subset") -> np.ndarray:
    """`per_class` random positions of every class, seeded; sorted by class then position.

    The one sampler behind the random-real synthesizer, the random selector and the evaluator's
    random baseline, so "random at the same budget" means the same thing everywhere.
    """
    rng = numpy_rng(seed, salt, dataset.info.name, per_class)
    picks = []
    for idx in per_class_positions(dataset, per_class):
        picks.append(np.sort(idx.numpy()[rng.choice(len(idx), per_class, replace=False)]))
    return np.concatenate(picks)


def per_class_positions(dataset: ImageDataset, per_class: int) -> list[torch.Tensor]:
    """Each class's positions (`class_indices`), refusing a budget that some class cannot fill."""
    if per_class < 1:
        raise InvalidInput(f"images per class must be ≥ 1, got {per_class}")
    positions = dataset.class_indices()
    for c, idx in enumerate(positions):
        if len(idx) < per_class:
            raise InvalidInput(
                f"class {dataset.info.class_names[c]!r} has {len(idx)} images, fewer than the {per_class} asked",
                "lower the budget (IPC) or use a larger dataset",
            )
    return positions
