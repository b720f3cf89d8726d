"""Pools: build/load round trip (stable ids, fingerprint, labels only aside), tamper detection, the
pool:PATH dataset, and dedup catching planted exact and near copies (in the pool and of TEST images)
while leaving distinct images."""

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from helpers import one_thread, run_cli  # noqa: F401 (one_thread: autouse)

from ddkit.data import load_dataset
from ddkit.data.poolfile import load_pool, read_aside, read_dedup_record
from ddkit.errors import DdkitError, FileFormatError, InvalidInput, OutputExists
from ddkit.models import create_model
from ddkit.models.teacher import save_teacher
from ddkit.pools.build import PoolPart, build_pool, dataset_part
from ddkit.pools.dedup import DROP_IN_POOL, DROP_TEST, dedup_pool

ROOT = Path(__file__).resolve().parents[1]



@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    data = load_dataset("procedural", "train")
    path = tmp_path_factory.mktemp("pools") / "teacher.safetensors"
    # An untrained BN net: its last feature map still keeps each image's layout, which is what
    # near-duplicate search needs; training adds nothing to this test but time.
    save_teacher(path, create_model("convnet-bn", 1, 16, 10, seed=0, width=8).eval(), data.info)
    return path


def test_build_and_load_round_trip(tmp_path):
    train = load_dataset("procedural", "train")
    noise = torch.rand(7, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "p.pool.h5"
    summary = build_pool(path, [dataset_part(train), PoolPart("noise", noise)], train.info, name="demo")
    assert summary.size == len(train) + 7 and summary.origins == {"procedural/train": len(train), "noise": 7}
    pool = load_pool(path)
    assert pool.ids.tolist() == list(range(len(train) + 7))
    assert torch.equal(pool.images[: len(train)], train.images)
    assert pool.fingerprint() == summary.fingerprint and pool.info.class_names == train.info.class_names
    assert not pool.labeled and int(pool.labels.abs().sum()) == 0, "a pool dataset carries no labels"
    aside = read_aside(path)
    assert aside["labels"][: len(train)].tolist() == train.labels.tolist() and (aside["labels"][len(train):] == -1).all()
    assert list(aside["origin_name"][-7:]) == ["noise"] * 7
    # as a registered dataset: pool:PATH (train) and the task's test split
    again = load_dataset(f"pool:{path}")
    assert again.fingerprint() == pool.fingerprint() and len(again) == len(pool)
    assert len(load_dataset(f"pool:{path}", "test")) == len(load_dataset("procedural", "test"))
    with pytest.raises(OutputExists):
        build_pool(path, [dataset_part(train)], train.info)


def test_pool_source_needs_only_the_evaluator(tmp_path):
    """`pool:PATH` is a dataset source of `ddkit.data`: a process that imports just `ddkit.evaluate`
    resolves it, and loading a pool imports no model, index or pool-scoring code."""
    train = load_dataset("procedural", "train")
    build_pool(tmp_path / "p.pool.h5", [dataset_part(train)], train.info)
    code = ("import sys, ddkit.evaluate; from ddkit.data import load_dataset; "
            f"assert len(load_dataset('pool:{tmp_path / 'p.pool.h5'}')) == {len(train)}; "
            "import ddkit.data; assert not [m for m in sys.modules if m.startswith(('ddkit.pools', 'ddkit.index'))]")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_changed_pixels_are_detected(tmp_path):
    train = load_dataset("procedural", "train")
    path = tmp_path / "p.pool.h5"
    build_pool(path, [dataset_part(train)], train.info)
    with h5py.File(path, "r+") as h5:
        h5["images"][3, 0, 0, 0] = (int(h5["images"][3, 0, 0, 0]) + 1) % 256
    with pytest.raises(FileFormatError, match="fingerprint"):
        load_pool(path)


def test_bad_parts_are_refused(tmp_path):
    train = load_dataset("procedural", "train")
    with pytest.raises(InvalidInput, match="shape"):
        build_pool(tmp_path / "x.pool.h5", [PoolPart("rgb", torch.rand(2, 3, 16, 16))], train.info)
    with pytest.raises(InvalidInput, match="origin"):
        build_pool(tmp_path / "x.pool.h5", [dataset_part(train, "a"), dataset_part(train, "a")], train.info)
    assert not (tmp_path / "x.pool.h5").exists()


def _planted_pool(tmp_path):
    """procedural train + exact and lightly perturbed copies of test images + in-pool copies."""
    train, test = load_dataset("procedural", "train"), load_dataset("procedural", "test")
    g = torch.Generator().manual_seed(1)
    x = test.pixels(slice(0, 12))
    near = (x ** 1.05 + 0.004 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    parts = [dataset_part(train, "clean"), PoolPart("test-exact", test.images[12:24]), PoolPart("test-near", near),
             PoolPart("pool-copy", train.images[:8])]
    path = tmp_path / "planted.pool.h5"
    build_pool(path, parts, train.info)
    return path, len(train)


def test_dedup_catches_planted_copies_and_leaves_distinct_images(tmp_path, teacher_file):
    path, n_train = _planted_pool(tmp_path)
    out = tmp_path / "clean.pool.h5"
    report = dedup_pool(path, teacher_file, out, threshold=0.05, detector="teacher")  # this untrained net: distinct ≥ 0.067, copies ≤ 0.04
    aside = read_aside(path)
    origin = aside["origin_name"]
    record = read_dedup_record(out)
    dropped = dict(zip(record["dropped_ids"].tolist(), record["reason"].tolist()))
    test_copies = {i for i in aside["ids"] if origin[i] in ("test-exact", "test-near")}
    assert {i for i, r in dropped.items() if r == DROP_TEST} == test_copies
    # the later copy of each train image goes; the original (smaller id) stays
    assert {i for i, r in dropped.items() if r == DROP_IN_POOL} == set(range(n_train + 24, n_train + 32))
    assert report["dropped_test_contamination"] == 24 and report["dropped_in_pool_duplicates"] == 8
    assert report["size_after"] == n_train
    kept = load_pool(out)
    assert kept.ids.tolist() == list(range(n_train)), "every distinct image is kept, ids unchanged"
    np.testing.assert_array_equal(read_aside(out)["labels"], aside["labels"][:n_train])
    # what each drop matched: the test image for contamination, the original for in-pool copies
    match = dict(zip(record["dropped_ids"].tolist(), record["matched_id"].tolist()))
    assert all(match[n_train + i] == 12 + i for i in range(12))
    assert all(match[n_train + 24 + i] == i for i in range(8))


def test_pool_cli_build_dedup_and_kd3_select(tmp_path, teacher_file, capsys):
    pool = tmp_path / "cli.pool.h5"
    code, out, err = run_cli(capsys, "pool", "build", "--task", "procedural", "--from", "procedural@train", "--from",
                             "procedural@test", "--out", pool)
    assert code == 0, err
    assert "600 images" in out
    clean = tmp_path / "cli.dedup.pool.h5"
    code, out, err = run_cli(capsys, "pool", "dedup", pool, "--detector", "teacher", "--teacher", teacher_file, "--threshold", 0.05, "--out", clean)
    assert code == 0, err
    assert "dropped 200 near-copies of procedural test images" in out
    student = tmp_path / "student.safetensors"
    sel = tmp_path / "kd3.sel.h5"
    code, out, err = run_cli(capsys, "select", "--method", "kd3", "--pool", f"pool:{clean}", "--teacher", teacher_file,
                             "--budget", 50, "--config", "epochs=1", "--config", "student=convnet-bn", "--config", "student_width=4",
                             "--config", "tau=0.1", "--config", f"student_out={student}", "--out", sel)
    assert code == 0, err
    from ddkit.data import load_dataset
    from ddkit.store import read_selection, resolve_selection

    with pytest.raises(DdkitError, match="path named inside the file"):  # the file's pool:PATH is never opened
        resolve_selection(read_selection(sel))
    chosen = resolve_selection(read_selection(sel), load_dataset(f"pool:{clean}"))
    assert 1 <= len(chosen) <= 50 and chosen.ids.max() < 400
    code, out, err = run_cli(capsys, "teacher", "eval", student, "--dataset", "procedural")
    assert code == 0 and "kd3-student on procedural/test" in out, err


def test_dedup_refuses_bad_options_before_writing(tmp_path, teacher_file):
    path, _ = _planted_pool(tmp_path)
    with pytest.raises(InvalidInput, match="threshold"):
        dedup_pool(path, teacher_file, tmp_path / "o.pool.h5", threshold=-1, detector="teacher")
    with pytest.raises(InvalidInput, match="embedding"):
        dedup_pool(path, teacher_file, tmp_path / "o.pool.h5", embedding="pixels", detector="teacher")
    assert not (tmp_path / "o.pool.h5").exists()
