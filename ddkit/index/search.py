"""Exact k-nearest-neighbour search (squared L2), the distance kernel of the whole index layer.

Two engines compute the same thing block by block (each optionally single-threaded, `faiss:1`,
`torch:1`; see `ddkit.index.device` for why and how one is chosen):
- `faiss`: `faiss.knn` (CPU) or `faiss.knn_gpu` (GPU);
- `torch`: one GEMM per block on augmented vectors, score(x, y) = [x, 1]·[−2y, ‖y‖²] = ‖y‖² − 2x·y
  (the ‖x‖² term does not change a query's ranking, so it is added only to the k survivors), then a
  two-stage top-k (`block_topk`) and a merge into the running best k.
Results are sorted by (distance, index), so equal distances come back in one defined order.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import torch

from ddkit.errors import InvalidInput
from ddkit.index.device import (
    backend,
    candidate_engines,
    check_engine,
    engine_threads,
    index_device,
    measured_check,
    parse_engine,
)
from ddkit.index.source import Points, as_points, check_int

# Block shapes of the torch engine: a score block of QUERY_ROWS × DB_ROWS floats stays near the
# L2 cache, and each database block is prepared once for all query blocks.
QUERY_ROWS = 512
DB_ROWS = 4096
GROUPS = 16  # column groups of the two-stage top-k (see block_topk)
# Below this many multiply-adds a call is too small for the engine choice to matter: use FAISS.
_SMALL_WORK = 1 << 26
PAD_TO = 1  # inner GEMM size d + 1 rounded up to a multiple of this

_gpu_resources = None
_gpu_lock = threading.Lock()


def _faiss_gpu_resources():
    global _gpu_resources
    with _gpu_lock:
        if _gpu_resources is None:
            import faiss

            _gpu_resources = faiss.StandardGpuResources()
        return _gpu_resources


def _faiss_search(queries: np.ndarray, database: np.ndarray, k: int, device: torch.device):
    import faiss

    if device.type == "cuda" and backend(device).library == "faiss-gpu":
        return faiss.knn_gpu(_faiss_gpu_resources(), queries, database, k)
    return faiss.knn(queries, database, k)


def _pad(d: int) -> int:
    """Zero columns appended after the augmented column, so the GEMM's inner size is a multiple of PAD_TO."""
    return (-(d + 1)) % PAD_TO


def _prepare_database(block: torch.Tensor) -> torch.Tensor:
    """[−2y, ‖y‖², 0…] rows, so one GEMM with [x, 1, 0…] gives ‖y‖² − 2x·y."""
    zeros = torch.zeros(len(block), _pad(block.shape[1]), dtype=block.dtype, device=block.device)
    return torch.cat([block * -2.0, (block * block).sum(1, keepdim=True), zeros], 1)


def _augment_queries(queries: torch.Tensor) -> torch.Tensor:
    n, d = queries.shape
    ones = torch.ones(n, 1, dtype=queries.dtype, device=queries.device)
    return torch.cat([queries, ones, torch.zeros(n, _pad(d), dtype=queries.dtype, device=queries.device)], 1)


def _merge(best_v, best_i, v, i, k):
    """Merge candidate (values, indices) into the running best k per row (smaller is better)."""
    if k == 1:
        better = v < best_v
        return torch.where(better, v, best_v), torch.where(better, i, best_i)
    values = torch.cat([best_v, v], 1)
    indices = torch.cat([best_i, i], 1)
    top_v, pos = torch.topk(values, k, dim=1, largest=False, sorted=False)
    return top_v, indices.gather(1, pos)


def block_topk(scores: torch.Tensor, k: int, groups: int = GROUPS) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest entries of each row (unsorted), exactly, with most of the work vectorized.

    Columns are split into `groups` strided slices; the elementwise minimum over the slices gives
    each column-group's minimum (a vectorized pass). The k smallest entries of a row lie in at most
    k groups, and those groups have minima ≤ the row's k-th smallest entry, so they are among the k
    groups with the smallest minima: a top-k over B/groups minima, then over those k groups'
    k·groups entries, replaces a top-k over all B columns (the slow, scalar part).
    """
    q, b = scores.shape
    width = b // groups
    if groups <= 1 or width < k or b % groups:
        if k == 1:
            return scores.min(1, keepdim=True)
        return torch.topk(scores, k, dim=1, largest=False, sorted=False)
    minima = scores.view(q, groups, width).amin(1)
    if k == 1:  # an indexed min over B/groups columns instead of B
        _, cols = minima.min(1, keepdim=True)
    else:
        _, cols = torch.topk(minima, k, dim=1, largest=False, sorted=False)  # q × k group columns
    offsets = torch.arange(groups, device=scores.device).mul_(width)
    candidates = (cols.unsqueeze(1) + offsets.view(1, groups, 1)).view(q, groups * k)
    values = scores.gather(1, candidates)
    if k == 1:
        v, pos = values.min(1, keepdim=True)
    else:
        v, pos = torch.topk(values, k, dim=1, largest=False, sorted=False)
    return v, candidates.gather(1, pos)


def _torch_search(queries: np.ndarray, database: np.ndarray, k: int, device: torch.device):
    q = torch.from_numpy(queries).to(device)
    db = torch.from_numpy(database).to(device)
    qa = _augment_queries(q)
    nq, nb = len(q), len(db)
    best_v = torch.full((nq, k), float("inf"), device=device)
    best_i = torch.full((nq, k), -1, dtype=torch.long, device=device)
    q_rows = QUERY_ROWS if device.type == "cpu" else 8192
    db_rows = DB_ROWS if device.type == "cpu" else 65536
    for j in range(0, nb, db_rows):
        ya = _prepare_database(db[j : j + db_rows])
        kk = min(k, len(ya))
        for i in range(0, nq, q_rows):
            scores = qa[i : i + q_rows] @ ya.T
            v, ix = block_topk(scores, kk)
            ix = ix + j
            if kk < k:  # a database block smaller than k: pad with "no neighbour"
                pad = k - kk
                v = torch.cat([v, torch.full((len(v), pad), float("inf"), device=device)], 1)
                ix = torch.cat([ix, torch.full((len(ix), pad), -1, dtype=torch.long, device=device)], 1)
            best_v[i : i + q_rows], best_i[i : i + q_rows] = _merge(best_v[i : i + q_rows], best_i[i : i + q_rows], v, ix, k)
    distances = (best_v + (q * q).sum(1, keepdim=True)).clamp_min_(0.0)
    distances[best_i < 0] = float("inf")
    return distances.cpu().numpy(), best_i.cpu().numpy()


def search_blocks(queries: np.ndarray, database: np.ndarray, k: int, engine: str, device: torch.device):
    """Top-`k` (squared L2, indices) of in-memory float32 `queries` among in-memory `database` rows.

    k may exceed the database size: missing neighbours are (inf, -1).
    """
    with engine_threads(engine):
        return _search_blocks(queries, database, k, parse_engine(engine)[0], device)


def _search_blocks(queries: np.ndarray, database: np.ndarray, k: int, engine: str, device: torch.device):
    kk = min(k, len(database))
    if engine == "faiss":
        d, i = _faiss_search(queries, database, kk, device) if kk else (np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64))
        d, i = d.astype(np.float32, copy=False), i.astype(np.int64, copy=False)
        if kk < k:
            d = np.concatenate([d, np.full((len(queries), k - kk), np.inf, np.float32)], 1)
            i = np.concatenate([i, np.full((len(queries), k - kk), -1, np.int64)], 1)
        d = np.maximum(d, 0.0)
        d[i < 0] = np.inf
        return d, i
    return _torch_search(queries, database, k, device)


# -- which engine: a measured check per (dimension bucket, k regime), see ddkit.index.device ----------
def _bucket(d: int) -> int:
    return 1 << max(4, int(np.ceil(np.log2(max(d, 1)))))


def choose_engine(d: int, k: int, work: int, engine: str = "auto", device=None) -> str:
    """The engine for a search of dimension `d`, `k` neighbours and `work` multiply-adds on the
    backend of the run's `device`."""
    check_engine(engine)
    b = backend(device)
    if engine != "auto":
        if parse_engine(engine)[0] == "faiss" and b.library in ("torch-cpu",):
            raise InvalidInput("engine 'faiss' was asked but faiss is not installed", "pip install faiss-cpu")
        return engine
    if b.pinned_engine:
        return b.pinned_engine
    if b.library == "faiss-gpu":
        return "faiss"
    if work < _SMALL_WORK:
        return "faiss"
    key = f"d={_bucket(d)},{'k=1' if k == 1 else 'k>1'}"
    return measured_check(key, lambda: _measure(_bucket(d), 1 if k == 1 else 10), device)["chosen"]


def _measure(d: int, k: int, reps: int = 3) -> dict:
    """GFLOP/s of each CPU engine on one synthetic search of dimension `d` (about 2 GFLOP: big
    enough that per-call overheads do not decide, small enough to cost about a second)."""
    rng = np.random.default_rng(0)
    nq = 2048
    nb = int(np.clip((1 << 30) // (nq * d), 4096, 65536))
    queries = rng.standard_normal((nq, d), dtype=np.float32)
    database = rng.standard_normal((nb, d), dtype=np.float32)
    engines = candidate_engines()
    best = {e: float("inf") for e in engines}
    for _ in range(reps):
        for e in engines:  # alternate, so a burst of load elsewhere hits every engine
            start = time.perf_counter()
            search_blocks(queries, database, k, e, torch.device("cpu"))
            best[e] = min(best[e], time.perf_counter() - start)
    flops = 2.0 * nq * nb * d
    rates = {e: flops / best[e] / 1e9 for e in engines}
    return {**rates, "chosen": max(engines, key=lambda e: rates[e])}


def _sort_rows(d: np.ndarray, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by distance, then index (missing neighbours last)."""
    key_i = np.where(i < 0, np.iinfo(np.int64).max, i)
    order = np.lexsort((key_i, d), axis=-1)
    return np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)


def knn(queries, database, k: int, *, engine: str = "auto", device=None) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of each query among `database` rows (squared L2 distances).

    `queries` and `database`: N×d arrays (float32 is used) or h5py datasets, which are read in
    blocks, never whole. `device`: the run's device (`--device`; None: the GPU when there is one),
    which decides the backend (see `ddkit.index.device`). Returns `(distances, indices)`, both Q×k (float32, int64), each row
    sorted by (distance, index). Raises InvalidInput for mismatched dimensions or k out of range.
    """
    q = as_points(queries, "queries")
    db = as_points(database, "database")
    if q.d != db.d:
        raise InvalidInput(f"queries have dimension {q.d} but the database has {db.d}", "embed both with the same model")
    k = check_int(k, "k", 1, db.n)
    chosen = choose_engine(db.d, k, q.n * db.n * db.d, engine, device)
    device = index_device(device)
    out_d = np.empty((q.n, k), np.float32)
    out_i = np.empty((q.n, k), np.int64)
    for qs, q_block in q.blocks():
        if not db.streamed:
            d, i = search_blocks(q_block, db.array, k, chosen, device)
        else:
            d, i = _search_streamed(q_block, db, k, chosen, device)
        out_d[qs : qs + len(q_block)], out_i[qs : qs + len(q_block)] = _sort_rows(d, i)
    return out_d, out_i


def _search_streamed(q_block: np.ndarray, db: Points, k: int, engine: str, device: torch.device):
    best_d = np.full((len(q_block), k), np.inf, np.float32)
    best_i = np.full((len(q_block), k), -1, np.int64)
    for start, block in db.blocks():
        d, i = search_blocks(q_block, block, k, engine, device)
        i = np.where(i >= 0, i + start, -1)
        d = np.concatenate([best_d, d], 1)
        i = np.concatenate([best_i, i], 1)
        d, i = _sort_rows(d, i)
        best_d, best_i = d[:, :k], i[:, :k]
    return best_d, best_i


def nearest(points: Points, centers: np.ndarray, engine: str = "auto", device=None) -> tuple[np.ndarray, np.ndarray]:
    """For each row of `points`, the squared distance to and index of its nearest center.

    The assignment step of k-means and the initial min-distance of k-center; walks `points` in
    its blocks (so it streams), searching the in-memory `centers`.
    """
    centers = np.ascontiguousarray(centers, dtype=np.float32)
    chosen = choose_engine(points.d, 1, points.n * len(centers) * points.d, engine, device)
    device = index_device(device)
    dist = np.empty(points.n, np.float32)
    index = np.empty(points.n, np.int64)
    for start, block in points.blocks():
        d, i = search_blocks(block, centers, 1, chosen, device)
        dist[start : start + len(block)], index[start : start + len(block)] = d[:, 0], i[:, 0]
    return dist, index
