"""`fashion-mnist-mini` — a class-balanced subset of Fashion-MNIST embedded in the package.

It is every command's default dataset, so ddkit works out of the box and offline: 500 images per
class from train and 200 per class from test (7000 images, ~3 MB as gzip-compressed HDF5). The
samples' ids are their rows in the FULL Fashion-MNIST split, so anything made from the mini set
resolves to the full set exactly; the asset records the sha256 of the IDX files it was cut from,
the seed and the command that made it (`scripts/make_fashion_mnist_mini.py`, via `build`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import h5py
import numpy as np
import torch

from ddkit.data import fashion_mnist
from ddkit.data.base import DatasetInfo, ImageDataset
from ddkit.data.idx import read_bytes
from ddkit.errors import FileFormatError
from ddkit.fileio import atomic_output, sha256_file
from ddkit.h5safe import open_hdf5
from ddkit.seeding import numpy_rng

NAME = "fashion-mnist-mini"
FORMAT = "ddkit.fashion-mnist-mini"
SCHEMA = 1
ASSET_PATH = Path(__file__).parent / "assets" / "fashion_mnist_mini.h5"
SEED = 0
PER_CLASS = {"train": 500, "test": 200}
COMMAND = "python scripts/make_fashion_mnist_mini.py"
INFO = DatasetInfo(NAME, fashion_mnist.CLASS_NAMES, fashion_mnist.IMAGE_SHAPE, fashion_mnist.NORMALIZATION)
_REBUILD = f"reinstall ddkit, or regenerate the asset with `{COMMAND}` (needs the full Fashion-MNIST)"


# -- reading -----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _read(path: str, split: str, _stamp: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The split's (images, labels, ids) arrays, after checking the asset's format and shapes."""
    try:
        f = open_hdf5(path, what=f"{NAME} asset")
    except FileFormatError as exc:
        raise FileFormatError(f"the {NAME} asset {path} is missing or damaged ({exc.problem})", _REBUILD) from None
    try:
        with f:
            if f.attrs.get("format") != FORMAT:
                raise FileFormatError(f"{path} is not a {NAME} asset (format attr {f.attrs.get('format')!r})", _REBUILD)
            if int(f.attrs.get("schema", -1)) != SCHEMA:
                raise FileFormatError(f"{path} has schema {f.attrs.get('schema')}, this ddkit reads {SCHEMA}", _REBUILD)
            images, labels, ids = (f[f"{split}/{k}"][()] for k in ("images", "labels", "ids"))
    except (OSError, KeyError) as exc:
        raise FileFormatError(f"the {NAME} asset {path} is missing or damaged ({exc})", _REBUILD) from exc
    if (images.dtype != np.uint8 or images.shape[1:] != INFO.image_shape
            or not len(images) == len(labels) == len(ids) or labels.ndim != 1 or ids.ndim != 1):
        raise FileFormatError(f"{path}: {split} arrays have inconsistent shapes/dtypes", _REBUILD)
    return images, labels.astype(np.int64), ids.astype(np.int64)


def load(split: str, path: str | os.PathLike | None = None) -> ImageDataset:
    """The mini set's `split`; `ids` are rows of the full Fashion-MNIST split."""
    path = Path(path or ASSET_PATH)
    if not path.is_file():
        raise FileFormatError(f"the {NAME} asset {path} is missing", _REBUILD)
    st = path.stat()
    images, labels, ids = _read(str(path), split, (st.st_size, st.st_mtime_ns))
    return ImageDataset(INFO, split, torch.tensor(images), torch.tensor(labels), torch.tensor(ids),
                        source=f"embedded asset {path.name}")


def attrs(path: str | os.PathLike | None = None) -> dict:
    """The asset's provenance attributes (JSON-decoded where stored as JSON)."""
    with open_hdf5(path or ASSET_PATH, what=f"{NAME} asset") as f:
        out = dict(f.attrs)
    for key in ("source_files", "per_class_counts", "class_names", "normalization"):
        if key in out:
            out[key] = json.loads(out[key])
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in out.items()}


# -- building ----------------------------------------------------------------------------------
def choose(labels: np.ndarray, per_class: int, seed: int, split: str) -> np.ndarray:
    """Sorted row indices: `per_class` rows of each class, drawn with a seed derived per class."""
    picked = []
    for c in range(len(INFO.class_names)):
        rows = np.flatnonzero(labels == c)
        if len(rows) < per_class:
            raise FileFormatError(f"Fashion-MNIST {split} has only {len(rows)} images of class {c}",
                                  f"ask for at most {len(rows)} per class")
        picked.append(rows[numpy_rng(seed, NAME, split, c).choice(len(rows), per_class, replace=False)])
    return np.sort(np.concatenate(picked))


def _source_record(path: Path) -> dict:
    return {"name": path.name, "sha256": sha256_file(path), "idx_sha256": hashlib.sha256(read_bytes(path)).hexdigest()}


def build(out: str | os.PathLike = ASSET_PATH, seed: int = SEED, per_class: dict | None = None,
          command: str = COMMAND) -> Path:
    """Cut the mini set from the full `fashion-mnist` source and write it atomically to `out`.

    Deterministic: the same source files, seed and counts give the same pixel bytes (and, since no
    timestamps are stored, the same file).
    """
    from ddkit import __version__

    per_class = dict(PER_CLASS if per_class is None else per_class)
    files, counts = [], {}
    out = Path(out)
    with atomic_output(out, overwrite=True) as tmp, h5py.File(tmp, "w", track_order=True) as f:
        for split in ("train", "test"):
            full = fashion_mnist.load(split)
            rows = choose(full.labels.numpy(), per_class[split], seed, split)
            files += [_source_record(p) for p in fashion_mnist.source_paths(split)]
            group = f.create_group(split)
            n = len(rows)
            group.create_dataset("images", data=full.images[rows].numpy(), chunks=(min(n, 500), *INFO.image_shape),
                                 compression="gzip", compression_opts=9, track_times=False)
            for key, values in (("labels", full.labels[rows]), ("ids", full.ids[rows])):
                group.create_dataset(key, data=values.numpy().astype(np.int64), compression="gzip",
                                     compression_opts=9, track_times=False)
            counts[split] = np.bincount(full.labels[rows].numpy(), minlength=len(INFO.class_names)).tolist()
        f.attrs.update({
            "format": FORMAT,
            "schema": SCHEMA,
            "ddkit_version": __version__,
            "source_dataset": fashion_mnist.NAME,
            "source_files": json.dumps(files),
            "seed": seed,
            "per_class_counts": json.dumps(counts),
            "class_names": json.dumps(list(INFO.class_names)),
            "normalization": json.dumps(INFO.normalization.to_dict()),
            "command": command,
            "license_note": "subset of Fashion-MNIST (Zalando Research, MIT license)",
        })
    return out
