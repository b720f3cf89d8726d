"""`imagefolder:PATH` — a user's own images in PATH/train/<class>/ and PATH/test/<class>/.

The class-name -> label map is explicit and stored in PATH/classes.json (a JSON list, index order).
It is never inferred from a directory listing: a listing's order depends on how folders were named,
and a silently different order would relabel every stored set and teacher made from the folder.
`write_class_map` creates the file. Normalization is the per-channel mean/std of the TRAIN pixels
(also when only the test split is loaded), so train and test always share it.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ddkit.data.base import DatasetInfo, ImageDataset, Normalization
from ddkit.data.stats import channel_stats
from ddkit.errors import DatasetUnavailable, FileFormatError, InvalidInput
from ddkit.fileio import atomic_output

CLASS_MAP = "classes.json"
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
_TO_GRAY = frozenset({"1", "LA"})
MAX_IMAGE_PIXELS = 1 << 24  # 16 Mpixel: far above any training image, far below a decompression bomb
_TO_RGB = frozenset({"P", "PA", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})


def _check_class_names(class_names, where: str) -> tuple[str, ...]:
    names = list(class_names) if not isinstance(class_names, str) else None
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise InvalidInput(f"{where}: the class map must be a non-empty list of non-empty names",
                           'e.g. ["cat", "dog"] — index 0 is "cat"')
    bad = [n for n in names if n in (".", "..") or "/" in n or "\\" in n or n != n.strip()]
    if bad:
        raise InvalidInput(f"{where}: class names {bad} cannot be folder names", "rename those classes and folders")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InvalidInput(f"{where}: class names {dupes} appear more than once", "list each class once")
    return tuple(names)


def write_class_map(root: str | os.PathLike, class_names, overwrite: bool = False) -> Path:
    """Write ROOT/classes.json (atomically): `class_names[i]` is the name of label i.

    Refuses to replace an existing map unless `overwrite`, because a new order relabels the data.
    """
    names = _check_class_names(class_names, str(root))
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
    return _check_class_names(names, str(path))


def list_split(root: Path, split: str, class_names: tuple[str, ...]) -> list[tuple[Path, int]]:
    """(file, label) pairs of a split in canonical order: classes in map order, files by name."""
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
    items = []
    for label, name in enumerate(class_names):
        files = sorted(p for p in (folder / name).iterdir()
                       if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files and split == "train":
            raise InvalidInput(f"class {name!r} has no images in {folder / name}", "add images or drop the class")
        items += [(p, label) for p in files]
    return items


def _read_image(path: Path) -> np.ndarray:
    """One image as uint8 C×H×W (C = 1 for grayscale, 3 for color)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # ddkit's own limit is below
            im = Image.open(path)  # reads the header only; convert() below decodes
        with im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise InvalidInput(f"{path} is {im.width}×{im.height} pixels, over the {MAX_IMAGE_PIXELS} pixel limit "
                                   "(a decompression bomb, or not a dataset image)", "resize or remove the file")
            mode = "L" if im.mode in _TO_GRAY else "RGB" if im.mode in _TO_RGB else im.mode
            if mode not in ("L", "RGB"):
                raise InvalidInput(f"{path} has pixel mode {im.mode}", "convert it to 8-bit grayscale (L) or RGB")
            array = np.asarray(im.convert(mode), dtype=np.uint8)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise FileFormatError(f"cannot decode image {path} ({exc})", "replace or remove the file") from exc
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


@functools.lru_cache(maxsize=8)
def _load_split(root: str, split: str, _signature: tuple) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """Decode a split once per process; `_signature` (map + file stats) invalidates on change."""
    class_names = read_class_map(Path(root))
    items = list_split(Path(root), split, class_names)
    arrays, first = [], None
    for path, _ in items:
        array = _read_image(path)
        if first is None:
            first = (path, array.shape)
        elif array.shape != first[1]:
            raise InvalidInput(
                f"images in {root} differ in size/channels: {first[0]} is {_fmt(first[1])} "
                f"but {path} is {_fmt(array.shape)}",
                "convert all images to one size and mode (all L or all RGB)",
            )
        arrays.append(array)
    images = torch.from_numpy(np.stack(arrays)) if arrays else torch.zeros((0, 1, 1, 1), dtype=torch.uint8)
    labels = torch.tensor([label for _, label in items], dtype=torch.long)
    return images, labels, class_names


def _fmt(shape) -> str:
    return "×".join(str(s) for s in shape) + " (C×H×W)"


def _signature(root: Path) -> tuple:
    """A cheap fingerprint of the folder: the class map's bytes and every file's path, size and mtime."""
    entries = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            try:
                st = os.stat(os.path.join(dirpath, f))
            except OSError as exc:  # a dangling symlink, or a file removed while listing
                raise FileFormatError(f"{os.path.join(dirpath, f)} cannot be read ({exc.strerror or exc})",
                                      "remove the broken link or restore its target") from None
            entries.append((os.path.relpath(os.path.join(dirpath, f), root), st.st_size, st.st_mtime_ns))
    return tuple(sorted(entries))


def load(arg: str | None, split: str) -> ImageDataset:
    """Split `split` of the image folder at `arg`; ids are the row in the canonical order."""
    if not arg:
        raise InvalidInput("imagefolder needs a path", "use imagefolder:PATH (PATH/train/<class>/…, PATH/classes.json)")
    root = Path(arg).expanduser().resolve()
    if not root.is_dir():
        raise DatasetUnavailable(f"image folder {arg} does not exist", "give the folder that holds train/ and test/")
    signature = _signature(root)
    train_images, train_labels, class_names = _load_split(str(root), "train", signature)
    shape = tuple(train_images.shape[1:])
    if split == "train":
        images, labels = train_images, train_labels
    else:
        images, labels, _ = _load_split(str(root), split, signature)
        if not len(images):
            images = torch.zeros((0, *shape), dtype=torch.uint8)
        elif tuple(images.shape[1:]) != shape:
            raise InvalidInput(
                f"{root}/{split} images are {_fmt(images.shape[1:])} but train images are {_fmt(shape)}",
                "convert both splits to one size and mode",
            )
    info = DatasetInfo(f"imagefolder:{arg}", class_names, shape, _normalization(str(root), signature))
    return ImageDataset(info, split, images.clone(), labels.clone(), source=str(root))


@functools.lru_cache(maxsize=8)
def _normalization(root: str, signature: tuple) -> Normalization:
    return channel_stats(_load_split(root, "train", signature)[0])
