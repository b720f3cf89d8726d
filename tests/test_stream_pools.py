"""Pools and selectors on the streamed path: `pool build`, `pool score`, `pool dedup`, the contamination
check and every selector give the same result with DDKIT_DATA_MODE=stream (under a memory limit
the whole pool exceeds) as in memory."""

from __future__ import annotations

import hashlib
import shutil

import h5py
import numpy as np
import pytest
import torch
from helpers import one_thread  # noqa: F401 (autouse)
from PIL import Image

from ddkit.contamination.check import check_file
from ddkit.data import load_dataset
from ddkit.data.imagefolder import write_class_map
from ddkit.data.poolfile import POOL_FORMAT, POOL_SCHEMA, StreamedPoolDataset, load_pool, read_dedup_record
from ddkit.errors import InvalidInput
from ddkit.models import create_model
from ddkit.models.teacher import save_teacher
from ddkit.pools.build import PoolPart, build_pool, dataset_part
from ddkit.pools.dedup import DROP_IN_POOL, DROP_TEST, dedup_pool
from ddkit.pools.scores import score_pool
from ddkit.selectors import SELECTORS, run_selector
from ddkit.store import read_selection

CLASSES = ["zebra", "apple", "mango"]
SIDE = 12  # the pixel detector needs more than 2 × 3 px of shift search
IMAGE_BYTES = 3 * SIDE * SIDE
LIMIT = str(IMAGE_BYTES * 6)  # 6 images: the pool (26) and every whole-pool read exceed it


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An image folder of distinct random patterns whose train split also holds a copy of a test
    image and a duplicate of a train image."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("streampools") / "f"
    for split, n in (("train", 8), ("test", 3)):
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
                coarse.resize((SIDE, SIDE), Image.BICUBIC).save(root / split / name / f"{i:03d}.png")
    shutil.copy(root / "test" / "zebra" / "001.png", root / "train" / "apple" / "900.png")  # contamination
    shutil.copy(root / "train" / "mango" / "002.png", root / "train" / "mango" / "901.png")  # in-pool duplicate
    write_class_map(root, CLASSES)
    return root


@pytest.fixture(scope="module")
def teacher(folder, tmp_path_factory):
    info = load_dataset(f"imagefolder:{folder}", "test").info
    path = tmp_path_factory.mktemp("streampools-teacher") / "t.safetensors"
    save_teacher(path, create_model("convnet-bn", 3, SIDE, len(CLASSES), seed=0, width=8).eval(), info)
    return path


@pytest.fixture(autouse=True)
def _no_workers(monkeypatch):
    monkeypatch.setenv("DDKIT_WORKERS", "0")  # decode in-process: the worker path is tested once below


def _mode(monkeypatch, mode: str) -> None:
    monkeypatch.setenv("DDKIT_DATA_MODE", mode)
    if mode == "stream":
        monkeypatch.setenv("DDKIT_MEMORY_LIMIT", LIMIT)
    else:
        monkeypatch.delenv("DDKIT_MEMORY_LIMIT", raising=False)


def _build(folder, out, monkeypatch, mode: str):
    _mode(monkeypatch, mode)
    train = load_dataset(f"imagefolder:{folder}", "train")
    return build_pool(out, [dataset_part(train, "folder")], train.info)


@pytest.fixture
def pools(folder, tmp_path, monkeypatch):
    """The same pool built on each path: {mode: path}."""
    paths = {mode: tmp_path / f"{mode}.pool.h5" for mode in ("memory", "stream")}
    for mode, path in paths.items():
        _build(folder, path, monkeypatch, mode)
    return paths


def test_pool_build_and_load_agree_and_stay_bounded(folder, tmp_path, monkeypatch, pools):
    monkeypatch.setenv("DDKIT_WORKERS", "2")  # the pool's rows read in worker processes
    streamed = _build(folder, tmp_path / "workers.pool.h5", monkeypatch, "stream")
    with h5py.File(pools["memory"], "r") as a, h5py.File(pools["stream"], "r") as b:
        assert a.attrs["fingerprint"] == b.attrs["fingerprint"] == streamed.fingerprint
        assert np.array_equal(a["images"][()], b["images"][()]) and np.array_equal(a["ids"][()], b["ids"][()])
    _mode(monkeypatch, "memory")
    mem = load_pool(pools["memory"])
    _mode(monkeypatch, "stream")
    st = load_pool(pools["memory"])
    assert isinstance(st, StreamedPoolDataset) and not isinstance(mem, StreamedPoolDataset) and not st.labeled
    assert st.fingerprint() == mem.fingerprint() == streamed.fingerprint
    assert st.ids_sha256() == mem.ids_sha256() and torch.equal(st.ids, mem.ids) and st.info == mem.info
    assert torch.equal(st.pixels(slice(3, 7)), mem.pixels(slice(3, 7)))
    with pytest.raises(InvalidInput, match="does not stream"):
        st.normalized()  # the whole pool is over the limit: only streamed passes can read it


def test_the_fingerprint_is_the_documented_hash(tmp_path):
    """sha256(format/schema| ids | shape|uint8| pixels): files written before streaming keep matching."""
    images = torch.randint(0, 256, (5, 1, 10, 10), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    info = load_dataset("procedural", "train").info
    info = type(info)(info.name, info.class_names, (1, 10, 10), info.normalization)
    summary = build_pool(tmp_path / "p.pool.h5", [PoolPart("x", images)], info, chunk_rows=2)
    h = hashlib.sha256(f"{POOL_FORMAT}/{POOL_SCHEMA}|".encode())
    h.update(np.arange(5, dtype="<i8").tobytes())
    h.update(b"(5, 1, 10, 10)|uint8|")
    h.update(images.numpy().tobytes())
    assert summary.fingerprint == h.hexdigest()


def _read_scores(path) -> dict:
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in ("ids", "logits", "probs", "embeddings") if k in f}


@pytest.mark.parametrize("source", ["pool", "imagefolder"])
def test_pool_score_gives_the_same_scores(folder, teacher, pools, tmp_path, monkeypatch, source):
    got = {}
    for mode in ("memory", "stream"):
        _mode(monkeypatch, mode)
        pool = str(pools[mode]) if source == "pool" else f"imagefolder:{folder}"
        header = score_pool(pool, teacher, tmp_path / f"{mode}.scores.h5", batch_size=4)
        got[mode] = (_read_scores(tmp_path / f"{mode}.scores.h5"), header["pool_fingerprint"])
    (a, fa), (b, fb) = got["memory"], got["stream"]
    assert fa == fb and set(a) == {"ids", "logits", "probs", "embeddings"}
    assert all(np.array_equal(a[k], b[k]) for k in a) and len(a["ids"]) == 26


@pytest.mark.parametrize("detector", ["pixels", "descriptor-1", "descriptor-2", "teacher"])
def test_pool_dedup_keeps_the_same_ids(folder, teacher, pools, tmp_path, monkeypatch, detector):
    test = f"imagefolder:{folder}"
    got = {}
    for mode in ("memory", "stream"):
        _mode(monkeypatch, mode)
        out = tmp_path / f"{mode}.dedup.pool.h5"
        report = dedup_pool(pools[mode], teacher, out, test_dataset=test, detector=detector)
        _mode(monkeypatch, "memory")
        got[mode] = (load_pool(out).ids.numpy(), read_dedup_record(out), report)
    (ka, ra, pa), (kb, rb, pb) = got["memory"], got["stream"]
    assert np.array_equal(ka, kb) and pa["out_fingerprint"] == pb["out_fingerprint"]
    assert all(np.array_equal(ra[k], rb[k]) for k in ("dropped_ids", "reason", "matched_id", "distance"))
    if detector == "pixels":  # the planted copies are what was dropped
        assert pa["dropped_test_contamination"] == 1 and pa["dropped_in_pool_duplicates"] == 1
    if detector.startswith("descriptor-"):  # learned on 14 images: the planted copies are dropped, maybe a look-alike too
        test_drop, pool_drop = (ra["dropped_ids"][ra["reason"] == r].tolist() for r in (DROP_TEST, DROP_IN_POOL))
        assert 16 in test_drop and len(pool_drop) >= 1


@pytest.mark.parametrize("detector", ["pixel-align-1", "descriptor-1", "descriptor-2"])
def test_contamination_check_flags_the_same_samples(folder, pools, monkeypatch, detector):
    reports = {}
    for mode in ("memory", "stream"):
        _mode(monkeypatch, mode)
        reports[mode] = check_file(pools[mode], f"imagefolder:{folder}", detector, record=False)
    a, b = (reports[m].parts[0] for m in ("memory", "stream"))
    assert a.flagged_ids == b.flagged_ids
    assert 8 + 8 in a.flagged_ids  # apple's 900.png, after zebra's 8 and apple's 000..007
    if detector == "pixel-align-1":  # the descriptor learned on 14 images may flag a look-alike too
        assert a.flagged_ids == [8 + 8]
    assert a.matched_ids == b.matched_ids and reports["stream"].content == reports["memory"].content


CONFIGS = {
    "random": {"balanced": False},
    "kd3": {"epochs": 2, "batch_size": 8, "student": "convnet-bn", "student_width": 4, "augmentation": "none",
            "tau": 0.1, "score_batch_size": 4},
}


@pytest.mark.parametrize("method", SELECTORS.names())
def test_every_selector_selects_the_same_ids(pools, teacher, tmp_path, monkeypatch, method):
    config = {"batch_size": 4, **CONFIGS.get(method, {})} if method != "random" else CONFIGS["random"]
    if method not in CONFIGS:
        config["steps_per_label"] = 0.0
        config["min_steps"] = 3
    selected = {}
    for mode in ("memory", "stream"):
        _mode(monkeypatch, mode)
        out = tmp_path / f"{method}-{mode}.sel.h5"
        run_selector(method, f"pool:{pools[mode]}", [] if method == "random" else [str(teacher)], 6, config, seed=0,
                     out=out)
        selected[mode] = read_selection(out)
    a, b = selected["memory"], selected["stream"]
    assert 1 <= len(a) <= 6 and np.array_equal(a.ids, b.ids) and a.pool["fingerprint"] == b.pool["fingerprint"]
    assert np.array_equal(np.nan_to_num(a.score), np.nan_to_num(b.score))
