"""Unlabeled image pools (`.pool.h5`): web-style sample pools for selectors such as KD³.

A pool is a chunked HDF5 file of uint8 images with stable sample ids and a fingerprint (sha256 of
the ids and the pixels). It is made for one *task* (a registered dataset: class names, image shape,
normalization), so a teacher of that task can score it, but it carries no training labels: any
labels its sources had (and where each sample came from) are kept aside under `/aside` for analysis
only. Loading a pool as a dataset (`load_dataset("pool:PATH")`, or `load_pool`) gives an
`ImageDataset` whose labels are a constant placeholder, so nothing downstream can train on or
select with the aside labels by accident; `read_aside` is the one way to read them.

Layout: root attrs `format="ddkit.pool"`, `schema`, `name`, `task` (DatasetInfo JSON of the task),
`fingerprint`, `size`, `origins` (JSON list of origin names), `provenance` (JSON), `created`,
`ddkit_version`; datasets `/images` (N×C×H×W uint8, chunked by rows, gzip), `/ids` (int64, unique),
`/aside/labels` (int64, −1 unknown), `/aside/origin` (int16 index into `origins`), `/aside/source_ids`
(int64 row in the source, −1 unknown); `ddkit pool dedup` adds `/dedup/*` (what it dropped and why).
The pool's split for selection is "train"; its "test" split is the task dataset's test split (the
set the pool's students are evaluated on).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch

import ddkit
from ddkit.data import DATASETS, load_dataset
from ddkit.data.base import DatasetInfo, ImageDataset, check_pixels
from ddkit.errors import FileFormatError, InvalidInput
from ddkit.fileio import atomic_output, open_checked_h5

POOL_FORMAT = "ddkit.pool"
POOL_SCHEMA = 1
DEFAULT_CHUNK_ROWS = 1024


@dataclass
class PoolPart:
    """Images from one origin (e.g. "fashion-mnist/train shifted", "digits", "noise").

    `images` N×C×H×W, uint8 or float in [0, 1] (float is rounded to uint8, as any web image is);
    `labels` and `source_ids` are optional and only ever stored aside.
    """

    origin: str
    images: torch.Tensor
    labels: torch.Tensor | None = None
    source_ids: torch.Tensor | None = None


@dataclass
class PoolSummary:
    path: str
    name: str
    size: int
    fingerprint: str
    origins: dict = field(default_factory=dict)  # origin -> count


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    if images.dtype == torch.uint8:
        return images
    return (images.float().clamp(0, 1) * 255.0).round().to(torch.uint8)


def pool_fingerprint(ids: np.ndarray, images) -> str:
    """sha256 of the id list and the pixels (read in row blocks; `images` may be an h5py dataset)."""
    h = hashlib.sha256(f"{POOL_FORMAT}/{POOL_SCHEMA}|".encode())
    h.update(np.ascontiguousarray(ids, dtype="<i8").tobytes())
    h.update(f"{tuple(images.shape)}|uint8|".encode())
    step = DEFAULT_CHUNK_ROWS * 16
    for start in range(0, int(images.shape[0]), step):
        block = images[start : start + step]
        block = block.numpy() if isinstance(block, torch.Tensor) else np.asarray(block)
        h.update(np.ascontiguousarray(block, dtype=np.uint8).tobytes())
    return h.hexdigest()


def _check_task_info(info: DatasetInfo, part: PoolPart) -> None:
    check_pixels(part.images, info.image_shape, f"pool part {part.origin!r}")
    n = len(part.images)
    for what, arr in (("labels", part.labels), ("source_ids", part.source_ids)):
        if arr is not None and (arr.ndim != 1 or len(arr) != n):
            raise InvalidInput(f"pool part {part.origin!r}: {what} has shape {tuple(arr.shape)}, expected ({n},)")


def write_pool(out: str | os.PathLike, images: torch.Tensor, ids: np.ndarray, task: DatasetInfo, name: str,
               aside: dict[str, np.ndarray], origins: list[str], provenance: dict | None = None,
               extra_groups: dict[str, tuple[dict, dict]] | None = None, overwrite: bool = False,
               chunk_rows: int = DEFAULT_CHUNK_ROWS) -> PoolSummary:
    """Write a pool file atomically (the one writer used by `build_pool` and `dedup_pool`)."""
    images = to_uint8(images)
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) != len(images):
        raise InvalidInput(f"{len(images)} images but {len(ids)} ids")
    if len(ids) == 0:
        raise InvalidInput("the pool would be empty", "give at least one image")
    if len(np.unique(ids)) != len(ids):
        raise InvalidInput("pool ids must be unique")
    fingerprint = pool_fingerprint(ids, images)
    with atomic_output(out, overwrite) as tmp:
        with h5py.File(tmp, "w") as h5:
            rows = max(1, min(chunk_rows, len(ids)))
            h5.create_dataset("images", data=images.numpy(), chunks=(rows, *images.shape[1:]),
                              compression="gzip", compression_opts=1, shuffle=True)
            h5.create_dataset("ids", data=ids)
            group = h5.create_group("aside")
            for key, value in aside.items():
                group.create_dataset(key, data=np.asarray(value))
            for gname, (attrs, arrays) in (extra_groups or {}).items():
                g = h5.create_group(gname)
                for key, value in arrays.items():
                    g.create_dataset(key, data=np.asarray(value))
                for key, value in attrs.items():
                    g.attrs[key] = json.dumps(value)
            h5.attrs.update({
                "format": POOL_FORMAT, "schema": POOL_SCHEMA, "name": name, "task": json.dumps(task.to_dict()),
                "fingerprint": fingerprint, "size": len(ids), "origins": json.dumps(list(origins)),
                "provenance": json.dumps(provenance or {}), "ddkit_version": ddkit.__version__,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            })
    counts = np.bincount(np.asarray(aside["origin"], dtype=np.int64), minlength=len(origins))
    return PoolSummary(str(out), name, len(ids), fingerprint, {o: int(c) for o, c in zip(origins, counts)})


def build_pool(out: str | os.PathLike, parts: list[PoolPart], task: DatasetInfo, name: str | None = None,
               provenance: dict | None = None, overwrite: bool = False, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> PoolSummary:
    """Concatenate `parts` into a pool for `task`; sample ids are the rows in build order (0..N−1)."""
    if not parts:
        raise InvalidInput("a pool needs at least one source", "pass --from DATASET (repeatable)")
    for part in parts:
        _check_task_info(task, part)
    origins = [p.origin for p in parts]
    if len(set(origins)) != len(origins):
        raise InvalidInput(f"origin names repeat: {origins}", "give each source its own origin name")
    images = torch.cat([to_uint8(p.images) for p in parts])
    n = len(images)
    fill = lambda arr, k: (np.full(k, -1, np.int64) if arr is None else arr.numpy().astype(np.int64))
    aside = {
        "labels": np.concatenate([fill(p.labels, len(p.images)) for p in parts]),
        "source_ids": np.concatenate([fill(p.source_ids, len(p.images)) for p in parts]),
        "origin": np.concatenate([np.full(len(p.images), i, np.int16) for i, p in enumerate(parts)]),
    }
    return write_pool(out, images, np.arange(n, dtype=np.int64), task, name or Path(out).name.split(".")[0], aside,
                      origins, provenance, overwrite=overwrite, chunk_rows=chunk_rows)


def open_pool(path: str | os.PathLike, cache_bytes: int | None = None) -> h5py.File:
    """The pool file opened read-only, its format and schema checked (the caller closes it).

    `cache_bytes`: HDF5 chunk cache per dataset; row blocks smaller than a chunk then decompress
    each chunk once instead of once per block.
    """
    return open_checked_h5(path, fmt=POOL_FORMAT, schema=POOL_SCHEMA, kind="pool",
                           remedy="build one with `ddkit pool build`", cache_bytes=cache_bytes)


class PoolDataset(ImageDataset):
    """A pool as an ImageDataset: placeholder labels (all 0), the pool's stored fingerprint.

    `labeled = False` tells consumers that `labels` carry no information.
    """

    labeled = False

    def __init__(self, info: DatasetInfo, images: torch.Tensor, ids: torch.Tensor, fingerprint: str, pool_name: str, path: str):
        super().__init__(info, "train", images, torch.zeros(len(images), dtype=torch.long), ids, source=f"pool {pool_name} ({path})")
        self.pool_name = pool_name
        self.path = path
        self._pool_fingerprint = fingerprint

    def ids_sha256(self) -> str:
        return pool_ids_sha256(self.pool_name, self.ids.numpy())

    def fingerprint(self) -> str:
        return self._pool_fingerprint


def pool_ids_sha256(pool_name: str, ids: np.ndarray) -> str:
    """Hash of a pool's name and id list (`PoolDataset.ids_sha256`, also computable without the pixels)."""
    h = hashlib.sha256(f"{POOL_FORMAT}/{pool_name}/".encode())
    h.update(np.ascontiguousarray(ids, dtype="<i8").tobytes())
    return h.hexdigest()


def load_pool(path: str | os.PathLike, verify: bool = True) -> PoolDataset:
    """The pool's images and ids in memory, as a dataset named `pool:PATH` (absolute path).

    With `verify`, the fingerprint is recomputed from the ids and pixels and must match the header.
    """
    path = Path(path).resolve()
    with open_pool(path) as h5:
        try:
            task = DatasetInfo.from_dict(json.loads(h5.attrs["task"]))
            ids = h5["ids"][()]
            images = torch.from_numpy(h5["images"][()])
            stored = h5.attrs["fingerprint"]
            name = h5.attrs["name"]
        except (KeyError, ValueError, OSError) as exc:
            raise FileFormatError(f"{path}: damaged pool file ({exc})", "rebuild it with `ddkit pool build`") from None
    stored = stored.decode() if isinstance(stored, bytes) else str(stored)
    name = name.decode() if isinstance(name, bytes) else str(name)
    if verify and pool_fingerprint(ids, images) != stored:
        raise FileFormatError(f"{path}: the pool's ids or pixels do not match its fingerprint (changed or corrupted)",
                              "rebuild the pool; selections made on it cannot be trusted")
    info = DatasetInfo(f"pool:{path}", task.class_names, task.image_shape, task.normalization)
    return PoolDataset(info, images, torch.from_numpy(ids.astype(np.int64)), stored, name, str(path))


def pool_task(path: str | os.PathLike) -> DatasetInfo:
    with open_pool(path) as h5:
        return DatasetInfo.from_dict(json.loads(h5.attrs["task"]))


def read_aside(path: str | os.PathLike) -> dict:
    """The analysis-only side data: `ids`, `labels` (−1 unknown), `origin` (names per sample),
    `source_ids`, and the `origins` list. Never used by training or selection."""
    with open_pool(path) as h5:
        origins = json.loads(h5.attrs["origins"])
        out = {key: h5["aside"][key][()] for key in h5["aside"]}
        out["ids"] = h5["ids"][()]
        out["origins"] = origins
        out["origin_name"] = np.array(origins, dtype=object)[out["origin"].astype(np.int64)] if len(origins) else None
    return out


def read_dedup_record(path: str | os.PathLike) -> dict | None:
    """What `ddkit pool dedup` dropped (arrays and the report), or None for a pool never deduplicated."""
    with open_pool(path) as h5:
        if "dedup" not in h5:
            return None
        g = h5["dedup"]
        out = {key: g[key][()] for key in g}
        out["report"] = json.loads(g.attrs["report"])
    return out


def dataset_part(dataset: ImageDataset, origin: str | None = None) -> PoolPart:
    """A registered dataset's images as a pool part (its labels and ids go aside)."""
    return PoolPart(origin or f"{dataset.info.name}/{dataset.split}", dataset.images, dataset.labels, dataset.ids)


@DATASETS.register("pool", offline=False, arg="PATH",
                   summary="an unlabeled image pool built by `ddkit pool build` (pool:PATH; test split = the task's test set)")
def _pool(split: str, arg: str | None) -> ImageDataset:
    if not arg:
        raise InvalidInput("the pool dataset needs a path: pool:PATH", "build one with `ddkit pool build`")
    if split == "test":
        return load_dataset(pool_task(arg).name, "test")
    return load_pool(arg)


# -- dedup and test contamination ---------------------------------------------------------------
DROP_IN_POOL = 1  # near-duplicate of another pool sample that is kept
DROP_TEST = 2  # near-duplicate of a test image (contamination)
EMBEDDINGS = ("map", "pooled")


def check_embedding(embedding: str) -> str:
    if embedding not in EMBEDDINGS:
        raise InvalidInput(f"unknown embedding {embedding!r}", f"use one of {', '.join(EMBEDDINGS)}")
    return embedding


@torch.no_grad()
def teacher_outputs(teacher, images: torch.Tensor, normalization, embedding: str | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One batch of clean images ([0, 1] pixels, uint8 or float) through a teacher: its logits and,
    with `embedding`, the L2-normalized embeddings (both float32 on the CPU).

    The only view is the teacher's normalization (no augmentation), so the outputs are a
    deterministic function of the pixels: the one place teacher scores of pool images come from.
    """
    device = next(teacher.model.parameters()).device
    x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
    result = teacher.model.forward_all(normalization.apply(x).to(device))
    vectors = None
    if embedding is not None:
        vectors = result.feature_map.flatten(1) if check_embedding(embedding) == "map" else result.pooled
        vectors = torch.nn.functional.normalize(vectors.float(), dim=1).cpu()
    return result.logits.float().cpu(), vectors


def teacher_embeddings(teacher, images: torch.Tensor, normalization, embedding: str = "map", batch_size: int = 512) -> np.ndarray:
    """L2-normalized teacher embeddings of clean images ([0, 1] pixels, uint8 or float).

    `map`: the flattened last feature map (keeps the layout, so copies stand out from merely
    similar images of a class); `pooled`: the classifier's input (more invariant: distinct images
    of one class come close, so it over-reports duplicates).
    """
    check_embedding(embedding)
    out = [teacher_outputs(teacher, images[start : start + batch_size], normalization, embedding)[1]
           for start in range(0, len(images), batch_size)]
    return torch.cat(out).numpy()


def dedup_pool(pool_path: str | os.PathLike, teacher_path: str | os.PathLike, out: str | os.PathLike,
               test_dataset: str | None = None, threshold: float = 0.1, test_threshold: float | None = None,
               k: int = 16, embedding: str = "map", device: str | None = None, overwrite: bool = False) -> dict:
    """Drop pool samples that are near-duplicates of a TEST image, then near-duplicates inside the
    pool (one kept per group), by L2 distance between L2-normalized teacher embeddings (FAISS via
    `ddkit.index`). Writes the remaining pool to `out` with `/dedup` recording every dropped id,
    why, what it matched and at what distance; returns the report (both counts).

    The default threshold 0.1 on `map` embeddings was read off fashion-mnist-mini with the
    Fashion-MNIST convnet-bn and resnet8 teachers: exact copies are at 0, light noise (σ = 0.01)
    and gamma 1.2 copies mostly below 0.1, while 99.9% of distinct train/test nearest pairs are
    above it (the closest distinct pairs, 0.09, are Fashion-MNIST's own train/test near-copies).

    `test_dataset` defaults to the pool's task; `test_threshold` defaults to `threshold`.
    """
    from ddkit import index
    from ddkit.models.teacher import load_teacher
    from ddkit.training import pick_device

    for name, value in (("threshold", threshold), ("test_threshold", test_threshold)):
        if value is not None and not (np.isfinite(value) and value >= 0):
            raise InvalidInput(f"{name} must be a distance ≥ 0, got {value}", "distances are between unit vectors: 0..2")
    test_threshold = threshold if test_threshold is None else test_threshold
    pool = load_pool(pool_path)
    dev = pick_device(device)
    teacher = load_teacher(teacher_path, dev)
    teacher.check_fits(pool.info)
    test_name = test_dataset or pool_task(pool_path).name
    test = load_dataset(test_name, "test")
    teacher.check_fits(test.info)
    norm = pool.info.normalization
    emb = teacher_embeddings(teacher, pool.images, norm, embedding)
    test_emb = teacher_embeddings(teacher, test.images, norm, embedding)

    # 1. contamination: nearest test image within test_threshold.
    dist2, nearest = index.knn(emb, test_emb, 1)
    test_dist = np.sqrt(np.maximum(dist2[:, 0], 0.0))
    contaminated = test_dist <= test_threshold
    # 2. near-duplicates among the rest; each group keeps its first sample.
    rest = np.flatnonzero(~contaminated)
    dup_keep = np.ones(len(rest), bool)
    group = np.arange(len(rest))
    truncated = 0
    if len(rest) > 1:
        dups = index.near_duplicates(emb[rest], threshold=threshold, k=k)
        dup_keep, group, truncated = dups.keep, dups.group, dups.truncated
    kept_pos = rest[dup_keep]
    dropped_dup = rest[~dup_keep]
    ids = pool.ids.numpy()
    # Distance of each in-pool drop to the kept representative of its group.
    rep = rest[group[~dup_keep]]
    dup_dist = np.sqrt(((emb[dropped_dup] - emb[rep]) ** 2).sum(1)) if len(dropped_dup) else np.empty(0)
    test_pos = np.flatnonzero(contaminated)
    dropped_pos = np.concatenate([test_pos, dropped_dup])
    record = {
        "dropped_ids": ids[dropped_pos],
        "reason": np.concatenate([np.full(len(test_pos), DROP_TEST, np.int8), np.full(len(dropped_dup), DROP_IN_POOL, np.int8)]),
        "matched_id": np.concatenate([test.ids.numpy()[nearest[test_pos, 0]], ids[rep]]).astype(np.int64),
        "distance": np.concatenate([test_dist[test_pos], dup_dist]).astype(np.float32),
    }
    report = {
        "pool": str(Path(pool_path)), "pool_fingerprint": pool.fingerprint(), "size_before": len(ids),
        "size_after": len(kept_pos), "dropped_test_contamination": len(test_pos),
        "dropped_in_pool_duplicates": len(dropped_dup), "test_dataset": test_name, "test_size": len(test),
        "threshold": float(threshold), "test_threshold": float(test_threshold), "k": int(k),
        "embedding": f"{embedding}: L2-normalized teacher features of clean views, L2 distance", "truncated_rows": int(truncated),
        "teacher": teacher.header.summary(), "index_backend": index.backend().describe(),
        "reasons": {str(DROP_IN_POOL): "near-duplicate of a kept pool sample", str(DROP_TEST): "near-duplicate of a test image"},
    }
    with open_pool(pool_path) as h5:
        aside = {key: h5["aside"][key][()][kept_pos] for key in h5["aside"]}
        origins = json.loads(h5.attrs["origins"])
        provenance = json.loads(h5.attrs["provenance"])
        name = h5.attrs["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    provenance = dict(provenance, dedup_of={"path": str(Path(pool_path).resolve()), "fingerprint": pool.fingerprint()})
    summary = write_pool(out, pool.images[torch.from_numpy(kept_pos)], ids[kept_pos], pool_task(pool_path), name, aside,
                         origins, provenance, extra_groups={"dedup": ({"report": report}, record)}, overwrite=overwrite)
    report["out"] = summary.path
    report["out_fingerprint"] = summary.fingerprint
    return report
