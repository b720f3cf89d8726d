"""Lloyd's k-means with explicit seeds; the assignment step is the index's nearest-center search.

One implementation for every engine: only the assignment (a k = 1 search of all points against the
centroids, the GEMM-heavy part) runs in FAISS or torch, so the engine changes speed, not the
algorithm. Streamed inputs cost one pass over the file per iteration.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ddkit.errors import InvalidInput
from ddkit.index.device import engine_threads, index_device
from ddkit.index.kcenter import RunningMin
from ddkit.index.search import nearest
from ddkit.index.source import as_points, check_int
from ddkit.seeding import numpy_rng

INITS = ("random", "kmeans++")


@dataclass
class KMeansResult:
    """`centroids` k×d; `assignment` and `distances` (squared L2 to the own centroid) per point,
    for the returned centroids; `inertia` = sum of `distances`; `history`: inertia per iteration."""

    centroids: np.ndarray
    assignment: np.ndarray
    distances: np.ndarray
    inertia: float
    iterations: int
    history: list = field(default_factory=list)


def _init_random(points, k: int, seed: int, device=None) -> np.ndarray:
    positions = np.sort(numpy_rng(seed, "kmeans-init").choice(points.n, k, replace=False))
    return points.take(positions)


def _init_plus_plus(points, k: int, seed: int, device=None) -> np.ndarray:
    """k-means++: each new centroid drawn with probability ∝ squared distance to the nearest one."""
    rng = numpy_rng(seed, "kmeans++")
    state = RunningMin(points, index_device(device))
    chosen = [int(rng.integers(points.n))]
    for _ in range(1, k):
        state.add_center(state.rows(np.array(chosen[-1:]))[0])
        weights = np.maximum(state.values.double().cpu().numpy(), 0.0)  # rounding can leave -ε at duplicates
        total = weights.sum()
        chosen.append(int(rng.choice(points.n, p=weights / total)) if total > 0 else int(rng.integers(points.n)))
    return points.take(np.array(chosen))


def kmeans(points, k: int, *, seed: int, iterations: int = 20, init: str = "random", engine: str = "auto",
           device=None) -> KMeansResult:
    """Cluster N×d `points` (array or h5py dataset) into `k` centroids on the run's `device`.

    `init="random"` draws k distinct rows (the FAISS default), `"kmeans++"` does D² seeding.
    Stops early when no assignment changes. A centroid left empty is moved to the point farthest
    from its own centroid (deterministic), so all k centroids are always used.
    """
    pts = as_points(points, "points")
    k = check_int(k, "k", 1, pts.n)
    seed = check_int(seed, "seed", 0)
    iterations = check_int(iterations, "iterations", 1)
    if init not in INITS:
        raise InvalidInput(f"init must be one of {', '.join(INITS)}, got {init!r}")
    centroids = (_init_random if init == "random" else _init_plus_plus)(pts, k, seed, device).astype(np.float32)
    previous = None
    history = []
    done = 0
    for done in range(1, iterations + 1):
        dist, assign = nearest(pts, centroids, engine, device)
        history.append(float(dist.sum(dtype=np.float64)))
        if previous is not None and np.array_equal(assign, previous):
            done -= 1
            break
        previous = assign
        centroids = _update(pts, assign, dist, centroids)
    dist, assign = nearest(pts, centroids, engine, device)
    return KMeansResult(centroids, assign, dist, float(dist.sum(dtype=np.float64)), done, history)


# Rows per float32 partial sum in the update step: bounds the float32 rounding of a cluster's
# partial sum before it is added into the float64 total.
_SUM_ROWS = 8192


def _update(points, assign: np.ndarray, dist: np.ndarray, old: np.ndarray) -> np.ndarray:
    """New centroids = cluster means.

    Per run of `_SUM_ROWS` rows, a float32 `index_add_` on one thread, folded into float64 totals:
    several times faster than a sort-and-reduce in numpy (section `index-kernels`). One thread keeps
    the order of additions fixed (deterministic) and does not collapse when the cores are shared,
    which torch's multi-threaded `index_add_` did here, though it is faster on an idle machine.
    """
    k, d = old.shape
    sums = torch.zeros((k, d), dtype=torch.float64)
    part = torch.empty((k, d), dtype=torch.float32)
    labels = torch.from_numpy(assign)
    rows = max(_SUM_ROWS, k)  # zeroing `part` per run must stay cheap next to the rows added
    with engine_threads("torch:1"):
        for start, block in points.blocks():
            block_t = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))
            for lo in range(0, len(block_t), rows):
                part.zero_()
                part.index_add_(0, labels[start + lo : start + lo + rows], block_t[lo : lo + rows])
                sums += part
    counts = np.bincount(assign, minlength=k)
    centroids = (sums.numpy() / np.maximum(counts, 1)[:, None]).astype(np.float32)
    empty = np.flatnonzero(counts == 0)
    if len(empty):  # re-seed empty clusters at the worst-served points, farthest first
        far = np.argsort(-dist, kind="stable")[: len(empty)]
        centroids[empty] = points.take(far)
    return centroids
