"""Near-duplicate search: pairs of rows closer than a threshold, grouped, with one row kept per group.

Candidates come from an exact k-NN self-search; their distances are then recomputed directly as
‖x − y‖ (no ‖x‖² − 2x·y + ‖y‖² cancellation), so `threshold=0` finds exact duplicates reliably.
A row whose k-th neighbour is still within the threshold may have more duplicates than k shows:
those rows are counted in `truncated`, and a larger `k` finds the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ddkit.errors import InvalidInput
from ddkit.index.search import knn
from ddkit.index.source import as_points, check_int


@dataclass
class Duplicates:
    """`pairs` M×2 (i < j) with their L2 `distances`; `group` per row (the smallest row of its
    connected group of near-duplicates); `keep` marks one row per group (the smallest);
    `truncated`: rows whose every one of k neighbours was within the threshold."""

    pairs: np.ndarray
    distances: np.ndarray
    group: np.ndarray
    keep: np.ndarray
    truncated: int

    @property
    def num_removed(self) -> int:
        return int((~self.keep).sum())


def _find(parent: np.ndarray, i: int) -> int:
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:
        parent[i], i = root, parent[i]
    return root


def near_duplicates(points, *, threshold: float, k: int = 16, engine: str = "auto", device=None) -> Duplicates:
    """All pairs of rows of `points` (array or h5py dataset) within L2 distance `threshold`; the
    k-NN runs on the backend of the run's `device` (see `ddkit.index.device`)."""
    pts = as_points(points, "points")
    try:
        threshold = float(threshold)
    except (TypeError, ValueError):
        raise InvalidInput(f"threshold must be a number, got {threshold!r}") from None
    if not np.isfinite(threshold) or threshold < 0:
        raise InvalidInput(f"threshold must be a finite distance ≥ 0, got {threshold}")
    k = check_int(k, "k", 1)
    kk = min(k + 1, pts.n)  # +1: each row finds itself
    rows_i, rows_j, dists = [], [], []
    truncated = 0
    for start, block in pts.blocks():
        _, idx = knn(block, pts, kk, engine=engine, device=device)
        own = np.arange(start, start + len(block))[:, None]
        neighbours = pts.take(np.where(idx >= 0, idx, 0).ravel()).reshape(len(block), kk, pts.d)
        exact = np.sqrt(((neighbours - block[:, None, :]) ** 2).sum(-1, dtype=np.float64))
        close = (exact <= threshold) & (idx != own) & (idx >= 0)
        truncated += int((close.sum(1) >= kk - 1).sum()) if kk - 1 >= 1 and kk < pts.n else 0
        r, c = np.nonzero(close)
        i, j = own[r, 0], idx[r, c]
        rows_i.append(np.minimum(i, j))
        rows_j.append(np.maximum(i, j))
        dists.append(exact[r, c])
    pairs = np.stack([np.concatenate(rows_i), np.concatenate(rows_j)], 1) if rows_i else np.empty((0, 2), np.int64)
    distances = np.concatenate(dists) if dists else np.empty(0)
    if len(pairs):
        pairs, first = np.unique(pairs, axis=0, return_index=True)
        distances = distances[first]
    parent = np.arange(pts.n)
    for i, j in pairs:
        a, b = _find(parent, int(i)), _find(parent, int(j))
        if a != b:
            parent[max(a, b)] = min(a, b)
    group = parent.astype(np.int64)
    while not np.array_equal(group, group[group]):  # pointer jumping to each row's root
        group = group[group]
    keep = group == np.arange(pts.n)
    return Duplicates(pairs.astype(np.int64), distances, group, keep, truncated)
