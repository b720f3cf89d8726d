"""Point sets for `ddkit.index`: an in-memory numpy array, or rows read in blocks from a chunked
HDF5 dataset or a memory-mapped file (`np.memmap`, `np.load(..., mmap_mode="r")`).

Every index function takes its points through `as_points`, which validates once (2-D, real, finite
per block, a known row count) and hides where the rows live. Computations walk the rows in fixed
blocks, for in-memory and streamed inputs alike, so a streamed run does exactly the same arithmetic
as an in-memory one and returns the same answer. A memmap is streamed rather than taken as an
in-memory array, so nothing makes a whole-array copy of it (k-center's centered copy would double
the memory of a 10M × 64 file to ~5 GB; streamed, it needs one block).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ddkit.errors import InvalidInput

# Rows per block for streamed inputs and for the O(N) passes of k-center: large enough that the
# per-block overhead is negligible, small enough that a block stays a few MiB.
DEFAULT_BLOCK_BYTES = 8 << 20


@dataclass
class Points:
    """N×d float32 rows, in memory (`array`) or in an HDF5 dataset or memmap (`h5`), read by `blocks()`.

    Streamed rows are checked for NaN/inf as they are read until one full pass has been made;
    later passes (k-center makes one per pick) read them unchecked.
    """

    name: str
    n: int
    d: int
    array: np.ndarray | None = None
    h5: object | None = None  # h5py.Dataset or np.memmap
    block_rows: int = 0
    checked: bool = False  # every row has been read and found finite

    @property
    def streamed(self) -> bool:
        return self.array is None

    def blocks(self, block_rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (start row, float32 C-contiguous block) over all rows, in order."""
        rows = block_rows or self.block_rows
        for start in range(0, self.n, rows):
            yield start, self.rows(start, min(start + rows, self.n))
        self.checked = True

    def rows(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows start..stop−1 as float32. `out` (float32, ≥ stop − start rows × d) is where rows of an
        HDF5 dataset are read when given, instead of a fresh array; other inputs ignore it (the
        result is then a view of the points, or a copy)."""
        if self.array is not None:
            return self.array[start:stop]
        if out is not None and _is_h5_dataset(self.h5) and self.h5.dtype == np.float32:
            block = out[: stop - start]
            self.h5.read_direct(block, np.s_[start:stop])
        else:
            block = np.ascontiguousarray(self.h5[start:stop], dtype=np.float32)
        if not self.checked and not np.isfinite(block).all():
            raise InvalidInput(f"{self.name} has NaN or inf values in rows {start}..{stop - 1}", "drop or repair those rows")
        return block

    def take(self, positions: np.ndarray) -> np.ndarray:
        """The rows at `positions` (any order), as float32."""
        positions = np.asarray(positions, dtype=np.int64)
        if self.array is not None:
            return self.array[positions]
        order = np.argsort(positions, kind="stable")
        unique, inverse = np.unique(positions[order], return_inverse=True)
        picked = np.asarray(self.h5[unique], dtype=np.float32)[inverse]
        out = np.empty_like(picked)
        out[order] = picked
        return out

    def load(self) -> np.ndarray:
        """All rows in memory (only for inputs that are known to fit)."""
        if self.array is not None:
            return self.array
        if self.n == 0:
            return np.empty((0, self.d), np.float32)
        return np.concatenate([block for _, block in self.blocks()])


def _is_h5_dataset(x) -> bool:
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is a dependency
        return False
    return isinstance(x, h5py.Dataset)


def as_points(x, name: str = "points", *, block_rows: int | None = None, allow_empty: bool = False) -> Points:
    """Validate `x` (numpy-like N×d, an h5py.Dataset or an np.memmap) and wrap it as `Points`.

    In-memory inputs are converted to C-contiguous float32 once (a copy only if they are not
    already); an HDF5 dataset or a memmap is never read whole: its rows are read in blocks (aligned
    to an HDF5 dataset's chunks), so inputs larger than memory work.
    """
    if isinstance(x, Points):
        return x
    if _is_h5_dataset(x) or isinstance(x, np.memmap):
        if x.ndim != 2:
            raise InvalidInput(f"{name} must be a 2-D dataset (N×d), got shape {x.shape}", "store one vector per row")
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise InvalidInput(f"{name} has dtype {x.dtype}, expected a real number type", "store float32 vectors")
        n, d = (int(s) for s in x.shape)
        rows = block_rows or _rows_for(d)
        if getattr(x, "chunks", None):  # read whole chunks: a block is a multiple of the chunk height
            rows = max(x.chunks[0], rows // x.chunks[0] * x.chunks[0])
        points = Points(name, n, d, h5=x, block_rows=rows)
    else:
        try:
            array = np.asarray(x)
        except Exception as exc:  # noqa: BLE001 - anything numpy cannot take is bad input
            raise InvalidInput(f"{name} is not array-like ({type(x).__name__}: {exc})", "pass a numpy array or an h5py.Dataset") from None
        if array.ndim != 2:
            raise InvalidInput(f"{name} must be a 2-D array (N×d), got shape {array.shape}", "reshape to one vector per row")
        if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
            raise InvalidInput(f"{name} has dtype {array.dtype}, expected real numbers", "pass float32 vectors")
        array = np.ascontiguousarray(array, dtype=np.float32)
        if not np.isfinite(array).all():
            bad = int((~np.isfinite(array)).any(1).sum())
            raise InvalidInput(f"{name} has NaN or inf values in {bad} rows", "drop or repair those rows")
        points = Points(name, array.shape[0], array.shape[1], array=array, block_rows=block_rows or _rows_for(array.shape[1]))
    if points.d < 1:
        raise InvalidInput(f"{name} has vectors of dimension 0", "pass at least one feature per row")
    if points.n == 0 and not allow_empty:
        raise InvalidInput(f"{name} has no rows", "pass at least one vector")
    return points


def _rows_for(d: int) -> int:
    return max(256, DEFAULT_BLOCK_BYTES // (4 * max(d, 1)))


def check_int(value, name: str, low: int, high: int | None = None) -> int:
    """An integer in [low, high] (keyword validation in the faiss-wrapper manner)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidInput(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f"≥ {low}"
        raise InvalidInput(f"{name} = {value} is out of range {bound}")
    return value


def check_positions(positions, n: int, name: str) -> np.ndarray:
    """Unique int64 row positions in [0, n)."""
    if positions is None:
        return np.empty(0, np.int64)
    array = np.asarray(positions)
    if array.size == 0:
        return np.empty(0, np.int64)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise InvalidInput(f"{name} must be a 1-D array of integer row positions, got {array.dtype} of shape {array.shape}")
    array = array.astype(np.int64)
    if array.min() < 0 or array.max() >= n:
        raise InvalidInput(f"{name} has positions outside [0, {n}) (min {array.min()}, max {array.max()})", "pass row positions into the points")
    if len(np.unique(array)) != len(array):
        raise InvalidInput(f"{name} lists a position more than once", "pass each position once")
    return array
