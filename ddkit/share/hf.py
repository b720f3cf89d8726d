"""The `hf` format: a Hugging Face `datasets` folder (parquet shards + a dataset card), without `datasets`.

Export writes `data/train-0000i-of-0000n.parquet` with an `image` column (PNG bytes, the `Image`
feature), a `label` column (`ClassLabel` with the class names) and, when the file stores logits,
a `logits` column; the features are declared in the parquet schema metadata the way `datasets`
writes them, so `datasets.load_dataset(OUT)` reads the folder with typed columns. `README.md` is
the dataset card: YAML front matter (features, splits, configs, the ddkit provenance) and the
provenance and result cards as text.

Parquet is written and read with pyarrow (`pip install "ddkit[hf]"`); the `datasets` library
itself is not needed, which keeps its pins (click, fsspec) out of ddkit's environment.
Import reads such folders, single parquet files, and other people's image-classification sets
(columns `image`/`img` and `label`/`labels`; class names from the `ClassLabel` metadata).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch

from ddkit.data import dataset_info
from ddkit.data.decode import decode_image
from ddkit.errors import DdkitError, FileFormatError, IncompatibleError
from ddkit.paths import walk
from ddkit.share.exchange import Exportable, Imported, as_labels, as_logits, exact_in_uint8, read_sidecar, to_uint8
from ddkit.share.formats import EXPORTERS, IMPORTERS, ImportOptions, card_text

SHARD_BYTES = 256 << 20  # PNG bytes per parquet shard
MIN_ROW_BYTES = 16  # no image file is smaller (a PNG's signature and IHDR alone are 33 bytes)


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise DdkitError("the hf format needs pyarrow", 'pip install "ddkit[hf]" (or pip install pyarrow)') from None
    return pyarrow


def _png(chw: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(chw[0] if chw.shape[0] == 1 else chw.transpose(1, 2, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def _features(class_names: list[str], with_logits: bool) -> dict:
    features = {"image": {"_type": "Image"}, "label": {"names": list(class_names), "_type": "ClassLabel"}}
    if with_logits:
        features["logits"] = {"feature": {"dtype": "float32", "_type": "Value"}, "_type": "Sequence"}
    return features


def _yaml(value, indent: int = 0) -> list[str]:
    """A small YAML emitter for the card's front matter (JSON scalars are valid YAML)."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                lines += [f"{pad}{json.dumps(str(k))}:"] + _yaml(v, indent + 2)
            else:
                lines.append(f"{pad}{json.dumps(str(k))}: {json.dumps(v, ensure_ascii=False)}")
    else:
        for item in value:
            if isinstance(item, dict) and item:
                first, *rest = _yaml(item, indent + 2)
                lines += [f"{pad}- {first.strip()}"] + rest
            else:
                lines.append(f"{pad}- {json.dumps(item, ensure_ascii=False)}")
    return lines


def front_matter(src: Exportable, shards: int, num_bytes: int) -> str:
    h = src.header
    label = {"class_label": {"names": {str(i): n for i, n in enumerate(src.class_names)}}}
    features = [{"name": "image", "dtype": "image"}, {"name": "label", "dtype": label}]
    if src.logits is not None:
        features.append({"name": "logits", "sequence": "float32"})
    meta = {
        "license": "other",
        "task_categories": ["image-classification"],
        "tags": ["dataset-distillation", "ddkit", h.method],
        "pretty_name": f"{h.method} distilled {h.dataset.info.name}",
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
        "dataset_info": {
            "features": features,
            "splits": [{"name": "train", "num_bytes": num_bytes, "num_examples": int(len(src.labels))}],
        },
        "ddkit": {
            "content_sha256": src.dataset.content_sha256,
            "method": h.method,
            "method_version": h.method_version,
            "dataset": h.dataset.info.name,
            "ipc": h.budget.ipc_stored,
            "shards": shards,
            "results": {k: (v.get("result") or {}).get("mean") for k, v in sorted(src.results.items())},
        },
    }
    return "\n".join(["---", *_yaml(meta), "---", ""])


@EXPORTERS.register(
    "hf", summary="a Hugging Face datasets folder: parquet shards (image, label, logits) + dataset card"
)
def export_hf(src: Exportable, folder: Path) -> list[str]:
    pa = _pyarrow()
    pixels = to_uint8(src.pixels)
    pngs = [_png(chw) for chw in pixels]
    bounds, size, start = [], 0, 0
    for i, blob in enumerate(pngs):
        size += len(blob)
        if size >= SHARD_BYTES or i == len(pngs) - 1:
            bounds.append((start, i + 1))
            start, size = i + 1, 0
    metadata = {
        b"huggingface": json.dumps({"info": {"features": _features(src.class_names, src.logits is not None)}}).encode()
    }
    (folder / "data").mkdir()
    for k, (a, b) in enumerate(bounds):
        columns = {
            "image": pa.array(
                [{"bytes": p, "path": None} for p in pngs[a:b]],
                pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
            ),
            "label": pa.array(src.labels[a:b], pa.int64()),
        }
        if src.logits is not None:
            columns["logits"] = pa.array(list(src.logits[a:b].astype(np.float32)), pa.list_(pa.float32()))
        table = pa.table(columns).replace_schema_metadata(metadata)
        pa.parquet.write_table(table, folder / "data" / f"train-{k:05d}-of-{len(bounds):05d}.parquet")
    src.write_sidecar(folder, "hf", exact_pixels=exact_in_uint8(src.stored))
    how = (
        "```python\nfrom datasets import load_dataset\nds = load_dataset('parquet', data_files='data/train-*.parquet')"
        "['train']   # or load_dataset(THIS_FOLDER)\n```\nImages are the pixels in [0, 1] as 8-bit PNG; normalize "
        "with the mean/std above before training."
    )
    card = front_matter(src, len(bounds), sum(len(p) for p in pngs)) + card_text(src, "hf", how)
    (folder / "README.md").write_text(card)
    notes = (
        []
        if exact_in_uint8(src.stored)
        else ["float16 pixels are rounded to 8 bits in the PNGs; extras/images.npy keeps them"]
    )
    if src.dataset.composite is not None:
        notes.append("composed instances written as images; bases + compensators kept in extras/composite")
    return notes


# -- import ---------------------------------------------------------------------------------------


def _column(table, names: tuple[str, ...], what: str, path: Path):
    for name in names:
        if name in table.column_names:
            return name
    raise FileFormatError(
        f"{path} has no {what} column (looked for {', '.join(names)}; found {table.column_names})",
        "give an image-classification set with image and label columns",
    )


def _class_names(schema) -> list[str] | None:
    raw = (schema.metadata or {}).get(b"huggingface")
    try:
        features = json.loads(raw)["info"]["features"] if raw else {}
    except (ValueError, KeyError, TypeError):
        return None
    for feature in features.values():
        if (
            isinstance(feature, dict)
            and feature.get("_type") == "ClassLabel"
            and isinstance(feature.get("names"), list)
        ):
            return [str(n) for n in feature["names"]]
    return None


def _decode(blob: bytes, shape: tuple[int, int, int], path: Path) -> np.ndarray:
    """One embedded image as uint8 C×H×W; its size is checked against `shape` before decoding."""
    return decode_image(path, data=bytes(blob), channels=shape[0], size=(shape[2], shape[1]))


def _read_table(pa, path: Path):
    """The parquet file's table, after its row count is checked against its size: a few hundred kB
    can declare 30 million rows of one repeated (dictionary-encoded) cell, which would be expanded
    into Python objects here. An honest row holds an image of its own: at least `MIN_ROW_BYTES`."""
    try:
        parquet = pa.parquet.ParquetFile(path)
        rows = parquet.metadata.num_rows
        if rows > max(1, path.stat().st_size // MIN_ROW_BYTES):
            raise FileFormatError(
                f"{path} declares {rows} rows in {path.stat().st_size} bytes (fewer than {MIN_ROW_BYTES} bytes a row: "
                "one repeated image is not a dataset)", "give a parquet file with one embedded image per row")
        return parquet.read()
    except (OSError, pa.ArrowException) as exc:
        raise FileFormatError(f"{path} is not a readable parquet file ({exc})", "re-download the set") from None


@IMPORTERS.register("hf", summary="Hugging Face datasets folders or parquet files (image + label columns, logits)")
def import_hf(source: Path, options: ImportOptions) -> Imported:
    pa = _pyarrow()
    if source.is_dir():
        tree = walk(source, match=lambda p: p.suffix == ".parquet", follow_symlinks=options.follow_symlinks)
        tree.raise_refused("import source")
        files = tree.files
    else:
        files = [source]
    if not files:
        raise FileFormatError(f"{source} holds no .parquet file", "give a datasets folder or a parquet file")
    meta = read_sidecar(source if source.is_dir() else source.parent, options.follow_symlinks)
    info = meta.dataset.info if meta else dataset_info(options.dataset)
    images, labels, logits, names = [], [], [], None
    for path in files:
        table = _read_table(pa, path)
        image_col = _column(table, ("image", "img"), "image", path)
        label_col = _column(table, ("label", "labels"), "label", path)
        names = names or _class_names(table.schema)
        for cell in table.column(image_col).to_pylist():
            blob = cell.get("bytes") if isinstance(cell, dict) else cell
            if not isinstance(blob, (bytes, bytearray)):
                raise FileFormatError(
                    f"{path}: column {image_col!r} does not hold embedded image bytes",
                    "export the set with embedded images (datasets embeds them on push_to_hub)",
                )
            images.append(_decode(blob, info.image_shape, path))
        labels += table.column(label_col).to_pylist()
        if "logits" in table.column_names:
            logits += table.column("logits").to_pylist()
    labels_t = as_labels(labels, f"{source} labels")
    if names and list(names) != list(info.class_names):
        if not set(names) <= set(info.class_names):
            raise IncompatibleError(
                f"{source} names classes {names[:5]}…, which are not {info.name}'s",
                "import into the dataset the set was made from (--dataset NAME)",
            )
        if len(labels_t) and int(labels_t.max()) >= len(names):
            raise IncompatibleError(f"{source} has labels up to {int(labels_t.max())} but names {len(names)} classes",
                                    "give labels that index the ClassLabel names")
        remap = torch.tensor([list(info.class_names).index(n) for n in names])
        labels_t = remap[labels_t]
    for array in images:
        if array.shape != tuple(info.image_shape):
            raise IncompatibleError(
                f"{source} has images of shape {array.shape}, {info.name} has {info.image_shape}",
                "import into the dataset the set was distilled from",
            )
    pixels = torch.from_numpy(np.stack(images)) if images else torch.zeros((0, *info.image_shape), dtype=torch.uint8)
    soft = as_logits(logits, len(labels), f"{source} logits column") if logits else None
    return Imported(pixels, labels_t, method="hf", logits=soft, details={"parquet_files": len(files)})
