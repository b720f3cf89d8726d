"""Opening, refusing and writing ddkit HDF5 files: the logic both file kinds share.

Every file ddkit writes is *sealed*: its 512-byte HDF5 user block (bytes HDF5 itself ignores, so
any HDF5 reader still opens the file) holds a sha256 of the rest of the file, and after that line
optional records the seal does not cover (a signature over the content and header hashes, written
by `ddkit sign`; re-sealing keeps them). The seal is checked
in plain Python before the HDF5 library parses a single byte, because a corrupted file can crash
the HDF5 C library itself (a segfault is not an exception anyone can catch); a truncated, spliced
or bit-flipped file is refused with a clear message instead.

Every read of a store file goes through `open_store` (which refuses missing, non-HDF5, foreign and
too-new files with one clear message, and files that break the reader policy of `ddkit.h5safe`:
links or data outside the file, declared sizes the file cannot hold, oversized attributes) and
runs inside `reading`, which turns whatever h5py, the OS or the JSON parser raises into a
`FileFormatError` naming the file, so a damaged file never ends in a raw traceback.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import h5py
import numpy as np

import ddkit
from ddkit.errors import FileFormatError, IncompatibleError, InvalidInput
from ddkit.fileio import atomic_output, folder_lock
from ddkit.h5safe import open_hdf5
from ddkit.store.hashing import content_sha256, header_sha256
from ddkit.store.schema import BASE_SCHEMA, DISTILLED_FORMAT, SCHEMA, SELECTION_FORMAT, attr_text

KIND_NAMES = {
    DISTILLED_FORMAT: "ddkit distilled dataset (.ddk.h5)",
    SELECTION_FORMAT: "ddkit selection file (.sel.h5)",
}
DAMAGED_FIX = "the file is damaged or was not written by ddkit; write or download it again"

# Exceptions that mean "this file is not what it should be" when raised while reading one.
READ_ERRORS = (OSError, KeyError, ValueError, TypeError, RuntimeError, IndexError, UnicodeError)

_COMPRESS_MIN_BYTES = 16 << 10  # below this, compression costs more than it saves
_CHUNK_CACHE_BYTES = 1 << 20  # h5py's default chunk cache: one chunk must fit for fast row reads


@contextlib.contextmanager
def reading(path: str | os.PathLike) -> Iterator[None]:
    """Turn low-level read errors and invalid stored values into a FileFormatError about `path`."""
    try:
        yield
    except InvalidInput as exc:  # a stored value that fails ddkit's own checks
        raise FileFormatError(f"{path}: {exc.problem}", DAMAGED_FIX) from exc
    except READ_ERRORS as exc:
        detail = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise FileFormatError(f"{path} could not be read: {detail}", DAMAGED_FIX) from exc


SEAL_BYTES = 512  # the HDF5 user block
_SEAL_MAGIC = b"ddkit-seal v1 sha256="
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _body_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(SEAL_BYTES)
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


_RECORD_PREFIX = b"ddkit-"


def block_records(block: bytes) -> list[bytes]:
    """The records after the seal line of a user block (lines starting `ddkit-`): what the seal does
    not cover because it lives beside it, such as a signature (`ddkit.share.sign`)."""
    text = block[:SEAL_BYTES].split(b"\0", 1)[0]
    return [line for line in text.split(b"\n")[1:] if line.startswith(_RECORD_PREFIX)]


def _user_block(body_sha256: str, records: list[bytes]) -> bytes:
    block = _SEAL_MAGIC + body_sha256.encode() + b"\n" + b"".join(r + b"\n" for r in records)
    if len(block) > SEAL_BYTES:
        raise InvalidInput(f"the user block records take {len(block)} bytes, over the {SEAL_BYTES} available")
    return block.ljust(SEAL_BYTES, b"\0")


def seal_bytes(data: bytes, records: list[bytes] | None = None) -> bytes:
    """The file image `data` with the sha256 of everything after the user block written into it.

    The records after the seal line (`records`, or those already in `data`'s user block) are kept:
    a signature covers the file's content and header hashes, not the seal, so re-sealing after a
    result card is added leaves it valid (and after any other edit, verifiably broken).
    """
    keep = block_records(data[:SEAL_BYTES]) if records is None else records
    return _user_block(hashlib.sha256(memoryview(data)[SEAL_BYTES:]).hexdigest(), keep) + data[SEAL_BYTES:]


def seal(path: str | os.PathLike) -> None:
    """Re-seal a file in place (for tools and tests that edit a ddkit file with h5py)."""
    Path(path).write_bytes(seal_bytes(Path(path).read_bytes()))


def read_block(path: str | os.PathLike) -> bytes:
    """The user block (seal line and records) of a file."""
    with open(path, "rb") as fh:
        return fh.read(SEAL_BYTES)


def replace_records(path: str | os.PathLike, records: list[bytes]) -> None:
    """Rewrite the records after the seal line of the sealed file `path` (atomically: a copy with the
    new user block is renamed over it). The seal line and every byte it covers stay as they are."""
    with folder_lock(path):  # the same lock result-card writers take: neither loses the other's change
        check_seal(path, full=True)
        with open(path, "rb") as src:
            seal_line = src.read(SEAL_BYTES).split(b"\n", 1)[0]
            body_sha256 = seal_line[len(_SEAL_MAGIC):].decode("ascii")
            with atomic_output(path, overwrite=True) as tmp, open(tmp, "wb") as dst:
                dst.write(_user_block(body_sha256, records))
                while chunk := src.read(1 << 20):
                    dst.write(chunk)


@contextlib.contextmanager
def building(image: bytes | None = None) -> Iterator[tuple[h5py.File, list]]:
    """An HDF5 file built in memory (from `image`, or new); yields (file, out) and puts the
    sealed file image in `out[0]` when the block ends.

    Building in memory and writing the finished bytes with plain file I/O keeps the HDF5 library
    away from disk errors: a full disk or a file-size limit surfaces as an ordinary OSError (which
    `atomic_output` turns into a clear message), never as a half-closed HDF5 file that can crash
    the library when it is cleaned up.
    """
    buffer = io.BytesIO(image or b"")
    out: list[bytes] = []
    with h5py.File(buffer, "r+" if image else "w", **({} if image else {"userblock_size": SEAL_BYTES})) as h5:
        yield h5, out
    out.append(seal_bytes(buffer.getvalue()))


def check_seal(path: str | os.PathLike, full: bool = True, wanted: str = "ddkit file") -> None:
    """Refuse a file that is not sealed by ddkit or (with `full`) whose bytes no longer match the seal."""
    path = Path(path)
    if not path.exists():
        raise FileFormatError(f"{path} does not exist", "check the path")
    if path.is_dir():
        raise FileFormatError(f"{path} is a directory, not a file", "give the path of a .ddk.h5 or .sel.h5 file")
    with open(path, "rb") as fh:
        head = fh.read(SEAL_BYTES + len(_HDF5_SIGNATURE))
    if not head.startswith(_SEAL_MAGIC):
        if _HDF5_SIGNATURE in (head[:8], head[SEAL_BYTES:]):
            raise FileFormatError(f"{path} is not a {wanted}: it is an HDF5 file without ddkit's seal", "give a file written by ddkit")
        raise FileFormatError(
            f"{path} is not a readable HDF5 file (truncated, corrupt or another format)",
            "re-download or re-create the file; a partial download is the usual cause",
        )
    if not full:
        return
    recorded = head[len(_SEAL_MAGIC) : len(_SEAL_MAGIC) + 64].decode("ascii", "replace")
    if _body_sha256(path) != recorded or len(head) < SEAL_BYTES + len(_HDF5_SIGNATURE):
        raise FileFormatError(
            f"{path} is damaged: its bytes do not match the checksum ddkit sealed it with (truncated, corrupt or edited HDF5)",
            "re-download or re-create the file; a partial download is the usual cause",
        )


def open_h5(path: str | os.PathLike) -> h5py.File:
    """Open the local file `path` read-only under ddkit's reader policy (`ddkit.h5safe`): nothing
    outside the file is reachable and no dataset declares more than the file holds. This is the one
    opener of every ddkit HDF5 format; `open_store` adds the seal and the format checks."""
    return open_hdf5(path, what="ddkit file")


def check_identity(h5: h5py.File, path: str | os.PathLike, formats: tuple[str, ...]) -> str:
    """The file's format, after refusing a foreign format or a schema newer than this ddkit."""
    wanted = " or ".join(KIND_NAMES[f] for f in formats)
    fmt = attr_text(h5.attrs["format"]) if "format" in h5.attrs else None
    if fmt is None:
        raise FileFormatError(
            f"{path} is not a {wanted}: it is an HDF5 file without ddkit's format attribute",
            "give a file written by ddkit",
        )
    if fmt not in formats:
        what = f"a {KIND_NAMES[fmt]}" if fmt in KIND_NAMES else f"of format {fmt!r}"
        raise FileFormatError(f"{path} is {what}, not a {wanted}", "give a file of the expected kind")
    schema = h5.attrs.get("schema")
    if not isinstance(schema, (int, np.integer)) or schema < 1:
        raise FileFormatError(f"{path} has an invalid schema attribute {schema!r}", DAMAGED_FIX)
    if schema > SCHEMA:
        raise FileFormatError(
            f"{path} uses {fmt} schema {int(schema)}, but ddkit {ddkit.__version__} reads only up to schema {SCHEMA}",
            "upgrade ddkit: pip install -U ddkit",
        )
    return fmt


def open_store(path: str | os.PathLike, formats: tuple[str, ...], verify: bool | str = "auto") -> tuple[h5py.File, str]:
    """Check the seal (fully when `verify` says so), then open a ddkit file of one of `formats`
    read-only; the caller closes the returned file."""
    wanted = " or ".join(KIND_NAMES[f] for f in formats)
    check_seal(path, full=should_verify(path, verify) if Path(path).is_file() else True, wanted=wanted)
    h5 = open_h5(path)
    try:
        with reading(path):
            return h5, check_identity(h5, path, formats)
    except BaseException:
        h5.close()
        raise


def verify_content(h5: h5py.File, path: str | os.PathLike) -> str:
    """Recompute the content and header hashes; refuse a file whose data or header does not match."""
    with reading(path):
        recorded = attr_text(h5.attrs["content_sha256"])
        actual = content_sha256(h5)
        recorded_header = attr_text(h5.attrs["header_sha256"])
        actual_header = header_sha256(h5)
    if recorded_header != actual_header:
        raise FileFormatError(
            f"{path}: header hash mismatch: the file's attributes were modified or corrupted",
            "re-download or re-create the file",
        )
    if actual != recorded:
        raise FileFormatError(
            f"{path}: content hash mismatch: the file was modified or corrupted "
            f"(recorded {recorded[:12]}…, computed {actual[:12]}…)",
            "re-download or re-create the file",
        )
    return actual


def should_verify(path: str | os.PathLike, verify: bool | str, auto_limit: int = 256 << 20) -> bool:
    """`verify` is True, False or "auto" (hash files under `auto_limit` bytes on open)."""
    if verify == "auto":
        return os.path.getsize(path) < auto_limit
    if isinstance(verify, bool):
        return verify
    raise InvalidInput(f"verify must be True, False or 'auto', got {verify!r}")


def read_group_arrays(group: h5py.Group) -> dict[str, np.ndarray]:
    """Every dataset below `group`, by path relative to it, loaded into memory."""
    arrays: dict[str, np.ndarray] = {}
    group.visititems(lambda name, obj: arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return arrays


# -- writing --------------------------------------------------------------------------------------


def create_dataset(group: h5py.Group, name: str, array: np.ndarray, chunks: tuple[int, ...] | None = None) -> None:
    """Store `array` losslessly: gzip + byte shuffle when it is big enough to be worth it."""
    options: dict = {}
    if array.size and (chunks is not None or array.nbytes >= _COMPRESS_MIN_BYTES):
        options = dict(compression="gzip", compression_opts=4, shuffle=True, chunks=chunks or True)
    group.create_dataset(name, data=array, **options)


def image_chunks(shape: tuple[int, ...], itemsize: int, rows_per_class: int) -> tuple[int, ...]:
    """Chunk rows: at most one class's worth of images, and at most one chunk-cache's worth of bytes."""
    row_bytes = itemsize * int(np.prod(shape[1:]))
    rows = max(1, min(rows_per_class, shape[0], _CHUNK_CACHE_BYTES // max(1, row_bytes)))
    return (rows, *shape[1:])


def write_attrs(obj: h5py.HLObject, attrs: Mapping) -> None:
    for key, value in attrs.items():
        obj.attrs[key] = value


def write_store(
    path: str | os.PathLike,
    fmt: str,
    arrays: Mapping[str, np.ndarray],
    header_attrs: Mapping,
    group_attrs: Mapping[str, Mapping] | None = None,
    chunks: Mapping[str, tuple[int, ...]] | None = None,
    overwrite: bool = False,
    schema: int = BASE_SCHEMA,
    expect_content: str | None = None,
) -> str:
    """Write a ddkit file atomically: datasets, group attributes, root attributes, content hash.

    The caller has validated everything; any failure here leaves no file under `path`. The hash is
    computed from the file as written, with the same function the reader uses. Returns the hash;
    with `expect_content`, a file whose hash differs is refused (IncompatibleError) before a byte
    reaches `path`.
    """
    with building() as (h5, image):
        for name, array in arrays.items():
            create_dataset(h5, name, array, (chunks or {}).get(name))
        for name, attrs in (group_attrs or {}).items():
            write_attrs(h5.require_group(name), attrs)
        write_attrs(h5, {"format": fmt, "schema": int(schema), **header_attrs})
        digest = content_sha256(h5)
        if expect_content is not None and digest != expect_content:
            raise IncompatibleError(f"the data would have content {digest[:12]}…, not the {expect_content[:12]}… "
                                    "it must reproduce", "the source was changed; get a good copy")
        h5.attrs["content_sha256"] = digest
        h5.attrs["header_sha256"] = header_sha256(h5)
    with atomic_output(path, overwrite) as tmp:
        tmp.write_bytes(image[0])
    return digest
