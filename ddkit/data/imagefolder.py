"""`imagefolder:PATH` — a user's own images in PATH/train/<class>/ and PATH/test/<class>/.

The class-name -> label map is explicit and stored in PATH/classes.json (a JSON list, index order).
It is never inferred from a directory listing: a listing's order depends on how folders were named,
and a silently different order would relabel every stored set and teacher made from the folder.
`write_class_map` creates the file. Normalization is the per-channel mean/std of the TRAIN pixels
(also when only the test split is loaded), so train and test always share it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ddkit.data.base import DatasetInfo, ImageDataset
from ddkit.data.batch_decode import decode_plan
from ddkit.data.decode import read_fit, read_normalization
from ddkit.data.manifest import index_split
from ddkit.data.stream import FolderReader, StreamedImageDataset, read_rows, should_stream
from ddkit.errors import DatasetUnavailable, FileFormatError, InvalidInput
from ddkit.fileio import atomic_output

CLASS_MAP = "classes.json"
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


def check_class_names(class_names, where: str) -> tuple[str, ...]:
    """A class map as read from JSON: a non-empty list of distinct names that can be folder names."""
    names = list(class_names) if not isinstance(class_names, str) else None
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise InvalidInput(f"{where}: the class map must be a non-empty list of non-empty names",
                           'e.g. ["cat", "dog"] — index 0 is "cat"')
    bad = [n for n in names if n in (".", "..") or "/" in n or "\\" in n or n != n.strip()]
    if bad:
        raise InvalidInput(f"{where}: class names {bad} cannot be folder names", "rename those classes and folders")
    from collections import Counter

    dupes = sorted(n for n, count in Counter(names).items() if count > 1)  # linear: a map may list 10^5 names
    if dupes:
        raise InvalidInput(f"{where}: class names {dupes} appear more than once", "list each class once")
    return tuple(names)


def write_class_map(root: str | os.PathLike, class_names, overwrite: bool = False) -> Path:
    """Write ROOT/classes.json (atomically): `class_names[i]` is the name of label i.

    Refuses to replace an existing map unless `overwrite`, because a new order relabels the data.
    """
    names = check_class_names(class_names, str(root))
    with atomic_output(Path(root) / CLASS_MAP, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(list(names), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return Path(root) / CLASS_MAP


def _subfolders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_class_map(root: Path) -> tuple[str, ...]:
    """The stored class names in label order; a missing or malformed map is a clear error."""
    path = root / CLASS_MAP
    if not path.is_file():
        found = _subfolders(root / "train") if (root / "train").is_dir() else []
        raise FileFormatError(
            f"{root} has no {CLASS_MAP}: the class-name -> label map must be explicit",
            f"create it once, in the label order you want, e.g. python -c \"from ddkit.data.imagefolder import "
            f"write_class_map; write_class_map({str(root)!r}, {found!r})\" (folders of train/ by name; reorder "
            f"as needed), or write a JSON list of class names to {path}",
        )
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FileFormatError(f"{path} is not readable JSON ({exc})", "write a JSON list of class names") from exc
    if not isinstance(names, list):
        raise FileFormatError(f"{path} holds a {type(names).__name__}, not a list", "write a JSON list of class names")
    return check_class_names(names, str(path))


def list_split(root: Path, split: str, class_names: tuple[str, ...]) -> tuple[list[str], np.ndarray]:
    """The split's files in canonical order (classes in map order, files by name), as paths relative
    to `root` and their labels: plain strings, not Path objects, since a listing of millions of files
    is held while the folder is indexed (a Path costs ~500 bytes)."""
    folder = root / split
    if not folder.is_dir():
        raise DatasetUnavailable(f"{root} has no {split}/ folder", f"put the {split} images in {folder}/<class>/")
    on_disk = set(_subfolders(folder))
    extra, missing = sorted(on_disk - set(class_names)), [c for c in class_names if c not in on_disk]
    if extra or missing:
        parts = ([f"folders not in {CLASS_MAP}: {extra}"] if extra else []) + (
            [f"classes without a folder: {missing}"] if missing else [])
        raise InvalidInput(f"{folder} does not match {root / CLASS_MAP}: " + "; ".join(parts),
                           f"make {CLASS_MAP} and the folders of {split}/ name the same classes")
    paths: list[str] = []
    counts = []
    for name in class_names:
        with os.scandir(folder / name) as entries:
            files = sorted(e.name for e in entries
                           if not e.name.startswith(".") and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
                           and (e.is_file() or e.is_symlink()))  # a broken link is listed, then skipped
        if not files and split == "train":
            raise InvalidInput(f"class {name!r} has no images in {folder / name}", "add images or drop the class")
        paths += [os.path.join(split, name, f) for f in files]
        counts.append(len(files))
    return paths, np.repeat(np.arange(len(class_names), dtype=np.int64), counts)


def _manifests(root: Path) -> tuple:
    """The train manifest (always: it gives the normalization and the image shape) and the class map."""
    class_names = read_class_map(root)
    fit = read_fit(root)
    return class_names, fit, index_split(root, "train", class_names, fit, *list_split(root, "train", class_names))


_DECODED: dict[tuple, torch.Tensor] = {}  # (root, split, manifest fingerprint, decode plan) -> pixels, a few at most


def _in_memory(root: str, split: str, fingerprint: str, reader: FolderReader) -> torch.Tensor:
    """A split decoded once per process (keyed by its manifest's fingerprint, so a change re-reads, and
    by the decode backend, whose pixels may differ by the resize's rounding)."""
    plan = decode_plan()
    key = (root, split, fingerprint, plan)
    if key not in _DECODED:
        rows = np.arange(len(reader))
        batches = [rows[i:i + 256] for i in range(0, len(rows), 256)]
        _DECODED[key] = torch.cat(list(read_rows(reader, batches, None if len(batches) > 1 else 0, plan=plan))) \
            if len(rows) else torch.zeros((0, *reader.shape), dtype=torch.uint8)
        while len(_DECODED) > 8:
            _DECODED.pop(next(iter(_DECODED)))
    return _DECODED[key]


def load(arg: str | None, split: str) -> ImageDataset:
    """Split `split` of the image folder at `arg`; ids are the row in the canonical order.

    The folder is indexed (and the index cached, see `ddkit.data.manifest`); a split whose pixels
    fit the memory limit is decoded into memory, a larger one is streamed (`ddkit.data.stream`).
    """
    if not arg:
        raise InvalidInput("imagefolder needs a path", "use imagefolder:PATH (PATH/train/<class>/…, PATH/classes.json)")
    root = Path(arg).expanduser().resolve()
    if not root.is_dir():
        raise DatasetUnavailable(f"image folder {arg} does not exist", "give the folder that holds train/ and test/")
    class_names, fit, train = _manifests(root)
    empty = [name for c, name in enumerate(class_names) if not (train.labels == c).any()]
    if empty:
        raise InvalidInput(f"class {empty[0]!r} has no readable images in {root / 'train' / empty[0]}"
                           + (f" (nor do {empty[1:]})" if len(empty) > 1 else ""),
                           "add readable images or drop the class from classes.json")
    shape = train.image_shape
    manifest = train if split == "train" else index_split(root, split, class_names, fit,
                                                          *list_split(root, split, class_names))
    if len(manifest) and manifest.image_shape != shape:
        raise InvalidInput(
            f"{root}/{split} images are {_fmt(manifest.image_shape)} but train images are {_fmt(shape)}",
            "convert both splits to one size and mode",
        )
    normalization = read_normalization(root) or train.normalization()
    if len(normalization.mean) != shape[0]:
        raise InvalidInput(f"{root}/ddkit-folder.json declares a normalization of {len(normalization.mean)} channels, "
                           f"the images have {shape[0]}", "give one mean and one std per channel")
    info = DatasetInfo(f"imagefolder:{arg}", class_names, shape, normalization)
    reader = FolderReader(str(root), manifest.paths, manifest.sizes, shape, fit)
    labels = torch.from_numpy(manifest.labels)
    fingerprint = manifest.fingerprint()
    if should_stream(len(manifest), shape):
        return StreamedImageDataset(info, split, reader, labels, source=str(root), base_fingerprint=fingerprint)
    images = _in_memory(str(root), split, fingerprint, reader)
    dataset = ImageDataset(info, split, images.clone(), labels, source=str(root))
    dataset.indexed_content = (fingerprint, len(reader))  # fingerprints as the streamed path does
    return dataset


def _fmt(shape) -> str:
    return "×".join(str(s) for s in shape) + " (C×H×W)"
