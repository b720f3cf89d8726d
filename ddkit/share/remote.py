"""Files behind URLs (https, s3, gs, hf, file, … through fsspec), read the way ddkit reads local files.

`fetch(url)` downloads a file into `$DDKIT_CACHE/remote/` and hands back a local path, only after
checking it: a ddkit file's seal (the sha256 of every byte after the user block) and its content
hash must both hold, or the download is deleted and refused. A cached copy is reused when its
seal block equals the remote one's (one ranged read of 512 bytes) and it still verifies. Nothing
here changes how a file is opened: the local path then goes through the store's usual opener.

`header_info(url)` is `ddkit info` without the download: HDF5 reads the attributes, labels and
result cards through an fsspec file object that fetches only the byte ranges asked for, and the
header is trusted only when its `header_sha256` matches. Pixels are never read. The whole read runs
in a child process under the reader policy (`ddkit.h5safe.read_isolated`): the ranged reads go
through the structure walk before any dataset is read, and a crash of the HDF5 library on a
crafted header is one refusal. Catalog scans read local files the same way.

A server is a stranger too. Only the URL schemes of fsspec's storage back-ends are accepted; HTTP
reads have connect and read timeouts ($DDKIT_REMOTE_TIMEOUT seconds, default 15) and ask for the
bytes as stored (no transparent gzip/deflate decoding, so a compressed body cannot expand in
memory); a download must declare its size, may not exceed it (nor $DDKIT_MAX_DOWNLOAD bytes,
default 64 GiB, nor the free space of the cache) and must deliver all of it.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import h5py
import numpy as np

from ddkit.errors import DdkitError, FileFormatError, InvalidInput
from ddkit.fileio import atomic_output
from ddkit.h5safe import CHECK_SECONDS, read_isolated
from ddkit.store.describe import formation_summary
from ddkit.store.formation import read_formation
from ddkit.store.h5io import SEAL_BYTES, check_identity, check_seal, open_store, reading, verify_content
from ddkit.store.hashing import header_sha256
from ddkit.store.results import STORE_FORMATS
from ddkit.store.schema import DISTILLED_FORMAT, DistilledHeader, attr_text, decode_attrs, load_json

_BACKENDS = {
    "s3": "s3fs",
    "s3a": "s3fs",
    "gs": "gcsfs",
    "gcs": "gcsfs",
    "hf": "huggingface_hub",
    "http": "aiohttp",
    "https": "aiohttp",
    "az": "adlfs",
    "abfs": "adlfs",
}
_LOCAL = ("local",)  # fsspec's name for this machine's files (`file://` is stripped before fsspec)
_BLOCK = 1 << 20
HEADER_BLOCK = 64 << 10  # ranged reads of the header come in blocks of this size
TIMEOUT_SECONDS = 15.0
MAX_DOWNLOAD_BYTES = 64 << 30


def is_url(spec: str | os.PathLike) -> bool:
    """True for `scheme://…` (any fsspec protocol but a plain local path)."""
    return isinstance(spec, str) and "://" in spec and not spec.startswith("file://")


def local_target(spec: str) -> str | None:
    """The path on this machine that `spec` reads (a plain path, `file://…` or `local://…`); None for
    a remote URL."""
    if not is_url(spec):
        return spec[len("file://"):] if spec.startswith("file://") else spec
    scheme, _, rest = spec.partition("://")
    return rest if scheme.lower() in _LOCAL else None


def cache_dir() -> Path:
    return Path(os.environ.get("DDKIT_CACHE") or Path.home() / ".cache" / "ddkit") / "remote"


def filesystem(url: str):
    """(fsspec filesystem, path inside it) for `url`; an unknown scheme or missing back-end is a clear error."""
    import fsspec

    protocol = _scheme(url)
    try:
        return fsspec.core.url_to_fs(url, **_options(protocol))
    except (ImportError, ValueError) as exc:
        package = _BACKENDS.get(protocol, f"the fsspec back-end for {protocol}://")
        raise DdkitError(
            f"cannot read {protocol}:// URLs here ({exc})",
            f'pip install {package} (ddkit\'s extras: pip install "ddkit[remote]")',
        ) from None
    except Exception as exc:  # a malformed URL: each back-end raises its own errors
        raise _remote_error(url, exc) from None


def _scheme(url: str) -> str:
    """The URL's scheme, refused unless it names a storage back-end ddkit reads."""
    protocol = url.split("://", 1)[0].lower()
    if protocol not in _BACKENDS and protocol not in _LOCAL:
        raise InvalidInput(
            f"cannot read {url[:200]!r}: {protocol}:// is not a storage ddkit reads",
            f"give a local path or a URL of {', '.join(sorted(set(_BACKENDS) | set(_LOCAL)))}",
        )
    return protocol


def _options(protocol: str) -> dict:
    """fsspec options: for HTTP, timeouts and the bytes as stored (no transparent decompression)."""
    if protocol not in ("http", "https"):
        return {}
    import aiohttp

    seconds = _env_number("DDKIT_REMOTE_TIMEOUT", TIMEOUT_SECONDS)
    timeout = aiohttp.ClientTimeout(total=None, connect=seconds, sock_connect=seconds, sock_read=seconds)
    return {"client_kwargs": {"timeout": timeout, "auto_decompress": False},
            "headers": {"Accept-Encoding": "identity"}}


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise InvalidInput(f"${name} must be a positive number, got {raw!r}",
                           f"unset it or set e.g. {name}={default:g}")
    return value


def _remote_error(url: str, exc: Exception) -> DdkitError:
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return FileFormatError(
        f"cannot read {url[:300]} ({type(exc).__name__}{': ' + text if text else ''})",
        "check the URL, the network and your credentials",
    )


def local_path(spec: str) -> str:
    """`file://PATH` as PATH; anything else unchanged."""
    return spec[len("file://") :] if isinstance(spec, str) and spec.startswith("file://") else spec


def _cache_path(url: str) -> Path:
    name = url.rstrip("/").rsplit("/", 1)[-1].split("?")[0] or "file"
    return cache_dir() / hashlib.sha256(url.encode()).hexdigest()[:20] / name


def verify_local(path: Path, label: str, expected_content: str | None = None) -> str | None:
    """Check a ddkit file's seal and content hash (refuse on mismatch); returns the content hash.

    Whether it is a ddkit file is told by `label`'s name (the URL or final path, not a temporary name).
    """
    if not str(label).split("?")[0].endswith((".ddk.h5", ".sel.h5")):
        return None
    check_seal(path, full=True)
    h5, _ = open_store(path, STORE_FORMATS, verify=False)
    with h5:
        digest = verify_content(h5, label)
    if expected_content is not None and digest != expected_content:
        raise FileFormatError(
            f"{label} holds content {digest[:12]}…, not the {expected_content[:12]}… asked for",
            "the file at that URL changed since it was indexed; rescan the catalog",
        )
    return digest


def fetch(url: str, expected_content: str | None = None, refresh: bool = False) -> Path:
    """A verified local copy of `url` in the cache (see the module docstring). Local paths pass through."""
    if not is_url(url):
        return Path(local_path(url))
    fs, rpath = filesystem(url)
    target = _cache_path(url)
    try:
        size = fs.size(rpath)  # before any body is read: a download must declare its size
        _check_size(url, size, target)
        with _stream(fs, rpath, size, SEAL_BYTES) as src:
            head = src.read(SEAL_BYTES)
    except DdkitError:
        raise
    except Exception as exc:  # every back-end raises its own errors
        raise _remote_error(url, exc) from None
    if target.is_file() and not refresh:
        with open(target, "rb") as fh:
            same = fh.read(SEAL_BYTES) == head
        if same and _verifies(target, url, expected_content):
            return target
    try:
        with atomic_output(target, overwrite=True) as tmp:
            _download(fs, rpath, tmp, size, url)
            try:
                verify_local(tmp, url, expected_content)
            except FileFormatError as exc:
                raise FileFormatError(
                    f"download refused: {exc.problem}",
                    "the remote file is damaged or was tampered with; ask its owner for a good copy",
                ) from None
    except DdkitError:
        raise
    except Exception as exc:
        raise _remote_error(url, exc) from None
    return target


def _check_size(url: str, size, target: Path) -> None:
    """Refuse a download of undeclared size, over the limit or over the cache's free space."""
    import shutil

    if not isinstance(size, int) or size < 0:
        raise _undeclared(url)
    limit = int(_env_number("DDKIT_MAX_DOWNLOAD", MAX_DOWNLOAD_BYTES))
    if size > limit:
        raise FileFormatError(f"{url} is {size} bytes, over the download limit of {limit} bytes",
                              "raise $DDKIT_MAX_DOWNLOAD if you mean it")
    target.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(target.parent).free
    if size > free:
        raise DdkitError(f"{url} is {size} bytes, the cache {target.parent} has {free} bytes free",
                         "free disk space or point $DDKIT_CACHE elsewhere")


def _stream(fs, rpath: str, size: int, first: int | None = None):
    """The remote file opened for reading from its start (its `first` bytes only, when given), every
    read bounded by what it asks for.

    Over HTTP the body is streamed (fsspec's `block_size=0`): fsspec's ranged and whole-file reads
    call `read()` on a response, which a server that ignores the range and never stops sending would
    make endless."""
    from fsspec.implementations.http import HTTPFileSystem

    if not isinstance(fs, HTTPFileSystem):
        return fs.open(rpath, "rb", block_size=_BLOCK)
    headers = dict(_options("http")["headers"], **({"Range": f"bytes=0-{first - 1}"} if first else {}))
    return fs.open(rpath, "rb", block_size=0, size=size, headers=headers)  # size given: no second HEAD


def _undeclared(url: str) -> FileFormatError:
    return FileFormatError(f"{url}: the server does not declare the file's size (or sends it compressed)",
                           "serve the file as it is stored, with a Content-Length")


def _download(fs, rpath: str, tmp: Path, size: int, url: str) -> None:
    """Copy exactly `size` bytes; a longer or shorter body is refused."""
    copied = 0
    with _stream(fs, rpath, size) as src, open(tmp, "wb") as dst:
        while block := src.read(min(_BLOCK, size - copied + 1)):
            copied += len(block)
            if copied > size:
                raise FileFormatError(f"{url} sends more than the {size} bytes it declares",
                                      "the server is broken or hostile; ask the file's owner")
            dst.write(block)
    if copied != size:
        raise FileFormatError(f"{url}: the download ended after {copied} of {size} bytes",
                              "retry; a broken connection or a broken server is the usual cause")


def _verifies(path: Path, url: str, expected: str | None) -> bool:
    try:
        verify_local(path, url, expected)
    except FileFormatError:
        return False
    return True


def resolve(spec: str | None) -> str | None:
    """A path the store can open: URLs fetched and verified, `file://` stripped, local paths unchanged."""
    if spec is None:
        return None
    return str(fetch(spec)) if is_url(spec) else local_path(spec)


# -- header-only reads ----------------------------------------------------------------------------


class CountingFile(io.RawIOBase):
    """A read-only file object that counts the bytes it hands out (what a ranged read costs)."""

    def __init__(self, inner):
        self.inner = inner
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.inner.seek(offset, whence)

    def tell(self) -> int:
        return self.inner.tell()

    def readinto(self, buffer) -> int:
        data = self.inner.read(len(buffer))
        buffer[: len(data)] = data
        self.bytes_read += len(data)
        return len(data)


def header_info(url: str) -> dict:
    """What `ddkit info` shows about a `.ddk.h5` (a URL, read by ranged reads of its header, no pixels;
    or a local path), read in a child process under the reader policy (see the module docstring)."""
    if not is_url(url):
        path = local_path(url)
        return read_isolated(path, lambda h5: _checked_header(h5, path), what="ddkit file")
    _scheme(url)  # refused here; the file system itself is made in the child (no fsspec thread here to fork)
    opened: dict = {}

    def open_remote():
        fs, rpath = filesystem(url)  # in the child: a fresh fsspec instance and event loop
        try:
            opened["raw"] = raw = fs.open(rpath, "rb", block_size=HEADER_BLOCK, cache_type="blockcache")
        except Exception as exc:  # every back-end raises its own errors
            raise _remote_error(url, exc) from None
        if not isinstance(getattr(raw, "size", None), int):
            raw.close()
            raise _undeclared(url)
        opened["counter"] = CountingFile(raw)
        return opened["counter"], int(raw.size)

    def read(h5):
        d = _checked_header(h5, url)
        d["remote"] = {
            "url": url,
            "size": int(opened["raw"].size),
            "bytes_read": opened["counter"].bytes_read,
            "verified": "header_sha256 (content not checked: `ddkit validate URL` downloads and checks every byte)",
        }
        return d

    seconds = _env_number("DDKIT_REMOTE_TIMEOUT", TIMEOUT_SECONDS)
    return read_isolated(open_remote, read, what="ddkit file", label=url, timeout=CHECK_SECONDS + 2 * seconds,
                         slow="a slow or stalled server, or the HDF5 library looping on a crafted header")


def _checked_header(h5: h5py.File, label: str) -> dict:
    with reading(label):
        return header_dict(h5, label)


def header_dict(h5: h5py.File, url: str) -> dict:
    """What `info` shows of an open distilled file (its header hash checked), from attributes, labels and cards."""
    fmt = check_identity(h5, url, STORE_FORMATS)
    if fmt != DISTILLED_FORMAT:
        raise FileFormatError(
            f"{url} is a selection file; header-only reads serve distilled files",
            "give a .ddk.h5 URL (`ddkit validate URL` downloads any ddkit file)",
        )
    if attr_text(h5.attrs["header_sha256"]) != header_sha256(h5):
        raise FileFormatError(
            f"{url}: header hash mismatch: the file's attributes were modified or corrupted",
            "ask the file's owner for a good copy",
        )
    header = DistilledHeader(**decode_attrs(DistilledHeader, h5.attrs))
    labels = np.asarray(h5["labels"][()], dtype=np.int64).reshape(-1)
    if len(labels) and (labels.min() < 0 or labels.max() >= header.num_classes):
        raise FileFormatError(f"{url}: labels outside 0..{header.num_classes - 1}",
                              "ask the file's owner for a good copy")
    compensators = 0
    if "composite" in h5:
        members = np.asarray(h5["composite/members"][()], dtype=np.int64)
        if members.ndim != 2 or (members.size and (members.min() < 0 or members.max() >= len(labels))):
            raise FileFormatError(f"{url}: composite members are not rows of the stored images",
                                  "ask the file's owner for a good copy")
        compensators = int(members.shape[0])
        labels = np.concatenate([labels, labels[members.reshape(-1)]])
    formation = None
    if "formation" in h5:
        decode = read_formation(h5["formation"], url)
        num_stored = len(labels)
        labels = np.repeat(labels, decode.per_image)
        formation = formation_summary(decode.to_dict(), num_stored, len(labels), header.num_classes)
    counts = np.bincount(labels, minlength=header.num_classes).tolist()
    results = {
        name: load_json(group.attrs["card"], f"result card {name!r}") for name, group in h5.get("results", {}).items()
    }
    composite = None
    if compensators:
        comps = h5["composite/compensators"]
        nbytes = int(np.prod(comps.shape)) * comps.dtype.itemsize
        composite = {
            "compensators": compensators,
            "bytes_compensators": nbytes,
            "bytes_mapping": int(header.budget.bytes_by_part.get("composite", 0)) - nbytes,
            "equivalent_ipc": (int(h5["images"].shape[0]) + compensators) / header.num_classes,
            "instances_per_class": len(labels) / header.num_classes,
        }
    h = header
    return {
        "path": url,
        "format": fmt,
        "schema": int(h5.attrs["schema"]),
        "content_sha256": attr_text(h5.attrs["content_sha256"]),
        "results": results,
        "method": h.method,
        "method_version": h.method_version,
        "seed": h.seed,
        "created": h.created,
        "ddkit_version": h.ddkit_version,
        "dataset": h.dataset.to_dict(),
        "normalization": h.normalization.to_dict(),
        "instances": int(len(labels)),
        "stored_images": int(h5["images"].shape[0]),
        "compensators": compensators,
        "instances_per_class": dict(zip(h.dataset.info.class_names, counts, strict=True)),
        "budget": h.budget.to_dict(),
        "composite": composite,
        "formation": formation,
        "teachers": h.teachers,
        "config": h.config,
        "license_note": h.license_note,
        "dbr": None,
    }
