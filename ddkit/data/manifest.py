"""The index of an image folder's split: every file's path, class, size, content hash and pixel sums.

Indexing decodes every file once (in parallel worker processes), so a truncated or unreadable
image is found up front, skipped and counted — never hours into a run — and the train split's
normalization comes from the same pass. The manifest is cached under ~/.cache/ddkit/manifests and
reused while the folder's listing (paths, sizes, modification times) and its declared fit are
unchanged; when the folder changes it is re-indexed, decoding only the files that changed.

Row order is canonical (classes in the class map's order, files by name within a class, unreadable
files left out), so a sample id — the row — means the same image in the streamed and the in-memory
paths.
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

MANIFEST_VERSION = 1
CHECK_CHUNK = 256  # files per worker task while indexing


def stream_workers() -> int:
    """Decoding worker processes: $DDKIT_WORKERS, else min(4, CPU count); 0 decodes in-process."""
    value = os.environ.get("DDKIT_WORKERS", "").strip()
    if value:
        if not value.isdigit():
            raise InvalidInput(f"DDKIT_WORKERS={value!r} is not a worker count", "set it to 0 or a positive integer")
        return int(value)
    return min(4, os.cpu_count() or 1)


@dataclass
class Manifest:
    """One split of an image folder, indexed (see the module docstring)."""

    root: str
    split: str
    class_names: tuple[str, ...]
    fit: FolderFit | None
    signature: str  # sha256 of the listing (paths, sizes, mtimes), the class map and the fit
    paths: np.ndarray  # relative to root, str
    labels: np.ndarray  # int64
    sizes: np.ndarray  # int64 bytes
    mtimes: np.ndarray  # int64 ns
    shapes: np.ndarray  # N×3 int64: each file's C×H×W after the fit
    digests: np.ndarray  # str: sha256 of each file's bytes (first 32 hex digits)
    sums: np.ndarray  # N×3 float64: per-channel sum of pixels/255 (channels beyond C are 0)
    sumsq: np.ndarray  # N×3 float64
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
        """Hash of what the rows are: paths, labels, file contents and the fit (not mtimes)."""
        h = hashlib.sha256(f"imagefolder-manifest/{MANIFEST_VERSION}/{self.split}/".encode())
        h.update(json.dumps([list(self.class_names), self.fit.to_dict() if self.fit else None]).encode())
        for path, label, digest in zip(self.paths.tolist(), self.labels.tolist(), self.digests.tolist()):
            h.update(f"{path}\0{label}\0{digest}\n".encode())
        return h.hexdigest()

    def normalization(self) -> Normalization:
        """Per-channel mean/std of the split's pixels in [0, 1] (std 1 for a constant channel)."""
        channels = self.image_shape[0] if len(self) else 1
        count = max(float(np.prod(self.shapes[:, 1:], axis=1).sum()), 1.0)
        mean = self.sums[:, :channels].sum(0) / count
        std = np.sqrt(np.clip(self.sumsq[:, :channels].sum(0) / count - mean * mean, 0, None))
        std = np.where(std < 1e-6, 1.0, std)
        return Normalization(tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std))


def _listing(root: Path, rel_paths: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paths (relative to `root`), sizes and mtimes of the listed files; -1 for one that cannot be stat-ed."""
    sizes, mtimes = np.empty(len(rel_paths), np.int64), np.empty(len(rel_paths), np.int64)
    for i, rel in enumerate(rel_paths):
        try:
            st = os.stat(os.path.join(root, rel))
            sizes[i], mtimes[i] = st.st_size, st.st_mtime_ns
        except OSError:  # a broken link, or a file removed while listing: indexing skips it and says why
            sizes[i] = mtimes[i] = -1
    return np.array(rel_paths, dtype=str), sizes, mtimes


def _signature(class_names, fit: FolderFit | None, paths, labels, sizes, mtimes) -> str:
    h = hashlib.sha256(f"listing/{MANIFEST_VERSION}/".encode())
    h.update(json.dumps([list(class_names), fit.to_dict() if fit else None]).encode())
    for row in zip(paths.tolist(), labels.tolist(), sizes.tolist(), mtimes.tolist()):
        h.update("\0".join(map(str, row)).encode() + b"\n")
    return h.hexdigest()


class _CheckFiles:
    """Worker task: decode a chunk of files, returning per file (ok, why, shape, digest, sums, sumsq)."""

    def __init__(self, root: str, paths: np.ndarray, fit: FolderFit | None):
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
            out.append((i, True, "", array.shape, hashlib.sha256(data).hexdigest()[:32], x.sum(1), (x * x).sum(1)))
        return out


def _identity(x):
    return x


def _check(root: Path, paths: np.ndarray, todo: np.ndarray, fit: FolderFit | None, desc: str):
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


_ARRAYS = ("paths", "labels", "sizes", "mtimes", "shapes", "digests", "sums", "sumsq")


def _save(m: Manifest, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"version": MANIFEST_VERSION, "root": m.root, "split": m.split, "class_names": list(m.class_names),
            "fit": m.fit.to_dict() if m.fit else None, "signature": m.signature, "skipped": m.skipped}
    with atomic_output(path, overwrite=True) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, meta=np.array(json.dumps(meta)), **{k: getattr(m, k) for k in _ARRAYS})


def _load(path: Path) -> Manifest | None:
    """A cached manifest, or None when there is none or it cannot be used (it is then rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {k: z[k] for k in _ARRAYS}
        if meta.get("version") != MANIFEST_VERSION:
            return None
        fit = meta["fit"]
        fit = FolderFit(fit["channels"], fit["image_size"], fit["resize"]) if fit else None
        return Manifest(meta["root"], meta["split"], tuple(meta["class_names"]), fit, meta["signature"],
                        skipped=[tuple(s) for s in meta["skipped"]], **arrays)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def index_split(root: Path, split: str, class_names: tuple[str, ...], fit: FolderFit | None,
                rel_paths: list[str], labels: np.ndarray) -> Manifest:
    """The manifest of the split's files (`rel_paths` under `root`, in canonical order, and their
    `labels`), from the cache when the listing is unchanged, else (re)indexed — decoding only files
    that are new or changed since the cache."""
    paths, sizes, mtimes = _listing(root, rel_paths)
    signature = _signature(class_names, fit, paths, labels, sizes, mtimes)
    cache = _cache_path(root, split)
    cached = _load(cache)
    if cached is not None and cached.signature == signature:
        return cached
    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(cache.with_suffix(".lock"), "w") as lock:  # ranks of one machine index a folder once
        fcntl.flock(lock, fcntl.LOCK_EX)
        cached = _load(cache)
        if cached is not None and cached.signature == signature:
            return cached
        return _index(root, split, class_names, fit, signature, cache, cached, paths, labels, sizes, mtimes)


def _index(root, split, class_names, fit, signature, cache, cached, paths, labels, sizes, mtimes) -> Manifest:
    n = len(paths)
    shapes, digests = np.zeros((n, 3), dtype=np.int64), np.zeros(n, dtype="<U32")
    sums, sumsq, ok = np.zeros((n, 3)), np.zeros((n, 3)), np.zeros(n, dtype=bool)  # channels beyond C stay 0
    reasons: dict[int, str] = {}
    todo = np.arange(n)
    if cached is not None:  # reuse the rows whose file is unchanged
        before = {key: j for j, key in enumerate(zip(cached.paths.tolist(), cached.sizes.tolist(),
                                                       cached.mtimes.tolist()))}
        for i, key in enumerate(zip(paths.tolist(), sizes.tolist(), mtimes.tolist())):
            j = before.get(key)
            if j is not None:
                shapes[i], digests[i], sums[i], sumsq[i], ok[i] = (cached.shapes[j], cached.digests[j],
                                                                   cached.sums[j], cached.sumsq[j], True)
        todo = np.flatnonzero(~ok)
        say(f"{root}/{split} changed since it was indexed: re-indexing {len(todo)} of {n} files")
    for i, good, why, shape, digest, s, sq in _check(root, paths, todo, fit, f"indexing {split}"):
        if not good:
            reasons[i] = why
            continue
        ok[i], shapes[i], digests[i] = True, shape, digest
        sums[i, :len(s)], sumsq[i, :len(sq)] = s, sq
    keep = np.flatnonzero(ok)
    kept = (lambda a: a) if len(keep) == n else (lambda a: a[keep])  # no second copy when nothing was skipped
    m = Manifest(str(root), split, tuple(class_names), fit, signature, *map(kept, (paths, labels, sizes, mtimes,
                 shapes, digests, sums, sumsq)),
                 skipped=[(str(paths[i]), reasons[i]) for i in sorted(reasons)])
    _require_one_shape(m)
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
