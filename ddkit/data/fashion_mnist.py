"""Fashion-MNIST read straight from its four IDX files, wherever they are on this machine.

Fashion-MNIST is ddkit's reference dataset, so it must load offline: besides the usual data folders
we read the Debian/Ubuntu package `dataset-fashion-mnist` (installed at /usr/share/datasets/), and
only then try torchvision's downloader. The files are parsed once per process (they are loaded
often, e.g. to build pools and reference subsets) and every caller gets its own tensor copy.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch

from ddkit.data.base import DatasetInfo, ImageDataset, Normalization
from ddkit.data.idx import read_idx
from ddkit.data.locations import cache_root, download_root, env_root, unavailable
from ddkit.errors import DatasetUnavailable, FileFormatError

NAME = "fashion-mnist"
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
IMAGE_SHAPE = (1, 28, 28)
NORMALIZATION = Normalization((0.2860,), (0.3530,))
INFO = DatasetInfo(NAME, CLASS_NAMES, IMAGE_SHAPE, NORMALIZATION)

# File stems per split (images, labels); each may also exist with a .gz suffix.
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
APT_HINT = "apt-get install dataset-fashion-mnist"


def search_folders() -> list[Path]:
    """Folders searched for the IDX files, in order; the first holding a split's two files wins."""
    folders: list[Path] = []
    env = env_root()
    if env is not None:
        folders += [env, env / "fashion-mnist", env / "FashionMNIST" / "raw"]
    folders += [Path("data") / "FashionMNIST" / "raw", cache_root() / "FashionMNIST" / "raw", DEBIAN_DIR]
    return folders


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def source_paths(split: str, folders: list[Path] | None = None) -> tuple[Path, Path] | None:
    """The (images, labels) files the loader reads for `split`, or None when none are on disk."""
    for folder in search_folders() if folders is None else folders:
        found = [_find(folder, stem) for stem in FILES[split]]
        if all(found):
            return found[0], found[1]
    return None


def download(root: Path) -> Path:
    """Fetch the four files with torchvision into `root`/FashionMNIST/raw and return that folder."""
    import torchvision

    torchvision.datasets.FashionMNIST(str(root), train=True, download=True)
    return root / "FashionMNIST" / "raw"


def _locate_or_download(split: str) -> tuple[Path, Path]:
    found = source_paths(split)
    if found is not None:
        return found
    try:
        folder = download(download_root())
    except (OSError, RuntimeError) as exc:
        raise unavailable(NAME, exc, f"`{APT_HINT}` (Debian/Ubuntu; read from {DEBIAN_DIR})",
                          files="the four IDX files (train-/t10k-images-idx3-ubyte, -labels-idx1-ubyte, "
                                ".gz or not)") from exc
    found = source_paths(split, [folder])
    if found is None:
        raise DatasetUnavailable(
            f"the Fashion-MNIST download finished but {folder} lacks the {split} files",
            f"remove {folder} and retry, or `{APT_HINT}`",
        )
    return found


@functools.lru_cache(maxsize=4)
def _read_split(images_path: str, labels_path: str, _stamp: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Parse and check one split's files; `_stamp` (sizes, mtimes) invalidates the cache on change."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE[1:]:
        raise FileFormatError(
            f"{images_path} holds {images.dtype} data of shape {images.shape}, expected uint8 N×28×28",
            "this is not a Fashion-MNIST image file; replace it with the original",
        )
    if labels.dtype != np.uint8 or labels.ndim != 1 or len(labels) != len(images):
        raise FileFormatError(
            f"{labels_path} holds {labels.dtype} labels of shape {labels.shape} for {len(images)} images",
            "use the label file that belongs to the image file",
        )
    if len(labels) and int(labels.max()) >= len(CLASS_NAMES):
        raise FileFormatError(f"{labels_path} has label {int(labels.max())}; Fashion-MNIST has 10 classes",
                              "replace it with the original label file")
    return images, labels


def _file_stamp(*paths: Path) -> tuple:
    stats = [os.stat(p) for p in paths]
    return tuple((s.st_size, s.st_mtime_ns) for s in stats)


def load(split: str) -> ImageDataset:
    """The full Fashion-MNIST `split` (60000 train / 10000 test), ids = row in the IDX files."""
    images_path, labels_path = _locate_or_download(split)
    images, labels = _read_split(str(images_path), str(labels_path), _file_stamp(images_path, labels_path))
    return ImageDataset(
        INFO, split,
        torch.tensor(images).unsqueeze(1),
        torch.tensor(labels, dtype=torch.long),
        source=str(images_path.parent),
    )
