"""ddkit.index against brute-force numpy: kNN, k-means, greedy k-center (hand-made cases, no
repeats, labeled points as centers, HDF5 streaming equal to in-memory), near-duplicates, keyword
validation, and the reported CPU/GPU choice."""

import h5py
import numpy as np
import pytest

from ddkit import index
from ddkit.errors import InvalidInput
from ddkit.index import device as backend_module, search as search_module

ENGINES = ["faiss", "torch", "faiss:1", "torch:1"]


def brute_knn(q, x, k):
    d = ((q[:, None, :].astype(np.float64) - x[None].astype(np.float64)) ** 2).sum(-1)
    i = np.argsort(d, 1, kind="stable")[:, :k]
    return np.take_along_axis(d, i, 1), i


def brute_kcenter(x, budget, given=(), first=None):
    """The textbook definition, with a full distance matrix (fine at test sizes)."""
    x = x.astype(np.float64)
    sq = (x * x).sum(1)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None] - 2 * x @ x.T, 0))
    centers = list(given)
    picks = []
    for t in range(budget):
        if not centers:
            pick = first
        else:
            m = d[:, centers].min(1)
            m[centers] = -1
            pick = int(np.argmax(m))
        picks.append(pick)
        centers.append(pick)
    return picks


@pytest.fixture(scope="module")
def cloud():
    rng = np.random.default_rng(0)
    return rng.standard_normal((3000, 24)).astype(np.float32), rng.standard_normal((200, 24)).astype(np.float32)


def write_h5(path, array, chunk_rows=64):
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=array, chunks=(chunk_rows, array.shape[1]), compression="gzip")
    return path


# -- kNN ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("k", [1, 7])
def test_knn_matches_brute_force(cloud, engine, k):
    x, q = cloud
    d, i = index.knn(q, x, k, engine=engine)
    bd, bi = brute_knn(q, x, k)
    assert d.dtype == np.float32 and i.dtype == np.int64 and d.shape == (len(q), k)
    np.testing.assert_array_equal(i, bi)
    np.testing.assert_allclose(d, bd, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("engine", ENGINES)
def test_knn_streams_from_hdf5(cloud, tmp_path, engine):
    x, q = cloud
    with h5py.File(write_h5(tmp_path / "x.h5", x), "r") as f:
        points = index.as_points(f["x"], block_rows=500)
        assert points.streamed and points.block_rows % 64 == 0
        d, i = index.knn(q, points, 5, engine=engine)
    np.testing.assert_array_equal(i, brute_knn(q, x, 5)[1])


def test_knn_engines_agree_across_block_edges():
    """More database rows than one torch block and k larger than the last block."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4096 + 3, 5)).astype(np.float32)
    q = rng.standard_normal((600, 5)).astype(np.float32)
    fa = index.knn(q, x, 9, engine="faiss")
    to = index.knn(q, x, 9, engine="torch")
    np.testing.assert_array_equal(fa[1], to[1])
    np.testing.assert_allclose(fa[0], to[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("call, message", [
    (lambda x, q: index.knn(q[:, :3], x, 1), "dimension"),
    (lambda x, q: index.knn(q, x, 0), "k = 0"),
    (lambda x, q: index.knn(q, x, len(x) + 1), "out of range"),
    (lambda x, q: index.knn(q, x, 1.5), "integer"),
    (lambda x, q: index.knn(q, x, 1, engine="blas"), "engine"),
    (lambda x, q: index.knn(q, x, 1, engine="faiss:0"), "engine"),
    (lambda x, q: index.knn(q[0], x, 1), "2-D"),
    (lambda x, q: index.knn(np.full((2, x.shape[1]), np.nan), x, 1), "NaN"),
    (lambda x, q: index.kmeans(x, 3, seed=0, init="best"), "init"),
    (lambda x, q: index.kcenter(x, len(x) + 1), "budget"),
    (lambda x, q: index.kcenter(x, 2, center_positions=[0, 0]), "more than once"),
    (lambda x, q: index.kcenter(x, 2, center_positions=[len(x)]), "outside"),
    (lambda x, q: index.near_duplicates(x, threshold=-1), "threshold"),
    (lambda x, q: index.knn_ivf(q, x, 1, probes=0), "probes"),
    (lambda x, q: index.knn_ivf(q, x, 1, lists=len(x) + 1), "lists"),
    (lambda x, q: index.knn_ivf(q[:, :3], x, 1), "dimension"),
    (lambda x, q: index.knn_ivf(q, x, 0), "k = 0"),
])
def test_bad_arguments_are_clear_errors(cloud, call, message):
    x, q = cloud
    with pytest.raises(InvalidInput, match=message):
        call(x, q)


# -- k-means --------------------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ENGINES)
def test_kmeans_is_lloyd(engine):
    rng = np.random.default_rng(2)
    blobs = np.concatenate([rng.normal(c, 0.3, (200, 2)) for c in [(0, 0), (5, 0), (0, 5), (5, 5)]]).astype(np.float32)
    km = index.kmeans(blobs, 4, seed=3, engine=engine, iterations=50)
    # A fixed point of Lloyd's algorithm: each point is with its nearest centroid, each centroid is its cluster's mean.
    np.testing.assert_array_equal(km.assignment, brute_knn(blobs, km.centroids, 1)[1][:, 0])
    for c in range(4):
        np.testing.assert_allclose(km.centroids[c], blobs[km.assignment == c].mean(0), atol=1e-4)
    assert sorted(np.round(km.centroids).astype(int).tolist()) == [[0, 0], [0, 5], [5, 0], [5, 5]]
    assert km.inertia == pytest.approx(((blobs - km.centroids[km.assignment]) ** 2).sum(), rel=1e-4)
    assert all(a >= b - 1e-6 for a, b in zip(km.history, km.history[1:]))  # Lloyd never increases inertia


def test_kmeans_seeded_and_streamed(cloud, tmp_path):
    x = cloud[0][:1000]
    a = index.kmeans(x, 8, seed=5, iterations=5, init="kmeans++")
    b = index.kmeans(x, 8, seed=5, iterations=5, init="kmeans++")
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert not np.array_equal(a.centroids, index.kmeans(x, 8, seed=6, iterations=5, init="kmeans++").centroids)
    with h5py.File(write_h5(tmp_path / "x.h5", x), "r") as f:
        s = index.kmeans(f["x"], 8, seed=5, iterations=5, init="kmeans++")
    np.testing.assert_array_equal(s.assignment, a.assignment)
    np.testing.assert_allclose(s.centroids, a.centroids, atol=1e-5)


def test_kmeans_fills_empty_clusters():
    x = np.array([[0, 0]] * 5 + [[1, 0]] * 5 + [[9, 9]], np.float32)  # 3 distinct points, k = 3, duplicates galore
    km = index.kmeans(x, 3, seed=0, iterations=10)
    assert len(np.unique(km.assignment)) == 3 and km.inertia == pytest.approx(0.0, abs=1e-6)


# -- greedy k-center --------------------------------------------------------------------------------
def test_kcenter_picks_the_farthest_point():
    # Labeled center at the origin; the farthest point is (10, 0); after it, (0, 6) is farthest from
    # both (6 from the origin, ~11.7 from (10, 0)); then (5, 0) (5 from both).
    pts = np.array([[0, 0], [1, 0], [0, 6], [10, 0], [5, 0], [0, 1]], np.float32)
    res = index.kcenter(pts, 3, center_positions=[0])
    assert res.indices.tolist() == [3, 2, 4]
    np.testing.assert_allclose(res.min_distance, [10.0, 6.0, 5.0], rtol=1e-5)


def test_kcenter_without_centers_starts_from_a_seeded_random_point(cloud):
    x, _ = cloud
    a, b = index.kcenter(x, 20, seed=1), index.kcenter(x, 20, seed=1)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert np.isinf(a.min_distance[0]) and np.isfinite(a.min_distance[1:]).all()
    assert a.indices.tolist() == brute_kcenter(x[:3000], 20, first=int(a.indices[0]))
    assert index.kcenter(x, 1, seed=2).indices[0] != a.indices[0] or index.kcenter(x, 1, seed=3).indices[0] != a.indices[0]


def test_kcenter_never_repeats_even_with_duplicates():
    x = np.repeat(np.eye(3, dtype=np.float32), 4, axis=0)  # 3 distinct points, 4 copies each
    res = index.kcenter(x, len(x) - 2, center_positions=[0, 5])
    picked = res.indices.tolist() + [0, 5]
    assert len(set(picked)) == len(picked) == len(x)
    assert (np.diff(res.min_distance) <= 1e-6).all()  # greedy min-distances never increase


def test_labeled_points_act_as_centers(cloud):
    x, _ = cloud
    labeled = [5, 17, 400, 2999]
    res = index.kcenter(x, 15, center_positions=labeled)
    assert not set(res.indices) & set(labeled)
    assert res.indices.tolist() == brute_kcenter(x, 15, given=labeled)
    # External center vectors (labeled data outside the pool) act the same way.
    ext = index.kcenter(np.delete(x, labeled, 0), 15, centers=x[labeled])
    keep = np.delete(np.arange(len(x)), labeled)
    assert keep[ext.indices].tolist() == res.indices.tolist()
    np.testing.assert_allclose(ext.min_distance, res.min_distance, rtol=1e-5)


def test_kcenter_streaming_equals_in_memory(cloud, tmp_path):
    x, _ = cloud
    x = x + 100.0  # a large offset: centering keeps float32 cancellation harmless
    mem = index.kcenter(x, 40, center_positions=[3, 9], block_rows=256)
    with h5py.File(write_h5(tmp_path / "x.h5", x, chunk_rows=128), "r") as f:
        streamed = index.kcenter(f["x"], 40, center_positions=[3, 9], block_rows=256)
    np.testing.assert_array_equal(streamed.indices, mem.indices)
    np.testing.assert_array_equal(streamed.min_distance, mem.min_distance)
    assert mem.indices.tolist() == brute_kcenter(x - 100.0, 40, given=[3, 9])
    # a read-only memmap is streamed too (no whole-array centered copy), with the same answer
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert index.as_points(mapped).streamed
    from_map = index.kcenter(mapped, 40, center_positions=[3, 9], block_rows=256)
    np.testing.assert_array_equal(from_map.indices, mem.indices)
    np.testing.assert_array_equal(from_map.min_distance, mem.min_distance)


def test_streamed_rows_are_checked_on_the_first_pass(tmp_path):
    x = np.random.default_rng(1).standard_normal((500, 4)).astype(np.float32)
    x[333, 2] = np.nan
    np.save(tmp_path / "bad.npy", x)
    with pytest.raises(InvalidInput, match="NaN"):
        index.kcenter(np.load(tmp_path / "bad.npy", mmap_mode="r"), 3, block_rows=128)


# -- near-duplicates --------------------------------------------------------------------------------
def test_near_duplicates(cloud):
    x, _ = cloud
    base = x[:500]
    data = np.concatenate([base, base[:20], base[20:30] + 1e-3, base[:5]])  # exact, near, and triple copies
    dups = index.near_duplicates(data, threshold=0.01)
    assert dups.num_removed == 35 and dups.truncated == 0
    assert dups.keep[:500].all() and not dups.keep[500:].any()
    np.testing.assert_array_equal(dups.group[500:520], np.arange(20))
    np.testing.assert_array_equal(dups.group[530:535], np.arange(5))
    exact = index.near_duplicates(data, threshold=0.0)
    assert exact.num_removed == 25  # the +1e-3 copies are not exact duplicates
    brute = np.sqrt(((data[:, None] - data[None]) ** 2).sum(-1))
    i, j = np.nonzero(np.triu(brute <= 0.01, 1))
    np.testing.assert_array_equal(dups.pairs, np.stack([i, j], 1))


def test_near_duplicates_reports_truncation():
    x = np.zeros((10, 4), np.float32)
    assert index.near_duplicates(x, threshold=0.0, k=3).truncated == 10
    full = index.near_duplicates(x, threshold=0.0, k=16)
    assert full.truncated == 0 and full.num_removed == 9


# -- the inverted file ----------------------------------------------------------------------------
def test_knn_ivf_finds_planted_near_duplicates_and_falls_back_to_exact(cloud):
    """Clustered data (as descriptors are): every planted near-copy is found through the lists, and
    the search visits far fewer rows than all; a small database is searched exactly."""
    x, q = cloud
    rng = np.random.default_rng(1)
    centers = rng.standard_normal((40, 24)).astype(np.float32) * 3
    base = centers[rng.integers(0, 40, 3000)] + rng.standard_normal((3000, 24)).astype(np.float32)
    data = np.concatenate([base, base[:200] + 1e-3 * rng.standard_normal((200, 24)).astype(np.float32)])
    d, i = index.knn_ivf(data, data, 2, lists=64, probes=4, seed=0, exact_below=0)
    assert d.shape == (3200, 2) and (np.diff(d, axis=1) >= 0).all()
    pair = np.where(np.arange(3200) < 3000, np.arange(3200) + 3000, np.arange(3200) - 3000)
    assert (i[3000:, 1] == pair[3000:]).all() and (i[:200, 1] == pair[:200]).all()
    again = index.knn_ivf(data, data, 2, lists=64, probes=4, seed=0, exact_below=0)
    np.testing.assert_array_equal(again[1], i)  # seeded: the same lists, the same answer
    exact = index.knn(q, x, 3)
    small = index.knn_ivf(q, x, 3)  # 3000 rows ≤ exact_below
    np.testing.assert_array_equal(small[1], exact[1])
    agree = (index.knn_ivf(q, x, 1, lists=32, probes=32, exact_below=0)[1] == exact[1][:, :1]).mean()
    assert agree == 1.0, "visiting every list is the exact search"


# -- the backend ----------------------------------------------------------------------------------
def test_backend_choice_is_reported_once(monkeypatch):
    backend_module.reset_backend()
    b = index.backend()
    assert b is index.backend()  # chosen once per process
    assert b.device in ("cpu", "cuda") and b.library in ("faiss-cpu", "faiss-gpu", "torch-cuda", "torch-cpu")
    assert b.library in b.describe() and b.device in b.describe()
    if b.device == "cpu":
        assert "no GPU" in b.reason
    # The measured CPU check runs once per (dimension bucket, k regime) and is reported.
    monkeypatch.setattr(search_module, "_measure", lambda d, k: {"faiss": 1.0, "torch": 2.0, "chosen": "torch"})
    if b.library == "faiss-cpu" and not b.pinned_engine:
        assert search_module.choose_engine(64, 10, 1 << 40) == "torch"
        assert "d=64,k>1" in b.describe() and "-> torch" in b.describe()
        assert search_module.choose_engine(64, 10, 10) == "faiss"  # tiny calls skip the check
    backend_module.reset_backend()


def test_engine_can_be_pinned(monkeypatch):
    backend_module.reset_backend()
    monkeypatch.setenv("DDKIT_INDEX_ENGINE", "torch")
    try:
        assert search_module.choose_engine(64, 10, 1 << 40) == "torch"
        assert "pinned" in index.backend().describe() or index.backend().library != "faiss-cpu"
        monkeypatch.setenv("DDKIT_INDEX_ENGINE", "mkl")
        backend_module.reset_backend()
        with pytest.raises(InvalidInput, match="DDKIT_INDEX_ENGINE"):
            index.backend()
    finally:
        monkeypatch.delenv("DDKIT_INDEX_ENGINE")
        backend_module.reset_backend()


@pytest.mark.parametrize("k", [1, 3, 10])
def test_two_stage_block_topk_is_exact(k):
    """The grouped top-k of the torch engine returns the k smallest values of each row, ties included."""
    import torch

    from ddkit.index.search import block_topk

    gen = torch.Generator().manual_seed(k)
    for rounding in (None, 1):
        scores = torch.randn(33, 4096, generator=gen)
        if rounding is not None:
            scores = scores.round(decimals=rounding)  # many exact ties
        values, idx = block_topk(scores, k, groups=16)
        torch.testing.assert_close(values.sort(1).values, torch.topk(scores, k, 1, largest=False).values)
        torch.testing.assert_close(scores.gather(1, idx), values)
        assert all(len(set(row)) == k for row in idx.tolist())


def test_kcenter_equals_brute_force_greedy():
    """The CPU kernel (numpy GEMV into the running minimum) picks what a float64 brute force picks."""
    x = np.random.default_rng(7).standard_normal((300, 8)).astype(np.float32)
    res = index.kcenter(x, 20, center_positions=[0])
    assert res.kernel
    x64 = x.astype(np.float64)
    nearest = ((x64 - x64[0]) ** 2).sum(1)
    nearest[0] = -1.0
    for pick, distance in zip(res.indices, res.min_distance):
        assert pick == int(np.argmax(nearest))
        assert distance == pytest.approx(np.sqrt(nearest[pick]), rel=1e-4)
        nearest = np.minimum(nearest, ((x64 - x64[pick]) ** 2).sum(1))
        nearest[pick] = -1.0
