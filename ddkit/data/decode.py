"""Decoding one image file into uint8 C×H×W pixels, and the fit that makes folders of mixed sizes usable.

One function serves every path that reads image files with PIL (the in-memory image folder, the
streamed one, and their index), so a picture decodes to the same pixels whichever path read it.
`FolderFit` is the eval-style transform of an ImageNet folder (resize the shorter side, then
center-crop): it is applied at decode time, so a dataset always has one declared image shape.
Its geometry (`fit_geometry`) is computed once for both ways of applying it: PIL's resize on a
PIL image, and `fit_tensor` on a uint8 tensor on any device (the torchvision / nvjpeg decode
path of `ddkit.data.batch_decode`; within 2/255 of PIL's, see `fit_tensor`).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ddkit.errors import FileFormatError, IncompatibleError, InvalidInput
from ddkit.records import check_positive

MAX_IMAGE_PIXELS = 1 << 24  # 16 Mpixel: far above any training image, far below a decompression bomb
FIT_FILE = "ddkit-folder.json"
_TO_GRAY = frozenset({"1", "LA"})
_TO_RGB = frozenset({"P", "PA", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})


@dataclass(frozen=True)
class FolderFit:
    """Every image of a folder resized (shorter side to `resize`) and center-cropped to `size`×`size`,
    with `channels` (1 = grayscale, 3 = RGB). Declared in ROOT/ddkit-folder.json."""

    channels: int
    size: int
    resize: int

    def to_dict(self) -> dict:
        return {"channels": self.channels, "image_size": self.size, "resize": self.resize}

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)


def _folder_config(root: Path) -> dict:
    path = root / FIT_FILE
    if not path.is_file():
        return {}
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FileFormatError(f"{path} is not readable JSON ({exc})", 'write e.g. {"image_size": 224}') from None
    if not isinstance(d, dict) or set(d) - {"image_size", "resize", "channels", "normalization"}:
        raise InvalidInput(f"{path} must be a JSON object with image_size (and optional resize, channels) and/or "
                           "normalization", 'write e.g. {"image_size": 224, "resize": 256, "channels": 3}')
    return d


def read_fit(root: Path) -> FolderFit | None:
    """The folder's declared fit (None when it declares none: then every image must have one size).

    ROOT/ddkit-folder.json: {"image_size": 224, "resize": 256, "channels": 3}; `resize` defaults to
    image_size × 8/7 (the 224/256 ratio of the ImageNet eval transform), `channels` to 3.
    """
    d = _folder_config(root)
    path = root / FIT_FILE
    if "image_size" not in d:
        if set(d) & {"resize", "channels"}:
            raise InvalidInput(f"{path} gives resize/channels without image_size", 'add e.g. "image_size": 224')
        return None
    for key in ("image_size", "resize"):
        if key in d and (not isinstance(d[key], int) or isinstance(d[key], bool)):
            raise InvalidInput(f"{path}: {key} must be an integer number of pixels, got {d[key]!r}")
    size = check_positive(d["image_size"], f"{path}: image_size", 1 << 14)
    resize = check_positive(d.get("resize", round(size * 8 / 7)), f"{path}: resize", 1 << 14)
    channels = d.get("channels", 3)
    if channels not in (1, 3):
        raise InvalidInput(f"{path}: channels must be 1 or 3, got {channels!r}")
    if resize < size:
        raise InvalidInput(f"{path}: resize {resize} is smaller than image_size {size}", "use resize ≥ image_size")
    return FolderFit(channels, size, resize)


def read_normalization(root: Path):
    """The folder's declared normalization, e.g. ImageNet's for a released teacher trained with it:
    {"normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}; None when the
    folder declares none (the train pixels' statistics are used)."""
    from ddkit.data.base import Normalization

    d = _folder_config(root)
    if "normalization" not in d:
        return None
    n = d["normalization"]
    if not isinstance(n, dict) or set(n) != {"mean", "std"} or not all(
            isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
            for v in n.values()):
        raise InvalidInput(f"{root / FIT_FILE}: normalization must be {{\"mean\": [...], \"std\": [...]}} with one "
                           "number per channel")
    return Normalization(tuple(float(x) for x in n["mean"]), tuple(float(x) for x in n["std"]))


def decode_image(path: str | Path, fit: FolderFit | None = None, data: bytes | None = None,
                 channels: int | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """One image file as uint8 C×H×W (C = 1 for grayscale, 3 for color), fitted when `fit` is given.

    `data` is the file's bytes when the caller already read them (e.g. to hash them). `channels`
    (1 or 3) converts without fitting, for a caller that fits afterwards (`fit_tensor`). `size` is
    the (width, height) the image must have (an import into a dataset of that shape): checked from
    the header, before a pixel is decoded (IncompatibleError). Raises FileFormatError for a file
    that is not a readable image (truncated, garbage, a decompression bomb), naming the file.
    """
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # ddkit's own limit is below
            # open() reads the header only; convert() below decodes
            im = Image.open(path if data is None else io.BytesIO(data))
        with im:
            if size is not None and im.size != tuple(size):
                raise IncompatibleError(f"{path} is {im.width}×{im.height} pixels, expected {size[0]}×{size[1]}",
                                        "import into the dataset the set was distilled from (same image size)")
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise InvalidInput(f"{path} is {im.width}×{im.height} pixels, over the {MAX_IMAGE_PIXELS} pixel limit "
                                   "(a decompression bomb, or not a dataset image)", "resize or remove the file")
            channels = fit.channels if fit is not None else channels
            if channels is not None:
                mode = "L" if channels == 1 else "RGB"
            else:
                mode = "L" if im.mode in _TO_GRAY else "RGB" if im.mode in _TO_RGB else im.mode
            if mode not in ("L", "RGB"):
                raise InvalidInput(f"{path} has pixel mode {im.mode}", "convert it to 8-bit grayscale (L) or RGB")
            im = im.convert(mode)
            if fit is not None:
                im = _resize_center_crop(im, fit)
            array = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        why = str(exc).split(" <_io.BytesIO")[0]  # PIL names the in-memory buffer, not the file
        raise FileFormatError(f"cannot decode image {path} ({why})", "replace or remove the file") from exc
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def fit_geometry(width: int, height: int, fit: FolderFit) -> tuple[int, int, int, int]:
    """Where the fit takes a `width`×`height` image: the resized (width, height) — shorter side to
    `fit.resize`, neither side below `fit.size` — and the (left, top) corner of the central crop."""
    scale = fit.resize / min(width, height)
    nw, nh = max(fit.size, round(width * scale)), max(fit.size, round(height * scale))
    return nw, nh, (nw - fit.size) // 2, (nh - fit.size) // 2


def _resize_center_crop(im, fit: FolderFit):
    """Shorter side to `fit.resize` (bilinear, antialiased), then the central `fit.size` square."""
    from PIL import Image

    nw, nh, left, top = fit_geometry(im.width, im.height, fit)
    if (nw, nh) != im.size:
        im = im.resize((nw, nh), Image.BILINEAR, reducing_gap=None)
    return im.crop((left, top, left + fit.size, top + fit.size))


def gray_from_rgb(x):
    """uint8 RGB (…×3×H×W tensor) to one luma channel, exactly as PIL's convert("L"): ITU-R 601-2
    weights (0.299, 0.587, 0.114) in 16-bit fixed point (19595, 38470, 7471; they sum to 65536), rounded."""
    import torch

    w = x.to(torch.int32)
    y = (w[..., 0, :, :] * 19595 + w[..., 1, :, :] * 38470 + w[..., 2, :, :] * 7471 + 32768) >> 16
    return y.to(torch.uint8).unsqueeze(-3)


def fit_tensor(x, fit: FolderFit, compute=None):
    """The fit applied to uint8 C×H×W (or N×C×H×W images of one size) on their own device.

    Bilinear with antialiasing (torch's), with the geometry of `fit_geometry`: PIL's
    `_resize_center_crop` up to rounding, since PIL resamples in 8-bit fixed point and rounds to uint8
    between its horizontal and vertical passes. `compute` is the resize's dtype: by default uint8 on
    the CPU (torch's uint8 kernel, about 4× faster there; measured against PIL on JPEG photos: at
    most 2/255, on under 1% of pixels) and float32 elsewhere (CUDA has no uint8 kernel; rounded back:
    at most 1/255, on about 20% of pixels). A crop without a resize is exact. The channel count is
    the caller's business (`decode_image(channels=…)`, `gray_from_rgb`).
    """
    import torch

    single = x.ndim == 3
    x = x[None] if single else x
    h, w = x.shape[-2:]
    nw, nh, left, top = fit_geometry(w, h, fit)
    if (nw, nh) != (w, h):
        compute = compute or (torch.uint8 if x.device.type == "cpu" else torch.float32)
        y = torch.nn.functional.interpolate(x.to(compute), size=(nh, nw), mode="bilinear", align_corners=False,
                                            antialias=True)
        x = y if compute == torch.uint8 else y.round_().clamp_(0, 255).to(torch.uint8)
    x = x[..., top:top + fit.size, left:left + fit.size]
    return x[0] if single else x
