"""Pool deduplication (`ddkit pool dedup`): drop near-copies of test images and near-duplicates
inside the pool.

The detectors of `ddkit.contamination` (teacher-free, the same ones `ddkit validate --against` runs:
`descriptor-2` by default, `descriptor-1`, `pixel-align-1` also under its old name `pixels`), or `teacher`,
the older distance between teacher embeddings (FAISS through `ddkit.index`), kept as an option:
BENCHMARKS.md `contamination` shows that it misses shifted copies unless it also drops a large
share of clean images.

Every pass over the pool streams (`ddkit.contamination.passes`, `pools.embed.dataset_outputs`) and
the kept samples are written block by block, so a pool larger than memory deduplicates with the
same result as in memory. The search inside the pool is a k-NN through an inverted file
(`ddkit.index.knn_ivf`), never all pairs. What stays in memory: the descriptors (2 × 64 floats per
row: the image and its mirror image) or the candidate vectors and the embeddings. `pixel-align-1`
reads a streamed pool (or test split) once into a temporary uncompressed row file beside the
output for its verification (removed afterwards); the descriptor reads the pool as it streams."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ddkit import index
from ddkit.contamination.check import load_reference
from ddkit.contamination.detectors import DEFAULT, DETECTORS
from ddkit.contamination.passes import QUERY_BLOCK, match_dataset, reference_detector, within_dataset
from ddkit.data import load_dataset, recorded_dataset
from ddkit.data.poolfile import block_rows, load_pool, open_pool, pool_task, write_pool_blocks
from ddkit.data.stream import iter_batches
from ddkit.errors import IncompatibleError, InvalidInput
from ddkit.fileio import attr_text
from ddkit.models.teacher import load_teacher
from ddkit.pools.embed import teacher_embeddings
from ddkit.progress import progress, say
from ddkit.training import pick_device

DROP_IN_POOL = 1  # near-duplicate of another pool sample that is kept
DROP_TEST = 2  # near-duplicate of a test image (contamination)
ALIASES = {"pixels": "pixel-align-1"}  # the name `pool dedup --detector` had before detectors were registered


def detector_names() -> list[str]:
    """What `--detector` takes: the registered contamination detectors, their old alias, `teacher`."""
    return [*DETECTORS.names(), *ALIASES, "teacher"]


def dedup_pool(pool_path: str | os.PathLike, teacher_path: str | os.PathLike | None, out: str | os.PathLike,
               test_dataset: str | None = None, threshold: float = 0.1, test_threshold: float | None = None,
               k: int = 16, embedding: str = "map", device: str | None = None, overwrite: bool = False,
               detector: str | None = None) -> dict:
    """Drop pool samples that copy a TEST image, then near-duplicates inside the pool (one kept per
    group), with `detector`: a contamination detector (default `DEFAULT`; `teacher_path`, thresholds,
    `k` and `embedding` are not used) or "teacher" (`teacher_dedup`). Writes the remaining pool to
    `out` with `/dedup` recording every dropped id, why, what it matched and its score, and the
    check in the pool's provenance; returns the report.

    `test_dataset` (`DATASET[:SPLIT]`) defaults to the pool's task, test split.
    """
    detector = ALIASES.get(detector, detector) or DEFAULT
    if detector not in detector_names():
        raise InvalidInput(f"unknown detector {detector!r}", f"use one of {', '.join(detector_names())}")
    if detector == "teacher":
        if teacher_path is None:
            raise InvalidInput("the teacher detector needs a teacher",
                               f"pass --teacher FILE, or use --detector {DEFAULT}")
        return teacher_dedup(pool_path, teacher_path, out, test_dataset, threshold, test_threshold, k, embedding,
                             device, overwrite)
    pool = load_pool(pool_path)  # the fingerprint is checked before any search
    test_name = test_dataset or pool_task(pool_path).name
    test = load_reference(test_name)
    if tuple(test.info.image_shape) != tuple(pool.info.image_shape):
        raise IncompatibleError(f"the pool's images are {tuple(pool.info.image_shape)}, {test_name}'s "
                                f"{tuple(test.info.image_shape)}", "deduplicate against the pool's own task")
    dev = pick_device(device)
    workdir = Path(out).resolve().parent
    say(f"pool dedup 1/3: copies of {test_name} images among the pool's {len(pool)} samples")
    with reference_detector(test, detector, workdir=workdir, device=dev) as det:
        m = match_dataset(det, pool)
        contaminated = m.flagged
        rest = np.flatnonzero(~contaminated)
        say(f"pool dedup 2/3: near-duplicates among the {len(rest)} samples left "
            f"({int(contaminated.sum())} test copies dropped)")
        vectors, crowding = ((None, None) if m.vectors is None else (m.vectors[rest], m.crowding[rest]))
        group, keep, score = within_dataset(pool, rest, det, workdir=workdir, vectors=vectors, crowding=crowding)
    test_pos, dropped_dup = np.flatnonzero(contaminated), rest[~keep]
    kept_pos = rest[keep]
    ids = pool.ids.numpy()
    record = {
        "dropped_ids": ids[np.concatenate([test_pos, dropped_dup])],
        "reason": np.concatenate([np.full(len(test_pos), DROP_TEST, np.int8),
                                  np.full(len(dropped_dup), DROP_IN_POOL, np.int8)]),
        "matched_id": np.concatenate([test.ids.numpy()[m.reference[test_pos]],
                                      ids[rest[group[~keep]]]]).astype(np.int64),
        "distance": np.concatenate([m.score[test_pos], score[~keep]]).astype(np.float32),
    }
    what = ("descriptor: squared distance between learned unit descriptors" if detector.startswith("descriptor")
            else "pixels: teacher-free pixel-align detector (distance: relative residual)")
    report = {
        "pool": str(Path(pool_path)), "pool_fingerprint": pool.fingerprint(), "size_before": len(ids),
        "size_after": len(kept_pos), "dropped_test_contamination": len(test_pos),
        "dropped_in_pool_duplicates": len(dropped_dup), "test_dataset": test_name, "test_size": len(test),
        "detector": det.version, "embedding": what, "threshold": float(det.config.threshold),
        "reasons": {str(DROP_IN_POOL): "near-duplicate of a kept pool sample",
                    str(DROP_TEST): "near-duplicate of a test image"},
    }
    check = {"check": "contamination", "against": f"{test_name}", "detector": det.version, "flagged": len(test_pos),
             "parts": {"pool samples": {"checked": len(ids), "flagged": len(test_pos), "exact": int(m.exact.sum()),
                                        "flagged_ids": ids[test_pos].tolist()[:1000]}}}
    say(f"pool dedup 3/3: writing the {len(kept_pos)} kept samples to {out}")
    return _write_deduplicated(pool_path, pool, kept_pos, out, report, record, overwrite, check)


def _write_deduplicated(pool_path, pool, kept_pos, out, report, record, overwrite, check=None) -> dict:
    """Write the kept samples with the dedup record (and the contamination check, if any)."""
    ids = pool.ids.numpy()
    with open_pool(pool_path) as h5:
        aside = {key: h5["aside"][key][()][kept_pos] for key in h5["aside"]}
        origins = json.loads(h5.attrs["origins"])
        provenance = json.loads(h5.attrs["provenance"])
        name = h5.attrs["name"]
    name = attr_text(name)
    provenance = dict(provenance, dedup_of={"path": str(Path(pool_path).resolve()), "fingerprint": pool.fingerprint()})
    if check is not None:
        from ddkit.provenance import utc_now

        provenance["contamination"] = dict(check, created=utc_now(),
                                           of="the pool before dedup (every flagged id was dropped)")
    rows = block_rows(pool.info.image_shape, QUERY_BLOCK)
    blocks = progress((b.x for b in iter_batches(pool, rows, kept_pos, normalized=False, raw=True)),
                      total=-(-len(kept_pos) // rows), desc=f"writing {len(kept_pos)} pool samples", unit="block")
    summary = write_pool_blocks(out, blocks, tuple(pool.info.image_shape), ids[kept_pos], pool_task(pool_path), name,
                                aside, origins, provenance, extra_groups={"dedup": ({"report": report}, record)},
                                overwrite=overwrite)
    report["out"] = summary.path
    report["out_fingerprint"] = summary.fingerprint
    return report


def teacher_dedup(pool_path: str | os.PathLike, teacher_path: str | os.PathLike, out: str | os.PathLike,
                  test_dataset: str | None = None, threshold: float = 0.1, test_threshold: float | None = None,
                  k: int = 16, embedding: str = "map", device: str | None = None, overwrite: bool = False) -> dict:
    """The teacher-embedding detector: drop pool samples that are near-duplicates of a TEST image,
    then near-duplicates inside the pool (one kept per group), by L2 distance between L2-normalized
    teacher embeddings (FAISS via `ddkit.index`). Writes the remaining pool to `out` with `/dedup`
    recording every dropped id, why, what it matched and at what distance; returns the report.

    The default threshold 0.1 on `map` embeddings was read off fashion-mnist-mini with the
    Fashion-MNIST convnet-bn and resnet8 teachers: exact copies are at 0, light noise (σ = 0.01)
    and gamma 1.2 copies mostly below 0.1, while 99.9% of distinct train/test nearest pairs are
    above it (the closest distinct pairs, 0.09, are Fashion-MNIST's own train/test near-copies).

    `test_dataset` defaults to the pool's task; `test_threshold` defaults to `threshold`.
    """
    for name, value in (("threshold", threshold), ("test_threshold", test_threshold)):
        if value is not None and not (np.isfinite(value) and value >= 0):
            raise InvalidInput(f"{name} must be a distance ≥ 0, got {value}",
                               "distances are between unit vectors: 0..2")
    test_threshold = threshold if test_threshold is None else test_threshold
    pool = load_pool(pool_path)
    dev = pick_device(device)
    teacher = load_teacher(teacher_path, dev)
    teacher.check_fits(pool.info)
    test_name = test_dataset or recorded_dataset(pool_task(pool_path).name, None, f"pool {pool_path}")
    test = load_dataset(test_name, "test")
    teacher.check_fits(test.info)
    norm = pool.info.normalization
    emb = teacher_embeddings(teacher, pool, norm, embedding)
    test_emb = teacher_embeddings(teacher, test, norm, embedding)

    # 1. contamination: nearest test image within test_threshold.
    dist2, nearest = index.knn(emb, test_emb, 1, device=dev)
    test_dist = np.sqrt(np.maximum(dist2[:, 0], 0.0))
    contaminated = test_dist <= test_threshold
    # 2. near-duplicates among the rest; each group keeps its first sample.
    rest = np.flatnonzero(~contaminated)
    dup_keep = np.ones(len(rest), bool)
    group = np.arange(len(rest))
    truncated = 0
    if len(rest) > 1:
        dups = index.near_duplicates(emb[rest], threshold=threshold, k=k, device=dev)
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
        "reason": np.concatenate([np.full(len(test_pos), DROP_TEST, np.int8),
                                  np.full(len(dropped_dup), DROP_IN_POOL, np.int8)]),
        "matched_id": np.concatenate([test.ids.numpy()[nearest[test_pos, 0]], ids[rep]]).astype(np.int64),
        "distance": np.concatenate([test_dist[test_pos], dup_dist]).astype(np.float32),
    }
    report = {
        "pool": str(Path(pool_path)), "pool_fingerprint": pool.fingerprint(), "size_before": len(ids),
        "size_after": len(kept_pos), "dropped_test_contamination": len(test_pos),
        "dropped_in_pool_duplicates": len(dropped_dup), "test_dataset": test_name, "test_size": len(test),
        "threshold": float(threshold), "test_threshold": float(test_threshold), "k": int(k),
        "embedding": f"{embedding}: L2-normalized teacher features of clean views, L2 distance",
        "truncated_rows": int(truncated),
        "teacher": teacher.header.summary(), "index_backend": index.backend(dev).describe(),
        "reasons": {str(DROP_IN_POOL): "near-duplicate of a kept pool sample",
                    str(DROP_TEST): "near-duplicate of a test image"},
    }
    report["detector"] = "teacher-embedding (L2 between normalized teacher features)"
    return _write_deduplicated(pool_path, pool, kept_pos, out, report, record, overwrite)
