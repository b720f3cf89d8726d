"""Reading the field's `.pt` files without running them.

Released distilled sets (DC/DSA/DM `res_*.pt`, MTT/DATM `images_best.pt`, DD-Ranking inputs) are
pickles. A pickle can name any importable callable, and unpickling calls it: opening a stranger's
`.pt` with plain `torch.load` runs whatever code its author chose. Here a `.pt` is read with
`torch.load(weights_only=True)`, whose unpickler resolves only an allow-list of tensor-building
globals and refuses everything else before calling it, and the result must then be built from
tensors, lists, tuples, dicts, strings, numbers and None alone: any other object is refused too.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ddkit.errors import FileFormatError

PLAIN_TYPES = (torch.Tensor, bool, int, float, str, type(None))
SAFE_FIX = (
    "only tensors, lists, dicts and numbers are imported; re-save the set as plain tensors (torch.save(tensor, PATH))"
)


def load_plain(path: str | os.PathLike) -> Any:
    """The content of the `.pt` file at `path`, refused unless it is made of plain containers and tensors."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileFormatError(f"{path} does not exist", "check the path") from None
    except Exception as exc:  # torch raises many types for foreign bytes and refused globals
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise FileFormatError(
            f"{path} cannot be read as plain tensors with torch.load(weights_only=True): {first}", SAFE_FIX
        ) from None
    check_plain(obj, str(path))
    return obj


def check_plain(obj: Any, where: str, depth: int = 0) -> None:
    """Refuse (FileFormatError) anything but tensors, containers of them, strings, numbers and None."""
    if depth > 32:
        raise FileFormatError(f"{where} nests containers more than 32 deep", SAFE_FIX)
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise FileFormatError(f"{where} has a dict key of type {type(key).__name__}", SAFE_FIX)
            check_plain(value, f"{where}[{key!r}]", depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            check_plain(value, f"{where}[{i}]", depth + 1)
    elif not isinstance(obj, PLAIN_TYPES):
        raise FileFormatError(f"{where} holds a {type(obj).__module__}.{type(obj).__name__} object", SAFE_FIX)
    elif isinstance(obj, torch.Tensor) and (obj.is_sparse or obj.is_quantized or obj.layout != torch.strided):
        raise FileFormatError(f"{where} holds a {obj.layout} tensor", "store dense tensors")
