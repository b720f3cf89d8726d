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
MAX_EXPANDED = 1_000_000  # container entries, shared references followed
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


def check_plain(obj: Any, where: str, depth: int = 0, _sizes: dict[int, int] | None = None) -> int:
    """Refuse (FileFormatError) anything but tensors, containers of them, strings, numbers and None;
    the number of entries `obj` expands to when every reference is followed.

    A pickle can reference one container many times (its memo), so lists nested 30 deep that each
    hold the previous one 8 times are 1 kB on disk and 8**30 entries to anyone who walks them. Each
    container is walked once (shared references are counted from a memo of their sizes), and one
    that expands to more than `MAX_EXPANDED` entries is refused, so no later walk can blow up. A
    tensor that views fewer stored values than it has elements (a stride-0 `expand`: 765 bytes that
    become 400 000 images when copied) is refused too.
    """
    sizes = {} if _sizes is None else _sizes
    if depth > 32:
        raise FileFormatError(f"{where} nests containers more than 32 deep", SAFE_FIX)
    if isinstance(obj, (dict, list, tuple)):
        if id(obj) in sizes:
            return sizes[id(obj)]
        total = 1
        items = obj.items() if isinstance(obj, dict) else enumerate(obj)
        for key, value in items:
            if isinstance(obj, dict) and not isinstance(key, (str, int)):
                raise FileFormatError(f"{where} has a dict key of type {type(key).__name__}", SAFE_FIX)
            total += check_plain(value, f"{where}[{key!r}]", depth + 1, sizes)
            if total > MAX_EXPANDED:
                short = where if len(where) <= 100 else where[:100] + "…"
                raise FileFormatError(
                    f"{short} expands to more than {MAX_EXPANDED} entries when its shared references are followed "
                    "(a pickle that repeats containers)", SAFE_FIX)
        sizes[id(obj)] = total
        return total
    if not isinstance(obj, PLAIN_TYPES):
        raise FileFormatError(f"{where} holds a {type(obj).__module__}.{type(obj).__name__} object", SAFE_FIX)
    if isinstance(obj, torch.Tensor):
        if obj.is_sparse or obj.is_quantized or obj.layout != torch.strided:
            raise FileFormatError(f"{where} holds a {obj.layout} tensor", "store dense tensors")
        stored = obj.untyped_storage().nbytes() // max(1, obj.element_size())
        if obj.numel() > stored:
            raise FileFormatError(
                f"{where} is a tensor of shape {tuple(obj.shape)} ({obj.numel()} values) viewing {stored} stored "
                "values (a stride-0 or overlapping view)", "save a contiguous tensor (tensor.contiguous())")
    return 1
