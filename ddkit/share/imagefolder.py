"""The `imagefolder` format: one PNG per training instance in `train/<index>_<class>/`, with an explicit class map.

The folder names start with the zero-padded class index, so the loaders that number classes by
sorting folder names (torchvision's `ImageFolder`, the HF `imagefolder` builder) get ddkit's labels.
Export writes lossless PNGs (8-bit: exact for uint8 sets; float16 sets are rounded in the PNGs and
kept exactly in `extras/images.npy`), `classes.json` (the folder names in label order), the labels
and payloads as `.npy` and a README card. Files are named by instance index, so the instance
order survives a round trip.

Import also reads the folders SRe2L, RDED and INFER release (`<root>/<class>/*.jpg|png`, or under
`train/`). The class order is never taken from a directory listing: it comes from `classes.json`,
from folder names equal to the dataset's class names, or from a class index that ends every
folder name (`new007`, `00007`); exports from before the index prefix still import
(their classes.json, or their bare class names). Otherwise the import is refused with the fix.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from ddkit.data import dataset_info
from ddkit.data.base import DatasetInfo
from ddkit.data.decode import decode_image
from ddkit.data.imagefolder import CLASS_MAP, IMAGE_EXTENSIONS, check_class_names
from ddkit.errors import FileFormatError, InvalidInput
from ddkit.paths import kind, read_json
from ddkit.share.exchange import Exportable, Imported, exact_in_uint8, read_sidecar, to_uint8
from ddkit.share.formats import EXPORTERS, IMPORTERS, ImportOptions, card_text

_TRAILING_INDEX = re.compile(r"^\D*?(\d+)$")


def _safe(class_names: list[str]) -> list[str]:
    """Class names usable as folder names ('/' is not allowed in one), never empty."""
    return [re.sub(r"[/\\]", "_", n).strip() or f"class{i}" for i, n in enumerate(class_names)]


def folder_names(class_names: list[str]) -> list[str]:
    """Folder names in label order that also SORT in label order: `<index>_<name>`, the index
    zero-padded to one width (`03_Dress`). Standard loaders (torchvision's ImageFolder, the HF
    `imagefolder` builder) number classes by sorting folder names, so bare class names would permute
    the labels ('Ankle boot' before 'T-shirt/top')."""
    width = max(2, len(str(len(class_names) - 1)))
    return [f"{i:0{width}d}_{n}" for i, n in enumerate(_safe(class_names))]


def legacy_folder_names(class_names: list[str]) -> list[str]:
    """The folder names of exports before issue 27 (bare class names, `NNN_name` only on a clash):
    still recognized on import, with or without their classes.json."""
    names = _safe(class_names)
    if len(set(names)) != len(names) or any(n in (".", "..") for n in names):
        names = [f"{i:03d}_{n}" for i, n in enumerate(names)]
    return names


def _save_png(path: Path, chw: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(chw[0] if chw.shape[0] == 1 else chw.transpose(1, 2, 0)).save(path, compress_level=6)


@EXPORTERS.register(
    "imagefolder", summary="lossless PNGs in OUT/train/<class>/, classes.json, labels as .npy, README card"
)
def export_imagefolder(src: Exportable, folder: Path) -> list[str]:
    names = folder_names(src.class_names)
    for name in names:
        (folder / "train" / name).mkdir(parents=True)
    pixels = to_uint8(src.pixels)
    for i, (chw, label) in enumerate(zip(pixels, src.labels, strict=True)):
        _save_png(folder / "train" / names[label] / f"{i:06d}.png", chw)
    (folder / CLASS_MAP).write_text(json.dumps(names, indent=1, ensure_ascii=False) + "\n")
    exact = exact_in_uint8(src.stored)
    src.write_sidecar(folder, "imagefolder", exact_pixels=exact)
    how = (
        "Train on it with any image-folder loader (torchvision's `ImageFolder(OUT/train)`, the HF `imagefolder` "
        "builder): the folders are named `<class index>_<class name>`, so sorting them, as those loaders do, gives "
        "the class indices; `classes.json` lists them in label order. With ddkit: "
        "`ddkit import OUT --from imagefolder --dataset "
        f"{src.header.dataset.info.name} --out set.ddk.h5`."
    )
    (folder / "README.md").write_text(card_text(src, "imagefolder", how))
    notes = (
        []
        if exact
        else ["float16 pixels are rounded to 8 bits in the PNGs (error ≤ 1/510); extras/images.npy keeps them exactly"]
    )
    if src.dataset.composite is not None:
        notes.append("composed instances written as PNGs; bases + compensators kept in extras/composite")
    return notes


# -- import ---------------------------------------------------------------------------------------


def read_folder_map(path: Path, follow_symlinks: bool = False) -> tuple[str, ...]:
    """The `classes.json` of a folder being imported: a JSON list of distinct folder names, label order."""
    fix = "write a JSON list of the folder names in label order"
    data = read_json(path, "class map", fix=fix, follow_symlinks=follow_symlinks)
    try:
        return check_class_names(data if isinstance(data, list) else (), str(path))
    except InvalidInput as exc:
        got = f" (it holds a JSON {type(data).__name__})" if not isinstance(data, list) else ""
        raise FileFormatError(exc.problem + got, fix) from None


def _class_index(source: Path, folders: list[str], info: DatasetInfo, follow_symlinks: bool = False) -> dict[str, int]:
    """Folder name -> label, from an explicit map, the dataset's names, or trailing class indices."""
    for candidate in (source / CLASS_MAP, source / "train" / CLASS_MAP):
        if kind(candidate) != "missing":
            names = list(read_folder_map(candidate, follow_symlinks))
            if not set(folders) <= set(names):
                raise FileFormatError(
                    f"{candidate} does not list every class folder ({sorted(set(folders) - set(names or []))})",
                    "list every folder name, in label order",
                )
            return {n: names.index(n) for n in folders}
    class_names = list(info.class_names)
    for names in (class_names, folder_names(class_names), legacy_folder_names(class_names)):
        if set(folders) <= set(names):
            return {n: names.index(n) for n in folders}
    matches = [_TRAILING_INDEX.match(f) for f in folders]
    if all(matches):
        index = {f: int(m.group(1)) for f, m in zip(folders, matches, strict=True)}
        if len(set(index.values())) == len(index) and max(index.values()) < info.num_classes:
            return index
    raise FileFormatError(
        f"{source}: cannot tell the class of folders {folders[:5]}{'…' if len(folders) > 5 else ''} "
        "without a class map",
        f"write {source / CLASS_MAP}: a JSON list of the folder names in label order (index i = class "
        f"{info.class_names[0]!r}, … for {info.name})",
    )


def _read(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    """One image as uint8 C×H×W; its size is checked against `shape` before any pixel is decoded."""
    return decode_image(path, channels=shape[0], size=(shape[2], shape[1]))


def _order_key(path: Path) -> tuple:
    return (0, int(path.stem), "") if path.stem.isdigit() else (1, 0, path.name)


@IMPORTERS.register(
    "imagefolder", summary="image folders: ddkit exports, SRe2L / RDED / INFER releases (<class>/*.png|jpg)"
)
def import_imagefolder(source: Path, options: ImportOptions) -> Imported:
    if not source.is_dir():
        raise FileFormatError(f"{source} is not a folder", "give the folder that holds the class folders (or train/)")
    meta = read_sidecar(source, options.follow_symlinks)
    info = meta.dataset.info if meta else dataset_info(options.dataset)
    root = source / "train" if (source / "train").is_dir() else source
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "extras")
    if not folders:
        raise FileFormatError(f"{root} has no class folders", "give the folder that holds <class>/ image folders")
    index = _class_index(source, folders, info, options.follow_symlinks)
    items = [
        (p, index[f])
        for f in folders
        for p in (root / f).iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    ]
    if all(p.stem.isdigit() for p, _ in items):  # a ddkit export: files named by instance index
        items.sort(key=lambda item: int(item[0].stem))
    else:
        items.sort(key=lambda item: (item[1], _order_key(item[0])))
    arrays = [_read(p, info.image_shape) for p, _ in items]
    images = torch.from_numpy(np.stack(arrays)) if arrays else torch.zeros((0, *info.image_shape), dtype=torch.uint8)
    labels = torch.tensor([label for _, label in items], dtype=torch.long)
    return Imported(images, labels, method="imagefolder", details={"files": len(items)})
