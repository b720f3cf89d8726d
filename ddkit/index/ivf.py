"""Approximate k-NN through an inverted file (IVF): the search that keeps a pool's duplicate search
inside itself from costing N² distance computations.

The database rows are clustered once (`ddkit.index.kmeans` on a seeded sample, so the lists depend
on the seed alone); each row goes to the list of its nearest centroid. A query is compared only
with the rows of the `probes` lists whose centroids are nearest to it, so a search costs about
N · probes · N/lists distance computations instead of N². Each list is searched exactly by the
same block kernel as `knn` (`search_blocks`: FAISS or torch, CPU or GPU, as the run's device
decides), so the only approximation is which lists are visited: a neighbour is missed only when
it sits in a list none of the query's `probes` nearest centroids own. Near-duplicates are far
closer to each other than to anything else, which is the case this search is for; the recall of
planted duplicates is measured in tests/test_index.py and in BENCHMARKS.md `contamination`.

A database of at most `exact_below` rows is searched exactly (`knn`): below that size the lists
would hold too few rows for the clustering to pay off.
"""

from __future__ import annotations

import math

import numpy as np

from ddkit.errors import InvalidInput
from ddkit.index.device import index_device
from ddkit.index.kmeans import kmeans
from ddkit.index.search import _sort_rows, choose_engine, knn, search_blocks
from ddkit.index.source import as_points, check_int
from ddkit.seeding import numpy_rng

EXACT_BELOW = 20_000  # databases up to this many rows are searched exactly
TRAIN_PER_LIST = 64  # k-means sample: rows per list (FAISS warns below 39)
KMEANS_ITERATIONS = 10


def default_lists(n: int) -> int:
    """Lists for an n-row database: ~2·√n (a query then visits `probes` lists of ~√n/2 rows; assigning
    the rows and the queries to lists costs about as much as searching the lists)."""
    return int(max(1, min(n // 32, round(2 * math.sqrt(n)))))


def knn_ivf(queries, database, k: int, *, lists: int | None = None, probes: int = 8, seed: int = 0,
            exact_below: int = EXACT_BELOW, engine: str = "auto", device=None) -> tuple[np.ndarray, np.ndarray]:
    """Approximate k nearest neighbours (squared L2) of each query among `database` rows.

    `queries`, `database`: N×d arrays (float32 is used) or h5py datasets / memmaps (the database is
    read whole into memory once: keep it to vectors that fit). `lists`: inverted lists (default
    `default_lists(n)`); `probes`: lists visited per query; `seed`: the clustering's sample and
    start. Returns `(distances, indices)`, Q×k, each row sorted by (distance, index), with
    (inf, −1) where fewer than k rows were visited. A database of at most `exact_below` rows is
    searched exactly.
    """
    q = as_points(queries, "queries", allow_empty=True)
    db = as_points(database, "database")
    if q.d != db.d:
        raise InvalidInput(f"queries have dimension {q.d} but the database has {db.d}",
                           "embed both with the same model")
    k = check_int(k, "k", 1, db.n)
    probes = check_int(probes, "probes", 1)
    seed = check_int(seed, "seed", 0)
    exact_below = check_int(exact_below, "exact_below", 0)
    if lists is not None:
        lists = check_int(lists, "lists", 1, db.n)
    if q.n == 0:
        return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
    if db.n <= exact_below:
        return knn(q, db, k, engine=engine, device=device)
    lists = lists or default_lists(db.n)
    probes = min(probes, lists)
    rows = db.load()
    sample = np.sort(numpy_rng(seed, "ivf-sample").choice(db.n, min(db.n, lists * TRAIN_PER_LIST), replace=False))
    centroids = kmeans(rows[sample], lists, seed=seed, iterations=KMEANS_ITERATIONS, engine=engine,
                       device=device).centroids
    _, owner = knn(rows, centroids, 1, engine=engine, device=device)
    owner = owner[:, 0]
    order = np.argsort(owner, kind="stable")  # the rows of list l are order[start[l]:start[l + 1]]
    start = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=lists))])
    sorted_rows = rows[order]
    best_d = np.full((q.n, k), np.inf, np.float32)
    best_i = np.full((q.n, k), -1, np.int64)
    chosen = choose_engine(db.d, k, q.n * probes * (db.n // lists + 1) * db.d, engine, device)
    dev = index_device(device)
    for qs, block in q.blocks():
        _, visit = knn(block, centroids, probes, engine=engine, device=device)
        _search_lists(block, qs, visit, sorted_rows, order, start, k, chosen, dev, best_d, best_i)
    return best_d, best_i


def _search_lists(block, offset, visit, sorted_rows, order, start, k, engine, device, best_d, best_i) -> None:
    """Search each list its queries visit, merging into the running best k of those queries."""
    flat = visit.reshape(-1)
    who = np.repeat(np.arange(len(block)), visit.shape[1])
    by_list = np.argsort(flat, kind="stable")
    flat, who = flat[by_list], who[by_list]
    bounds = np.flatnonzero(np.diff(flat)) + 1
    for group in np.split(np.arange(len(flat)), bounds):
        if not len(group):
            continue
        lst = int(flat[group[0]])
        lo, hi = start[lst], start[lst + 1]
        if hi == lo:
            continue
        members = who[group]
        d, i = search_blocks(block[members], sorted_rows[lo:hi], k, engine, device)
        i = np.where(i >= 0, order[lo + np.maximum(i, 0)], -1)
        rows = members + offset
        d, i = _sort_rows(np.concatenate([best_d[rows], d], 1), np.concatenate([best_i[rows], i], 1))
        best_d[rows], best_i[rows] = d[:, :k], i[:, :k]
