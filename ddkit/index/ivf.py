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


class InvertedFile:
    """An inverted file over `database` rows (N×d, read whole into memory once), built once and
    searched many times (`search`). A database of at most `exact_below` rows is kept flat and
    searched exactly. See the module docstring."""

    def __init__(self, database, *, lists: int | None = None, seed: int = 0, exact_below: int = EXACT_BELOW,
                 engine: str = "auto", device=None):
        db = as_points(database, "database")
        seed = check_int(seed, "seed", 0)
        exact_below = check_int(exact_below, "exact_below", 0)
        if lists is not None:
            lists = check_int(lists, "lists", 1, db.n)
        self.n, self.d, self.engine, self.device = db.n, db.d, engine, device
        rows = db.load()
        if db.n <= exact_below:
            self.lists, self.centroids, self.rows = 0, None, rows
            return
        self.lists = lists or default_lists(db.n)
        sample = np.sort(numpy_rng(seed, "ivf-sample").choice(db.n, min(db.n, self.lists * TRAIN_PER_LIST),
                                                              replace=False))
        self.centroids = kmeans(rows[sample], self.lists, seed=seed, iterations=KMEANS_ITERATIONS, engine=engine,
                                device=device).centroids
        _, owner = knn(rows, self.centroids, 1, engine=engine, device=device)
        self.order = np.argsort(owner[:, 0], kind="stable")  # the rows of list l: order[start[l]:start[l + 1]]
        self.start = np.concatenate([[0], np.cumsum(np.bincount(owner[:, 0], minlength=self.lists))])
        self.rows = rows[self.order]

    @property
    def exact(self) -> bool:
        return self.centroids is None

    def search(self, queries, k: int, probes: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """`(distances, indices)` of the k nearest rows among those of the `probes` lists nearest
        each query (all rows when the index is flat), Q×k sorted by (distance, index); (inf, −1)
        where fewer than k rows were visited."""
        q = as_points(queries, "queries", allow_empty=True)
        if q.d != self.d:
            raise InvalidInput(f"queries have dimension {q.d} but the database has {self.d}",
                               "embed both with the same model")
        k = check_int(k, "k", 1, self.n)
        probes = check_int(probes, "probes", 1)
        if q.n == 0:
            return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
        if self.exact:
            return knn(q, self.rows, k, engine=self.engine, device=self.device)
        probes = min(probes, self.lists)
        best_d = np.full((q.n, k), np.inf, np.float32)
        best_i = np.full((q.n, k), -1, np.int64)
        chosen = choose_engine(self.d, k, q.n * probes * (self.n // self.lists + 1) * self.d, self.engine,
                               self.device)
        dev = index_device(self.device)
        for qs, block in q.blocks():
            _, visit = knn(block, self.centroids, probes, engine=self.engine, device=self.device)
            self._search_lists(block, qs, visit, k, chosen, dev, best_d, best_i)
        return best_d, best_i

    def _search_lists(self, block, offset, visit, k, engine, device, best_d, best_i) -> None:
        """Search each list its queries visit, merging into the running best k of those queries."""
        flat = visit.reshape(-1)
        who = np.repeat(np.arange(len(block)), visit.shape[1])
        by_list = np.argsort(flat, kind="stable")
        flat, who = flat[by_list], who[by_list]
        for group in np.split(np.arange(len(flat)), np.flatnonzero(np.diff(flat)) + 1):
            lst = int(flat[group[0]])
            lo, hi = self.start[lst], self.start[lst + 1]
            if hi == lo:
                continue
            members = who[group]
            d, i = search_blocks(block[members], self.rows[lo:hi], k, engine, device)
            i = np.where(i >= 0, self.order[lo + np.maximum(i, 0)], -1)
            rows = members + offset
            d, i = _sort_rows(np.concatenate([best_d[rows], d], 1), np.concatenate([best_i[rows], i], 1))
            best_d[rows], best_i[rows] = d[:, :k], i[:, :k]


def knn_ivf(queries, database, k: int, *, lists: int | None = None, probes: int = 8, seed: int = 0,
            exact_below: int = EXACT_BELOW, engine: str = "auto", device=None) -> tuple[np.ndarray, np.ndarray]:
    """Approximate k nearest neighbours (squared L2) of each query among `database` rows: an
    `InvertedFile` built over `database` and searched once.

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
    return InvertedFile(db, lists=lists, seed=seed, exact_below=exact_below, engine=engine,
                        device=device).search(q, k, probes)
