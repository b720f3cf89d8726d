"""`render_grid`: a PNG contact sheet of a distilled file (`ddkit show`).

Stored pixels are already in [0, 1] (the file keeps de-normalized pixels), so instances are drawn
as they are; compensators are signed offsets, so each is min-max scaled to be visible.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ddkit.errors import InvalidInput
from ddkit.fileio import atomic_output
from ddkit.store.reader import DistilledDataset
from ddkit.store.validate import require_valid

_PAD = 2
_MIN_CELL = 48  # small images are upscaled (nearest) to at least this many pixels


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """B×C×H×W in [0, 1] -> B×H×W×3 uint8 (1 channel: gray; 3: RGB; other: channel mean)."""
    x = images.clamp(0, 1)
    if x.shape[1] != 3:
        x = (x[:, :1] if x.shape[1] == 1 else x.mean(1, keepdim=True)).expand(-1, 3, -1, -1)
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _min_max(x: torch.Tensor) -> torch.Tensor:
    """Scale each tensor of a batch to [0, 1] on its own (a constant tensor becomes mid-gray)."""
    flat = x.flatten(1)
    lo, hi = flat.min(1).values.view(-1, 1, 1, 1), flat.max(1).values.view(-1, 1, 1, 1)
    return torch.where(hi > lo, (x - lo) / (hi - lo).clamp_min(1e-12), torch.full_like(x, 0.5))


def _simple(names: list[str]) -> bool:
    return all(name.isascii() and name.isprintable() and len(name) <= 24 for name in names)


def grid_image(
    rows: list[torch.Tensor], columns: int, image_hw: tuple[int, int], row_names: list[str] | None = None
) -> Image.Image:
    """Rows of B×C×H×W images in [0, 1] as one RGB image, optionally with a name left of each row."""
    h, w = image_hw
    scale = max(1, -(-_MIN_CELL // max(h, w)))
    cell_h, cell_w = h * scale + _PAD, w * scale + _PAD
    font = ImageFont.load_default()
    boxes = [font.getbbox(name) for name in row_names] if row_names else []
    margin = max(box[2] for box in boxes) + 8 if boxes else 0
    sheet = Image.new("RGB", (margin + columns * cell_w + _PAD, len(rows) * cell_h + _PAD), "white")
    draw = ImageDraw.Draw(sheet)
    for r, images in enumerate(rows):
        top = _PAD + r * cell_h
        if row_names:
            _, text_top, _, text_bottom = boxes[r]
            draw.text((4, top + (cell_h - text_bottom - text_top) // 2), row_names[r], fill="black", font=font)
        for c, pixels in enumerate(_to_uint8(images[:columns])):
            tile = Image.fromarray(pixels).resize((w * scale, h * scale), Image.NEAREST)
            sheet.paste(tile, (margin + _PAD + c * cell_w, top))
    return sheet


WHAT = ("auto", "instances", "stored", "compensators")


def render_grid(
    path: str | os.PathLike, out_png: str | os.PathLike, per_class: int = 10, what: str = "auto",
    overwrite: bool = False, max_rows: int = 100,
) -> dict:
    """Write a PNG grid of a `.ddk.h5` file: `what="instances"` shows the first `per_class`
    training instances of each class (one row per class, named when the names are plain and short;
    a formation's instances decoded); `what="stored"` the stored images of each class as the file
    keeps them; `what="compensators"` the composite's compensators, `per_class` per row, each
    min-max scaled. `what="auto"` is "stored" for a file with a formation (its decoded instances
    are zoomed cells of those images), else "instances".
    The sheet is as wide as its widest row (an IPC-2 file draws 2 columns, not `per_class`).

    At most `max_rows` rows are drawn and the sheet is refused above `MAX_SHEET_PIXELS`, so a file
    with many classes cannot make the drawing take unbounded memory. The file is checked as
    `ddkit validate` checks it first. Returns {"rows": drawn, "of": rows there are}.
    """
    if per_class < 1 or max_rows < 1:
        raise InvalidInput(f"per_class and max_rows must be at least 1, got {per_class} and {max_rows}")
    if what not in WHAT:
        raise InvalidInput(f"what must be one of {', '.join(WHAT)}, got {what!r}")
    with DistilledDataset(path) as ds:
        require_valid(ds)
        h, w = ds.info.image_shape[1:]
        if what == "auto":
            what = "stored" if ds.formation is not None else "instances"
        if what in ("instances", "stored"):
            total = ds.num_classes
        elif what == "compensators":
            if ds.composite is None:
                raise InvalidInput(f"{path} has no compensators (no /composite)", "render what='instances'")
            total = -(-len(ds.composite.compensators) // per_class)
        shown = min(total, max_rows)
        check_sheet_size(shown, per_class, (h, w))
        if what in ("instances", "stored"):
            labels, read = (ds.labels, ds.pixels) if what == "instances" else (ds.stored_labels, ds.stored_pixels)
            rows = [read(torch.nonzero(labels == c).flatten()[:per_class].numpy()) for c in range(shown)]
            names = ds.classes[:shown] if _simple(ds.classes[:shown]) else None
        else:
            comps = _min_max(torch.from_numpy(ds.composite.compensators[: shown * per_class]))
            rows, names = list(comps.split(per_class)), None
    columns = max(1, min(per_class, max(len(r) for r in rows)))  # as wide as the widest row: no blank canvas
    image = grid_image(rows, columns, (h, w), names)
    with atomic_output(out_png, overwrite) as tmp:
        image.save(tmp, format="PNG")
    return {"rows": shown, "of": total}


MAX_SHEET_PIXELS = 1 << 25  # about 100 MB as RGB


def check_sheet_size(rows: int, columns: int, image_hw: tuple[int, int]) -> None:
    """Refuse a contact sheet larger than MAX_SHEET_PIXELS before anything is drawn."""
    h, w = image_hw
    scale = max(1, -(-_MIN_CELL // max(h, w)))
    pixels = (rows * (h * scale + _PAD) + _PAD) * (columns * (w * scale + _PAD) + _PAD + 200)
    if pixels > MAX_SHEET_PIXELS:
        raise InvalidInput(
            f"a sheet of {rows} rows × {columns} images of {h}×{w} would be about {pixels / 1e6:.0f} Mpixels, "
            f"over the {MAX_SHEET_PIXELS / 1e6:.0f} Mpixel limit",
            "lower --per-class or --max-rows",
        )
