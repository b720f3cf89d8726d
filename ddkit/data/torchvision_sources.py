"""MNIST, CIFAR-10 and CIFAR-100 through torchvision's dataset classes, by one shared helper.

Each is looked for under the ddkit data roots (`$DDKIT_DATA`, `./data`, `~/.cache/ddkit`) in
torchvision's own layout, then downloaded into `$DDKIT_DATA` or the cache. The pixels are converted
once per process to uint8 N×C×H×W tensors; every caller gets its own copy.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from ddkit.data.base import DatasetInfo, ImageDataset, Normalization
from ddkit.data.locations import data_roots, download_root, unavailable
from ddkit.errors import FileFormatError


@dataclass(frozen=True)
class TorchvisionSource:
    """A ddkit name bound to a torchvision dataset class and its standard normalization."""

    name: str
    torchvision_class: str
    normalization: Normalization


SOURCES = {
    s.name: s
    for s in (
        TorchvisionSource("mnist", "MNIST", Normalization((0.1307,), (0.3081,))),
        TorchvisionSource("cifar10", "CIFAR10", Normalization((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))),
        TorchvisionSource("cifar100", "CIFAR100", Normalization((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))),
    )
}


def _open(source: TorchvisionSource, split: str):
    """The torchvision dataset object and the root it came from (searching, then downloading)."""
    import torchvision.datasets

    cls = getattr(torchvision.datasets, source.torchvision_class)
    train = split == "train"
    for root in data_roots():
        try:
            return cls(str(root), train=train, download=False), root
        except RuntimeError:  # torchvision's "not found or corrupted"
            continue
    root = download_root()
    try:
        return cls(str(root), train=train, download=True), root
    except (OSError, RuntimeError) as exc:
        raise unavailable(source.name, exc, files=f"torchvision's {source.torchvision_class} folder") from exc


def _to_tensors(dataset, where: str) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """uint8 N×C×H×W images, int64 labels and class names from a torchvision dataset object."""
    data = dataset.data.numpy() if isinstance(dataset.data, torch.Tensor) else np.asarray(dataset.data)
    if data.dtype != np.uint8 or data.ndim not in (3, 4):
        raise FileFormatError(f"{where} gave {data.dtype} pixels of shape {data.shape}",
                              "delete the folder so ddkit downloads a fresh copy")
    data = data[:, None] if data.ndim == 3 else data.transpose(0, 3, 1, 2)  # N×H×W(×C) -> N×C×H×W
    labels = torch.as_tensor(np.asarray(dataset.targets), dtype=torch.long)
    return torch.from_numpy(np.ascontiguousarray(data)), labels, tuple(str(c) for c in dataset.classes)


@functools.lru_cache(maxsize=4)
def _load_tensors(name: str, split: str, _roots: tuple[str, ...]):
    dataset, root = _open(SOURCES[name], split)
    return (*_to_tensors(dataset, f"{name} under {root}"), str(root))


def load(name: str, split: str) -> ImageDataset:
    """Split `split` of the torchvision-backed dataset `name` (a key of SOURCES)."""
    source = SOURCES[name]
    images, labels, classes, root = _load_tensors(name, split, tuple(str(r) for r in data_roots()))
    info = DatasetInfo(name, classes, tuple(images.shape[1:]), source.normalization)
    return ImageDataset(info, split, images.clone(), labels.clone(),
                        source=f"torchvision {source.torchvision_class} in {root}")
