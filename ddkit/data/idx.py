"""A small reader for the IDX format (the MNIST / Fashion-MNIST file format), gzipped or not.

IDX is a fixed header followed by raw big-endian numbers: two zero bytes, a type code, the number
of dimensions, then one big-endian uint32 per dimension. We read it ourselves, rather than through
torchvision, so the files can come from anywhere (a Debian package, a user's folder) and so a
truncated or foreign file fails with a message naming it instead of a reshape error.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from ddkit.errors import FileFormatError

# IDX type code -> big-endian numpy dtype.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: str | os.PathLike) -> bytes:
    """The file's content, decompressed when it is gzip (detected by its magic bytes, not its name)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise FileFormatError(f"cannot read {path}: {exc.strerror or exc}", "check the path and permissions") from exc
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise FileFormatError(
            f"{path} is a damaged gzip file ({exc})", "download or copy the file again"
        ) from exc


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode IDX bytes into a native-endian numpy array; `name` is used in error messages."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise FileFormatError(
            f"{name} is not an IDX file (bad magic number {data[:4].hex() or 'empty'})",
            "point ddkit at the original IDX files (e.g. train-images-idx3-ubyte.gz)",
        )
    dtype, ndim = IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise FileFormatError(f"{name} is truncated inside its IDX header", "download or copy the file again")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise FileFormatError(
            f"{name} is {what}: header promises shape {shape} ({expected} bytes), file has {len(data)} bytes",
            "download or copy the file again",
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (raw or gzipped) into a numpy array; damage raises FileFormatError."""
    return parse_idx(read_bytes(path), str(path))


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> None:
    """Write `array` as IDX (gzipped when `compress`, default: when the name ends in .gz).

    Used by tests and by tools that make small IDX fixtures; not an atomic writer.
    """
    path = Path(path)
    codes = {v.newbyteorder("="): k for k, v in IDX_DTYPES.items()}
    native = np.dtype(array.dtype).newbyteorder("=")
    if native not in codes:
        raise FileFormatError(f"IDX cannot store dtype {array.dtype}", f"use one of {sorted(map(str, codes))}")
    body = struct.pack(f">BBBB{array.ndim}I", 0, 0, codes[native], array.ndim, *array.shape)
    body += np.ascontiguousarray(array).astype(IDX_DTYPES[codes[native]], copy=False).tobytes()
    if compress if compress is not None else path.suffix == ".gz":
        body = gzip.compress(body, mtime=0)
    path.write_bytes(body)
