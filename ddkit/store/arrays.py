"""Array coercion and checks shared by the stored records (payloads, composite, selection)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ddkit.errors import InvalidInput


def as_array(value: Any, dtype, ndim: int | None, what: str) -> np.ndarray:
    """`value` (tensor, array or nested list) as a numpy array of `dtype`, checking its rank."""
    if hasattr(value, "detach"):  # a torch tensor (torch itself is not imported: headers are read without it)
        value = value.detach().cpu().numpy()
    array = np.ascontiguousarray(np.asarray(value), dtype=dtype)
    if ndim is not None and array.ndim != ndim:
        raise InvalidInput(f"{what} must have {ndim} dimensions, got shape {array.shape}")
    return array


def check_finite(array: np.ndarray, what: str) -> None:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInput(
            f"{what} contain NaN or inf ({int((~np.isfinite(array)).sum())} values)",
            "repair them; float16 overflows above 65504, so scale or clip such values first",
        )
