"""The index of an image folder's split: every file's path, class, size, content hash and pixel sums.

Indexing decodes every file once (in parallel worker processes), so a truncated or unreadable
image is found up front, skipped and counted — never hours into a run — and the train split's
normalization comes from the same pass. The manifest is cached under ~/.cache/ddkit/manifests and
reused while the folder's listing (paths, sizes, modification times) and its declared fit are
unchanged; when the folder changes it is re-indexed, decoding only the files that changed.

Row order is canonical (classes in the class map's order, files by name within a class, unreadable
files left out), so a sample id — the row — means the same image in the streamed and the in-memory
paths.

What a row costs. A manifest of millions of files is held by every process that streams the folder,
so a row is kept compact (version 2 of the cache; version 1 kept ≈ 400 B per image, most of it
fixed-width unicode paths and hex digests): the paths as a `PathTable` (each folder once, file names
as UTF-8 bytes in one blob), the content hashes as 16 raw bytes, the image shape once (every row
has the same one: a folder of mixed shapes is refused or fitted), the pixel sums for the image's
channels only. The fingerprint and the listing signature are computed from the same strings as in
version 1, so they are unchanged; a version-1 cache is converted on first read (one log line), not
re-indexed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ddkit.data.base import Normalization, check_image_shape
from ddkit.data.decode import FolderFit, decode_image
from ddkit.data.locations import cache_root
from ddkit.errors import FileFormatError, InvalidInput
from ddkit.fileio import atomic_output
from ddkit.progress import say

MANIFEST_VERSION = 2  # the cache's storage layout (1: fixed-width unicode paths and hex digests)
IDENTITY_VERSION = 1  # in the fingerprint and the listing signature: what the rows are, not how they are kept
DIGEST_BYTES = 16  # the first 128 bits of each file's sha256
CHECK_CHUNK = 256  # files per worker task while indexing


def stream_workers() -> int:
    """Decoding worker processes: $DDKIT_WORKERS, else min(4, CPU count); 0 decodes in-process."""
    value = os.environ.get("DDKIT_WORKERS", "").strip()
    if value:
        if not value.isdigit():
            raise InvalidInput(f"DDKIT_WORKERS={value!r} is not a worker count", "set it to 0 or a positive integer")
        return int(value)
    return min(4, os.cpu_count() or 1)


class PathTable:
    """Relative paths held compactly: each folder (`train/cat/`) once in `folders`, each row's folder
    as a small integer, its file name as UTF-8 bytes in one blob cut by `offsets`. Indexing gives
    the path string (`table[i]`) or, for an index array, the table of those rows. Picklable, so a
    folder reader carries it to its worker processes."""

    def __init__(self, folders: list[str], folder_ids: np.ndarray, blob: np.ndarray, offsets: np.ndarray):
        self.folders, self.folder_ids, self.blob, self.offsets = list(folders), folder_ids, blob, offsets

    @classmethod
    def from_paths(cls, paths) -> "PathTable":
        folders: dict[str, int] = {}
        ids, names = [], []
        for path in paths:
            folder, _, name = str(path).rpartition("/")
            ids.append(folders.setdefault(folder + "/" if folder else "", len(folders)))
            names.append(name.encode("utf-8"))
        lengths = np.fromiter(map(len, names), dtype=np.int64, count=len(names))
        offsets = np.zeros(len(names) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        blob = np.frombuffer(b"".join(names), dtype=np.uint8)
        return cls(list(folders), np.asarray(ids, dtype=np.min_scalar_type(max(len(folders) - 1, 0))), blob,
                   offsets.astype(np.min_scalar_type(int(offsets[-1]))))

    def __len__(self) -> int:
        return len(self.folder_ids)

    def __getitem__(self, row):
        if isinstance(row, (int, np.integer)):
            row = int(row) + (len(self) if row < 0 else 0)
            if not 0 <= row < len(self):
                raise IndexError(f"path row {row} out of range for {len(self)} rows")
            start, end = int(self.offsets[row]), int(self.offsets[row + 1])
            return self.folders[self.folder_ids[row]] + self.blob[start:end].tobytes().decode("utf-8")
        return PathTable.from_paths(self[int(i)] for i in np.arange(len(self))[row])

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def tolist(self) -> list[str]:
        return list(self)

    @property
    def nbytes(self) -> int:
        folders = sum(len(f.encode("utf-8")) for f in self.folders)
        return self.folder_ids.nbytes + self.blob.nbytes + self.offsets.nbytes + folders


@dataclass
class Manifest:
    """One split of an image folder, indexed (see the module docstring)."""

    root: str
    split: str
    class_names: tuple[str, ...]
    fit: FolderFit | None
    signature: str  # sha256 of the listing (paths, sizes, mtimes), the class map and the fit
    paths: PathTable  # relative to root
    labels: np.ndarray  # int64
    sizes: np.ndarray  # int64 bytes
    mtimes: np.ndarray  # int64 ns
    shapes: np.ndarray  # N×3: each file's C×H×W after the fit (one shared row once indexed: all are equal)
    digests: np.ndarray  # N×16 uint8: the first 16 bytes of the sha256 of each file's bytes
    sums: np.ndarray  # N×C float64: per-channel sum of pixels/255 (N×3 while indexing)
    sumsq: np.ndarray  # N×C float64
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why) of unreadable files

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """The one C×H×W of every image (None for an empty split)."""
        if self.fit is not None:
            return self.fit.shape
        return tuple(int(v) for v in self.shapes[0]) if len(self.shapes) else None

    def fingerprint(self) -> str:
        """Hash of what the rows are: paths, labels, file contents (as hex digits) and the fit (not mtimes)."""
        h = hashlib.sha256(f"imagefolder-manifest/{IDENTITY_VERSION}/{self.split}/".encode())
        h.update(json.dumps([list(self.class_names), self.fit.to_dict() if self.fit else None]).encode())
        hexes = self.digests.tobytes().hex()
        step = 2 * DIGEST_BYTES
        for i, (path, label) in enumerate(zip(self.paths, self.labels.tolist())):
            h.update(f"{path}\0{label}\0{hexes[i * step:(i + 1) * step]}\n".encode())
        return h.hexdigest()

    @property
    def nbytes(self) -> int:
        """Bytes the manifest's rows hold in memory (a shape shared by every row counted once)."""
        shapes = self.shapes[:1] if self.shapes.strides[0] == 0 else self.shapes
        return self.paths.nbytes + shapes.nbytes + sum(getattr(self, k).nbytes for k in _ARRAYS if k != "shapes")

    def normalization(self) -> Normalization:
        """Per-channel mean/std of the split's pixels in [0, 1] (std 1 for a constant channel)."""
        channels = self.image_shape[0] if len(self) else 1
        count = max(float(np.prod(self.shapes[:, 1:], axis=1).sum()), 1.0)
        mean = self.sums[:, :channels].sum(0) / count
        std = np.sqrt(np.clip(self.sumsq[:, :channels].sum(0) / count - mean * mean, 0, None))
        std = np.where(std < 1e-6, 1.0, std)
        return Normalization(tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std))


def _listing(root: Path, rel_paths: list[str]) -> tuple[PathTable, np.ndarray, np.ndarray]:
    """Paths (relative to `root`), sizes and mtimes of the listed files; -1 for one that cannot be stat-ed."""
    sizes, mtimes = np.empty(len(rel_paths), np.int64), np.empty(len(rel_paths), np.int64)
    for i, rel in enumerate(rel_paths):
        try:
            st = os.stat(os.path.join(root, rel))
            sizes[i], mtimes[i] = st.st_size, st.st_mtime_ns
        except OSError:  # a broken link, or a file removed while listing: indexing skips it and says why
            sizes[i] = mtimes[i] = -1
    return PathTable.from_paths(rel_paths), sizes, mtimes


def _signature(class_names, fit: FolderFit | None, paths: PathTable, labels, sizes, mtimes) -> str:
    h = hashlib.sha256(f"listing/{IDENTITY_VERSION}/".encode())
    h.update(json.dumps([list(class_names), fit.to_dict() if fit else None]).encode())
    for row in zip(paths, labels.tolist(), sizes.tolist(), mtimes.tolist()):
        h.update("\0".join(map(str, row)).encode() + b"\n")
    return h.hexdigest()


class _CheckFiles:
    """Worker task: decode a chunk of files, returning per file (ok, why, shape, digest, sums, sumsq)."""

    def __init__(self, root: str, paths: PathTable, fit: FolderFit | None):
        self.root, self.paths, self.fit = root, paths, fit

    def __getitem__(self, chunk: np.ndarray) -> list[tuple]:
        out = []
        for i in chunk.tolist():
            path = os.path.join(self.root, self.paths[i])
            try:
                with open(path, "rb") as fh:
                    data = fh.read()
                array = decode_image(path, self.fit, data)
            except (OSError, FileFormatError, InvalidInput) as exc:
                why = ("a broken link" if os.path.islink(path) and not os.path.exists(path)
                       else getattr(exc, "problem", None) or str(exc))
                out.append((i, False, why, None, "", None, None))
                continue
            x = array.reshape(array.shape[0], -1).astype(np.float64) / 255.0
            digest = hashlib.sha256(data).digest()[:DIGEST_BYTES]
            out.append((i, True, "", array.shape, digest, x.sum(1), (x * x).sum(1)))
        return out


def _identity(x):
    return x


def _check(root: Path, paths: PathTable, todo: np.ndarray, fit: FolderFit | None, desc: str):
    """Decode the files at `todo` in worker processes (DataLoader), with a progress bar; yields each
    file's result as it arrives, so nothing per file is held beyond the manifest's own arrays."""
    import torch

    from ddkit.progress import progress

    chunks = [todo[i:i + CHECK_CHUNK] for i in range(0, len(todo), CHECK_CHUNK)]
    workers = min(stream_workers(), len(chunks)) if len(todo) > CHECK_CHUNK else 0
    loader = torch.utils.data.DataLoader(_CheckFiles(str(root), paths, fit), sampler=chunks, batch_size=None,
                                         num_workers=workers, collate_fn=_identity)
    bar = progress(total=len(todo), desc=desc, unit="img")
    for part in loader:
        yield from part
        bar.update(len(part))
    bar.close()


def _cache_path(root: Path, split: str) -> Path:
    """Where a folder split's manifest is cached: $DDKIT_CACHE/manifests (default ~/.cache/ddkit)."""
    key = hashlib.sha256(f"{root}\0{split}".encode()).hexdigest()[:32]
    return Path(os.environ.get("DDKIT_CACHE") or cache_root()) / "manifests" / f"{key}.npz"


_ARRAYS = ("labels", "sizes", "mtimes", "shapes", "digests", "sums", "sumsq")
_PATH_ARRAYS = ("folder_ids", "blob", "offsets")


def _save(m: Manifest, path: Path) -> None:
    """The cache file (version 2): the per-row arrays, the path table's arrays, one shared shape."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"version": MANIFEST_VERSION, "root": m.root, "split": m.split, "class_names": list(m.class_names),
            "fit": m.fit.to_dict() if m.fit else None, "signature": m.signature, "skipped": m.skipped,
            "folders": m.paths.folders}
    arrays = {k: getattr(m, k) for k in _ARRAYS if k != "shapes"}
    arrays["shape"] = m.shapes[0] if len(m) else np.zeros(3, np.int64)
    arrays.update({f"path_{k}": getattr(m.paths, k) for k in _PATH_ARRAYS})
    with atomic_output(path, overwrite=True) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, meta=np.array(json.dumps(meta)), **arrays)


def _one_shape(shape: np.ndarray, n: int) -> np.ndarray:
    """N×3 rows that all are `shape`, held once (a read-only broadcast view)."""
    return np.broadcast_to(np.asarray(shape, dtype=np.int64).reshape(1, 3), (n, 3))


def _from_version_1(arrays: dict) -> dict:
    """Version 1's arrays (fixed-width unicode paths, hex digests, N×3 shapes and sums) in version 2's form."""
    n, shapes = len(arrays["paths"]), arrays["shapes"]
    if n and (shapes != shapes[0]).any():
        raise ValueError("a version-1 manifest with mixed shapes")  # never saved: indexing refused it
    channels = int(shapes[0][0]) if n else 3
    return {"paths": PathTable.from_paths(arrays["paths"].tolist()), "labels": arrays["labels"],
            "sizes": arrays["sizes"], "mtimes": arrays["mtimes"],
            "shapes": _one_shape(shapes[0] if n else np.zeros(3), n),
            "digests": np.frombuffer(bytes.fromhex("".join(arrays["digests"].tolist())), np.uint8).reshape(n, -1),
            "sums": arrays["sums"][:, :channels].copy(), "sumsq": arrays["sumsq"][:, :channels].copy()}


def _load(path: Path) -> tuple[Manifest | None, int]:
    """A cached manifest and the layout version it was stored in, or (None, 0) when there is none or
    it cannot be used (it is then rebuilt). Version 1 is read and converted (the caller re-saves it)."""
    if not path.is_file():
        return None, 0
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            version = meta.get("version")
            if version == 1:
                arrays = _from_version_1({k: z[k] for k in ("paths", *_ARRAYS)})
            elif version == MANIFEST_VERSION:
                arrays = {k: z[k] for k in _ARRAYS if k != "shapes"}
                arrays["paths"] = PathTable(meta["folders"], *(z[f"path_{k}"] for k in _PATH_ARRAYS))
                arrays["shapes"] = _one_shape(z["shape"], len(arrays["labels"]))
            else:
                return None, 0
        fit = meta["fit"]
        fit = FolderFit(fit["channels"], fit["image_size"], fit["resize"]) if fit else None
        m = Manifest(meta["root"], meta["split"], tuple(meta["class_names"]), fit, meta["signature"],
                     skipped=[tuple(s) for s in meta["skipped"]], **arrays)
        return m, version
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None, 0


def index_split(root: Path, split: str, class_names: tuple[str, ...], fit: FolderFit | None,
                rel_paths: list[str], labels: np.ndarray) -> Manifest:
    """The manifest of the split's files (`rel_paths` under `root`, in canonical order, and their
    `labels`), from the cache when the listing is unchanged, else (re)indexed — decoding only files
    that are new or changed since the cache."""
    paths, sizes, mtimes = _listing(root, rel_paths)
    signature = _signature(class_names, fit, paths, labels, sizes, mtimes)
    cache = _cache_path(root, split)
    cached, version = _load(cache)
    if cached is not None and cached.signature == signature and version == MANIFEST_VERSION:
        return cached
    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(cache.with_suffix(".lock"), "w") as lock:  # ranks of one machine index a folder once
        fcntl.flock(lock, fcntl.LOCK_EX)
        cached, version = _load(cache)
        if cached is not None and cached.signature == signature:
            if version != MANIFEST_VERSION:
                _save(cached, cache)
                say(f"{root}/{split}: converted its cached index to the compact layout (version {MANIFEST_VERSION}); "
                    "nothing was re-decoded")
            return cached
        return _index(root, split, class_names, fit, signature, cache, cached, paths, labels, sizes, mtimes)


def _index(root, split, class_names, fit, signature, cache, cached, paths, labels, sizes, mtimes) -> Manifest:
    n = len(paths)
    shapes, digests = np.zeros((n, 3), dtype=np.int64), np.zeros((n, DIGEST_BYTES), dtype=np.uint8)
    sums, sumsq, ok = np.zeros((n, 3)), np.zeros((n, 3)), np.zeros(n, dtype=bool)  # channels beyond C stay 0
    reasons: dict[int, str] = {}
    todo = np.arange(n)
    if cached is not None:  # reuse the rows whose file is unchanged
        before = {key: j for j, key in enumerate(zip(cached.paths.tolist(), cached.sizes.tolist(),
                                                       cached.mtimes.tolist()))}
        for i, key in enumerate(zip(paths.tolist(), sizes.tolist(), mtimes.tolist())):
            j = before.get(key)
            if j is not None:
                c = cached.sums.shape[1]
                shapes[i], digests[i], sums[i, :c], sumsq[i, :c], ok[i] = (cached.shapes[j], cached.digests[j],
                                                                           cached.sums[j], cached.sumsq[j], True)
        todo = np.flatnonzero(~ok)
        say(f"{root}/{split} changed since it was indexed: re-indexing {len(todo)} of {n} files")
    for i, good, why, shape, digest, s, sq in _check(root, paths, todo, fit, f"indexing {split}"):
        if not good:
            reasons[i] = why
            continue
        ok[i], shapes[i], digests[i] = True, shape, np.frombuffer(digest, np.uint8)
        sums[i, :len(s)], sumsq[i, :len(sq)] = s, sq
    keep = np.flatnonzero(ok)
    kept = (lambda a: a) if len(keep) == n else (lambda a: a[keep])  # no second copy when nothing was skipped
    m = Manifest(str(root), split, tuple(class_names), fit, signature, *map(kept, (paths, labels, sizes, mtimes,
                 shapes, digests, sums, sumsq)),
                 skipped=[(str(paths[i]), reasons[i]) for i in sorted(reasons)])
    _require_one_shape(m)
    channels = int(m.shapes[0][0]) if len(m) else 3
    m.shapes = _one_shape(m.shapes[0] if len(m) else np.zeros(3), len(m))  # equal rows (checked above), held once
    if channels < 3:
        m.sums, m.sumsq = m.sums[:, :channels].copy(), m.sumsq[:, :channels].copy()
    if m.skipped:
        say(f"{root}/{split}: skipped {len(m.skipped)} unreadable image(s) of {n} "
                  f"(first: {m.skipped[0][0]}: {m.skipped[0][1]}); they are listed in the manifest")
    _save(m, cache)
    return m


def _require_one_shape(m: Manifest) -> None:
    """Without a declared fit every image must have the same C×H×W: name two that differ."""
    if not len(m) or m.fit is not None:
        return
    differ = np.flatnonzero((m.shapes != m.shapes[0]).any(1))
    if len(differ):
        a, b = m.paths[0], m.paths[differ[0]]
        raise InvalidInput(
            f"images in {m.root} differ in size/channels: {a} is {_fmt(m.shapes[0])} but {b} is "
            f"{_fmt(m.shapes[differ[0]])}",
            "convert all images to one size and mode (all L or all RGB), or declare the size to fit them to in "
            f'{Path(m.root) / "ddkit-folder.json"}, e.g. {{"image_size": 224, "resize": 256}}',
        )
    check_image_shape(tuple(int(v) for v in m.shapes[0]), f"{m.root} image shape")


def _fmt(shape) -> str:
    return "×".join(str(int(s)) for s in shape) + " (C×H×W)"
