"""Pool scores: sharded teacher inference into a chunked HDF5 file (equal to direct inference, the
same file from 2 gloo processes as from 1, resumable from its shards), the file as precomputed
teacher logits (`select` / `active-learn --teacher-logits`), and greedy k-center streamed from it
(equal to k-center on the in-memory array)."""

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from helpers import one_thread, run_cli  # noqa: F401 (one_thread: autouse)

from ddkit import index
from ddkit.data import load_dataset
from ddkit.data.poolfile import load_pool
from ddkit.errors import FileFormatError, IncompatibleError, InvalidInput, OutputExists
from ddkit.models import create_model
from ddkit.models.teacher import load_teacher, save_teacher
from ddkit.pools import scores as scores_mod
from ddkit.pools.build import build_pool, dataset_part
from ddkit.pools.embed import teacher_embeddings
from ddkit.pools.kcenter import kcenter_from_scores, kcenter_selection
from ddkit.pools.logits import load_teacher_logits, teacher_pool_logits
from ddkit.pools.scores import read_scores_header, score_pool, shard_grid
from ddkit.selectors import run_selector
from ddkit.store import read_selection

BATCH = 48  # does not divide the 400-image pool: the last batch and shard are short




@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A pool file built from procedural/train (small gzip chunks) and an untrained BN teacher."""
    root = tmp_path_factory.mktemp("scores")
    train = load_dataset("procedural", "train")
    save_teacher(root / "t.safetensors", create_model("convnet-bn", 1, 16, 10, seed=0, width=8).eval(), train.info)
    build_pool(root / "p.pool.h5", [dataset_part(train)], train.info, chunk_rows=64)
    return root


@pytest.fixture(scope="module")
def scored(files):
    """The pool scored with pooled embeddings and probabilities."""
    score_pool(files / "p.pool.h5", files / "t.safetensors", files / "s.h5", batch_size=BATCH)
    return files / "s.h5"


def _read(path) -> dict:
    with h5py.File(path, "r") as f:
        return {name: f[name][()] for name in f}


def test_scores_equal_direct_teacher_inference(files, scored):
    pool, teacher = load_pool(files / "p.pool.h5"), load_teacher(files / "t.safetensors")
    got = _read(scored)
    assert len(shard_grid(len(pool), BATCH)) > 2, "several shards are exercised"
    np.testing.assert_array_equal(got["ids"], pool.ids.numpy())
    logits = teacher_pool_logits(teacher, pool, torch.device("cpu")).numpy()
    np.testing.assert_array_equal(got["logits"], logits)
    np.testing.assert_array_equal(got["probs"], torch.softmax(torch.from_numpy(logits), -1).numpy())
    np.testing.assert_array_equal(got["embeddings"], teacher_embeddings(teacher, pool.images, pool.info.normalization, "pooled"))
    np.testing.assert_allclose(np.linalg.norm(got["embeddings"], axis=1), 1.0, rtol=1e-5)
    header = read_scores_header(scored)
    assert header["pool_fingerprint"] == pool.fingerprint() == header["pool"]["fingerprint"]
    assert header["pool"]["ids_sha256"] == pool.ids_sha256() and header["pool"]["name"] == pool.info.name
    assert header["teacher_sha256"] == teacher.header.tensors_sha256 == header["teacher"]["sha256"]
    assert header["embedding"] == "pooled" and header["format"] == "ddkit.pool-scores"
    with h5py.File(scored, "r") as f:
        assert f["logits"].chunks is not None and f["embeddings"].dtype == np.float32
    assert not (files / "s.h5.work").exists()
    # `map` embeddings, no probabilities
    score_pool(files / "p.pool.h5", files / "t.safetensors", files / "map.h5", embedding="map", probs=False, batch_size=BATCH)
    got = _read(files / "map.h5")
    assert "probs" not in got
    np.testing.assert_array_equal(got["embeddings"], teacher_embeddings(teacher, pool.images, pool.info.normalization, "map"))


def test_streamed_pool_file_equals_in_memory_dataset(files, scored, tmp_path):
    """Scoring the pool file (read in row blocks) and the in-memory dataset it was built from give
    the same rows; each file records its own pool, and the logits only fit their own pool."""
    score_pool("procedural", files / "t.safetensors", tmp_path / "mem.h5", batch_size=BATCH)
    a, b = _read(scored), _read(tmp_path / "mem.h5")
    for name in ("ids", "logits", "probs", "embeddings"):
        np.testing.assert_array_equal(a[name], b[name])
    data = load_dataset("procedural", "train")
    assert read_scores_header(tmp_path / "mem.h5")["pool"]["fingerprint"] == data.fingerprint()
    assert load_teacher_logits(tmp_path / "mem.h5", data)[0].shape == (len(data), 10)
    with pytest.raises(IncompatibleError, match="different pool"):
        load_teacher_logits(tmp_path / "mem.h5", load_pool(files / "p.pool.h5"))


def test_resume_reuses_whole_shards_of_this_run(files, scored, tmp_path, monkeypatch):
    out = tmp_path / "r.h5"
    pool, teacher = files / "p.pool.h5", files / "t.safetensors"

    def killed(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(scores_mod, "_write_final", killed)  # killed after scoring, before the file
    with pytest.raises(RuntimeError, match="killed"):
        score_pool(pool, teacher, out, batch_size=BATCH)
    monkeypatch.undo()
    assert not out.exists(), "a killed run leaves no partial final file"
    shards = sorted((tmp_path / "r.h5.work").glob("rows-*.h5"))
    assert len(shards) == len(shard_grid(400, BATCH))
    shards[0].unlink()  # lost
    with h5py.File(shards[1], "r+") as f:  # from another run
        f.attrs["run"] = f.attrs["run"].replace('"batch_size": 48', '"batch_size": 47')

    calls = []
    original = scores_mod._score_shards
    monkeypatch.setattr(scores_mod, "_score_shards", lambda *a: (calls.extend(a[3]), original(*a)))
    score_pool(pool, teacher, out, batch_size=BATCH, resume=True)
    assert sorted(calls) == shard_grid(400, BATCH)[:2], "only the lost and the foreign shard are scored again"
    a, b = _read(scored), _read(out)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "r.h5.work").exists()


@pytest.mark.slow
def test_two_gloo_processes_write_the_same_file(files, scored, tmp_path):
    """`ddkit pool score --nproc 2` (torchrun, gloo): contiguous shards per rank, rank 0 merges; the
    same datasets and attributes (but the creation time) as one process."""
    env = {**os.environ, "DDKIT_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "ddkit", "pool", "score", str(files / "p.pool.h5"), "--teacher", str(files / "t.safetensors"),
            "--batch-size", str(BATCH)]
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    single = subprocess.run(args + ["--out", str(one)], env=env, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    multi = subprocess.run(args + ["--out", str(two), "--nproc", "2"], env=env, capture_output=True, text=True)
    assert multi.returncode == 0, multi.stderr
    a, b = _read(one), _read(two)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    ha, hb = read_scores_header(one), read_scores_header(two)
    assert {k: v for k, v in ha.items() if k != "created"} == {k: v for k, v in hb.items() if k != "created"}
    assert not (tmp_path / "two.h5.work").exists()


def test_kcenter_streamed_from_the_file_equals_in_memory(files, tmp_path, monkeypatch):
    """Small chunks so the streamed pass spans several blocks; picks and distances are identical to
    `index.kcenter` on the in-memory array, with and without labeled centers."""
    monkeypatch.setattr(scores_mod, "CHUNK_BYTES", 64 * 4 * 8)  # 64-row chunks of 8-d embeddings
    path = tmp_path / "small-chunks.h5"
    score_pool(files / "p.pool.h5", files / "t.safetensors", path, batch_size=BATCH)
    emb = _read(path)["embeddings"]
    with h5py.File(path, "r") as f:
        assert f["embeddings"].chunks == (64, 8)
    first, _ = kcenter_from_scores(path, "embeddings", 7, tmp_path / "a.sel.h5", seed=3, block_rows=128)
    ref = index.kcenter(emb, 7, seed=3, block_rows=128)
    np.testing.assert_array_equal(first.ids, ref.indices)  # ids are rows here
    np.testing.assert_array_equal(first.extra["min_distance"], ref.min_distance)
    again = kcenter_selection(path, "embeddings", 5, labeled=read_selection(tmp_path / "a.sel.h5"), block_rows=128)
    ref2 = index.kcenter(emb, 5, center_positions=ref.indices, block_rows=128)
    np.testing.assert_array_equal(again.ids, np.concatenate([ref.indices, ref2.indices]))
    assert again.round.tolist() == [1] * 7 + [2] * 5 and again.pool == read_scores_header(path)["pool"]
    np.testing.assert_array_equal(again.score[7:], ref2.min_distance)


def test_select_pcoreset_teacher_reads_the_file(files, scored, tmp_path, capsys):
    """`ddkit select --teacher-logits SCORES.h5` on the pool: PCoreSet-teacher (k-center on the
    teacher's probabilities in memory) picks what `ddkit pool kcenter --field probs` picks."""
    pool = f"pool:{files / 'p.pool.h5'}"
    code, _, err = run_cli(capsys, "select", "--method", "pcoreset-teacher", "--pool", pool, "--teacher-logits", scored,
                           "--budget", 6, "--out", tmp_path / "pc.sel.h5")
    assert code == 0, err
    code, out, err = run_cli(capsys, "pool", "kcenter", scored, "--field", "probs", "--budget", 6, "--out", tmp_path / "kc.sel.h5")
    assert code == 0 and "6 picks" in out, err
    a, b = read_selection(tmp_path / "pc.sel.h5"), read_selection(tmp_path / "kc.sel.h5")
    np.testing.assert_array_equal(a.ids, b.ids)
    assert a.pool == b.pool and a.teachers[0]["arch"] == b.teachers[0]["arch"] == "convnet-bn"
    assert a.teachers[0]["sha256"] == b.teachers[0]["sha256"]  # the scores file's teacher, not a hash of the file
    # the k-center selection is an ordinary selection of the pool: the next round can use it as --labeled
    code, _, err = run_cli(capsys, "select", "--method", "pcoreset-teacher", "--pool", pool, "--teacher-logits", scored,
                           "--budget", 2, "--labeled", tmp_path / "kc.sel.h5", "--out", tmp_path / "next.sel.h5")
    assert code == 0, err
    assert read_selection(tmp_path / "next.sel.h5").ids[:6].tolist() == b.ids.tolist()


def test_active_learn_reads_the_file(files, tmp_path, capsys):
    scores = tmp_path / "procedural.scores.h5"
    code, _, err = run_cli(capsys, "pool", "score", "procedural", "--teacher", files / "t.safetensors", "--out", scores,
                           "--embedding", "none", "--batch-size", 128)
    assert code == 0, err
    code, out, err = run_cli(capsys, "active-learn", "--pool", "procedural", "--teacher-logits", scores, "--methods",
                             "pcoreset-teacher", "--rounds", 1, "--seeds", 1, "--distill", "on", "--config", "width=4",
                             "--config", "depth=2", "--config", "steps_per_label=0.2", "--config", "min_steps=2",
                             "--out", tmp_path / "al")
    assert code == 0, err
    sel = read_selection(tmp_path / "al" / "selections" / "pcoreset-teacher-kd-seed0.sel.h5")
    assert sel.teachers[0]["arch"] == "convnet-bn" and sel.teachers[0]["logits_from"] == scores.name


def test_refusals(files, scored, tmp_path, capsys):
    pool, teacher = files / "p.pool.h5", files / "t.safetensors"
    rgb = tmp_path / "rgb.safetensors"
    save_teacher(rgb, create_model("convnet-bn", 3, 16, 10, seed=0, width=8).eval(), load_dataset("procedural:3").info)
    with pytest.raises(IncompatibleError, match="shape"):
        score_pool(pool, rgb, tmp_path / "x.h5")
    with pytest.raises(FileFormatError, match="does not exist"):
        score_pool(tmp_path / "missing.pool.h5", teacher, tmp_path / "x.h5")
    with pytest.raises(OutputExists):
        score_pool(pool, teacher, scored)
    with pytest.raises(InvalidInput, match="embedding"):
        score_pool(pool, teacher, tmp_path / "x.h5", embedding="mean")
    assert not (tmp_path / "x.h5").exists()
    code, _, err = run_cli(capsys, "pool", "score", pool, "--teacher", rgb, "--out", tmp_path / "x.h5")
    assert code == 2 and "fix:" in err
    score_pool(pool, teacher, tmp_path / "bare.h5", embedding=None, probs=False, batch_size=256)
    with pytest.raises(FileFormatError, match="no /embeddings"):
        kcenter_selection(tmp_path / "bare.h5", "embeddings", 3)
    with pytest.raises(InvalidInput, match="budget"):
        kcenter_selection(scored, "probs", 401)
    with pytest.raises(FileFormatError, match="not a ddkit pool-scores"):
        kcenter_selection(pool, "probs", 3)
    run_selector("random", "procedural", [], 10, {"balanced": False}, out=tmp_path / "other.sel.h5")
    with pytest.raises(IncompatibleError, match="another pool"):
        kcenter_selection(scored, "probs", 3, labeled=read_selection(tmp_path / "other.sel.h5"))
