"""Which library decodes an image folder's files, and where: the decode backends of streamed reads.

- `pil`: PIL in the DataLoader workers (`decode.decode_image`, with PIL's resize) — the reference.
- `torchvision`: torchvision.io in the workers (`decode_jpeg` for baseline/progressive JPEGs; other
  files by PIL), then `decode.fit_tensor`. On a CUDA run device whose torchvision decodes JPEG on
  CUDA, the workers only read the files' bytes and the consumer decodes each whole batch at once
  on the GPU (nvjpeg) and fits it there.
- `nvjpeg`: that GPU path, required: no CUDA device (or a torchvision without CUDA decode) is an
  error rather than a silent CPU fallback.
- `auto` (default): the GPU path when the run's device is CUDA and it is available, else `pil`.

Chosen with $DDKIT_DECODE (the CLI's `ddkit --decode`). The torchvision paths give the PIL path's
pixels up to the resize's rounding (at most 2/255, `decode.fit_tensor`): JPEG decoding (libjpeg-turbo
in both on the CPU) and the grey conversion (`decode.gray_from_rgb`) are exact. nvjpeg's IDCT and
chroma upsampling are its own, so GPU-decoded pixels may differ slightly more (scripts/gpu_check.py
prints the difference). Ids and fingerprints come from the file bytes and do not depend on the
backend. Indexing a folder (`ddkit.data.manifest`) always decodes with PIL: it is what validates the
files and gives the normalization, once per folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from ddkit.data.decode import MAX_IMAGE_PIXELS, FolderFit, decode_image, fit_tensor, gray_from_rgb
from ddkit.errors import FileFormatError, InvalidInput

DECODE_CHOICES = ("auto", "pil", "torchvision", "nvjpeg")
_TORCHVISION_SOF = frozenset({0xC0, 0xC1, 0xC2})  # baseline, extended and progressive Huffman JPEG
_PROBES: dict[str, str] = {}  # device -> "" when torchvision decodes JPEG there, else why not


def decode_choice() -> str:
    """$DDKIT_DECODE, checked (default auto)."""
    value = os.environ.get("DDKIT_DECODE", "auto").strip() or "auto"
    if value not in DECODE_CHOICES:
        raise InvalidInput(f"DDKIT_DECODE={value!r} is not a decode backend", f"use one of {', '.join(DECODE_CHOICES)}")
    return value


@dataclass(frozen=True)
class DecodePlan:
    """How a streamed folder read decodes: `backend` ("pil" or "torchvision") and `device`: None when
    the workers decode (on the CPU), else the device the consumer decodes whole batches on while the
    workers only read bytes."""

    backend: str = "pil"
    device: torch.device | None = None

    def describe(self) -> str:
        where = "in the workers" if self.device is None else f"batched on {self.device}"
        return f"{self.backend} {where}"


def _tiny_jpeg() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def gpu_decode_problem(device: torch.device | str = "cuda") -> str:
    """Why torchvision cannot decode JPEG on `device` ("" when it can); probed once per device."""
    device = torch.device(device)
    key = str(device)
    if key not in _PROBES:
        if not torch.cuda.is_available():
            _PROBES[key] = f"no CUDA device is present (torch {torch.__version__}, CUDA {torch.version.cuda or 'none'})"
        else:
            try:
                from torchvision.io import decode_jpeg

                decode_jpeg([bytes_tensor(_tiny_jpeg())], device=device)
                _PROBES[key] = ""
            except (ImportError, RuntimeError) as exc:
                _PROBES[key] = f"torchvision cannot decode JPEG on {device} ({str(exc).splitlines()[0]})"
    return _PROBES[key]


def decode_plan(device: torch.device | str | None = None) -> DecodePlan:
    """The plan for a read whose consumer is on `device` (None: the CPU), from $DDKIT_DECODE."""
    choice = decode_choice()
    device = torch.device(device) if device is not None else torch.device("cpu")
    if choice == "pil":
        return DecodePlan("pil")
    if choice == "nvjpeg":
        gpu = device if device.type == "cuda" else torch.device("cuda")
        problem = gpu_decode_problem(gpu)
        if problem:
            raise InvalidInput(f"--decode nvjpeg (DDKIT_DECODE=nvjpeg) decodes on the GPU, but {problem}",
                               "use --decode auto (or pil / torchvision) to decode on the CPU, or run on a machine "
                               "with a GPU and CUDA builds of torch and torchvision")
        return DecodePlan("torchvision", gpu)
    if device.type == "cuda" and not gpu_decode_problem(device):
        return DecodePlan("torchvision", device)
    return DecodePlan("torchvision" if choice == "torchvision" else "pil")


def bytes_tensor(data: bytes) -> torch.Tensor:
    """A file's bytes as the uint8 1-D tensor torchvision decodes (and DataLoader workers pass on)."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)


def jpeg_frame(data) -> tuple[int, int, int, int] | None:
    """(SOF marker, components, height, width) of a JPEG's frame header; None when `data` is not a JPEG
    or its header cannot be followed. Read so that only files nvjpeg/libjpeg-turbo decode the way PIL
    does (Huffman-coded, grey or YCbCr) take the torchvision path, and so that their pixel count is
    checked before anything is allocated on the device."""
    b = memoryview(data)
    if len(b) < 4 or b[0] != 0xFF or b[1] != 0xD8:
        return None
    i = 2
    while i + 3 < len(b):
        if b[i] != 0xFF:
            return None
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        length = (b[i + 2] << 8) | b[i + 3]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 >= len(b):
                return None
            return marker, b[i + 9], (b[i + 5] << 8) | b[i + 6], (b[i + 7] << 8) | b[i + 8]
        if marker in (0xD9, 0xDA) or length < 2:  # end of image or scan before any frame header
            return None
        i += 2 + length
    return None


def _torchvision_decodes(data) -> bool:
    frame = jpeg_frame(data)
    return (frame is not None and frame[0] in _TORCHVISION_SOF and frame[1] in (1, 3)
            and 0 < frame[2] * frame[3] <= MAX_IMAGE_PIXELS)


def decode_files(encoded: list[torch.Tensor], paths: list[str], shape: tuple, fit: FolderFit | None,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Files' bytes (uint8 1-D tensors) to uint8 N×C×H×W on `device`, the torchvision way: JPEGs by
    `torchvision.io.decode_jpeg` in one batched call (nvjpeg on a CUDA device), the rest by PIL on
    the CPU, then `fit_tensor` — images of one size fitted together. `shape` is the indexed C×H×W;
    a file that does not decode to it is a FileFormatError naming it."""
    device = torch.device(device)
    channels = shape[0]
    images: list[torch.Tensor | None] = [None] * len(encoded)
    jpegs = [k for k, e in enumerate(encoded) if _torchvision_decodes(e.numpy())]
    for k, x in zip(jpegs, _decode_jpegs([encoded[k] for k in jpegs], device)):
        images[k] = x
    for k, x in enumerate(images):
        if x is None:  # not a JPEG torchvision takes, or one nvjpeg refused
            array = decode_image(paths[k], data=encoded[k].numpy().tobytes(), channels=channels)
            images[k] = torch.from_numpy(array.copy()).to(device)  # PIL's array is read-only
        elif channels == 1:
            images[k] = gray_from_rgb(x)  # PIL's conversion (libjpeg's grey output is the Y plane: not the same)
    if fit is not None:
        images = _fit_by_size(images, fit)
    for path, x in zip(paths, images):
        check_decoded_shape(path, tuple(x.shape), shape)
    return torch.stack(images) if images else torch.zeros((0, *shape), dtype=torch.uint8, device=device)


def check_decoded_shape(path: str, got: tuple, shape: tuple) -> None:
    """A decoded file must have its indexed C×H×W (FileFormatError naming it otherwise)."""
    if tuple(got) != tuple(shape):
        raise FileFormatError(f"{path} decodes to {tuple(got)}, not its indexed {tuple(shape)}")


def _decode_jpegs(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """RGB uint8 C×H×W per JPEG (None where torchvision refused one: PIL then decodes it). One batched
    call (torchvision ≥ 0.19 takes a list); when it fails as a whole, file by file, so one odd file does
    not send its batch to PIL."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not encoded:
        return []
    try:
        return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
    except (RuntimeError, TypeError):
        out = []
        for e in encoded:
            try:
                out.append(decode_jpeg(e, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                out.append(None)
        return out


def _fit_by_size(images: list[torch.Tensor], fit: FolderFit) -> list[torch.Tensor]:
    """`fit_tensor` over each group of same-sized images at once (one resize call per size)."""
    groups: dict[tuple, list[int]] = {}
    for k, x in enumerate(images):
        groups.setdefault(tuple(x.shape), []).append(k)
    out: list = [None] * len(images)
    for members in groups.values():
        for k, y in zip(members, fit_tensor(torch.stack([images[k] for k in members]), fit)):
            out[k] = y
    return out
