"""The `imagefolder` format: one PNG per training instance in `train/<class>/`, with an explicit class map.

Export writes lossless PNGs (8-bit: exact for uint8 sets; float16 sets are rounded in the PNGs and
kept exactly in `extras/images.npy`), `classes.json` (the folder names in label order), the labels
and payloads as `.npy` and a README card. Files are named by instance index, so the instance
order survives a round trip.

Import also reads the folders SRe2L, RDED and INFER release (`<root>/<class>/*.jpg|png`, or under
`train/`). The class order is never taken from a directory listing: it comes from `classes.json`,
from folder names equal to the dataset's class names, or from a class index that ends every
folder name (`new007`, `00007`); otherwise the import is refused with the fix.
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
from ddkit.data.imagefolder import CLASS_MAP, IMAGE_EXTENSIONS
from ddkit.errors import FileFormatError
from ddkit.share.exchange import Exportable, Imported, exact_in_uint8, read_sidecar, to_uint8
from ddkit.share.formats import EXPORTERS, IMPORTERS, ImportOptions, card_text

_TRAILING_INDEX = re.compile(r"^\D*?(\d+)$")


def folder_names(class_names: list[str]) -> list[str]:
    """Folder-safe class names ('/' is not allowed in a folder name), unique, in label order."""
    names = [re.sub(r"[/\\]", "_", n).strip() or f"class{i}" for i, n in enumerate(class_names)]
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
        "Train on it with any image-folder loader; the label of `train/<folder>/` is the folder's index in "
        "`classes.json`. With ddkit: `ddkit import OUT --from imagefolder --dataset "
        f"{src.header.dataset.info.name} set.ddk.h5`."
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


def _class_index(source: Path, folders: list[str], info: DatasetInfo) -> dict[str, int]:
    """Folder name -> label, from an explicit map, the dataset's names, or trailing class indices."""
    for candidate in (source / CLASS_MAP, source / "train" / CLASS_MAP):
        if candidate.is_file():
            try:
                names = json.loads(candidate.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise FileFormatError(
                    f"{candidate} is not readable JSON ({exc})", "write a JSON list of folder names"
                ) from None
            if not isinstance(names, list) or not set(folders) <= set(names):
                raise FileFormatError(
                    f"{candidate} does not list every class folder ({sorted(set(folders) - set(names or []))})",
                    "list every folder name, in label order",
                )
            return {n: names.index(n) for n in folders}
    for names in (list(info.class_names), folder_names(list(info.class_names))):
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
    meta = read_sidecar(source)
    info = DatasetInfo.from_dict(meta["dataset"]) if meta else dataset_info(options.dataset)
    root = source / "train" if (source / "train").is_dir() else source
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "extras")
    if not folders:
        raise FileFormatError(f"{root} has no class folders", "give the folder that holds <class>/ image folders")
    index = _class_index(source, folders, info)
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
