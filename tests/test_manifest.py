"""The compact manifest (layout version 2): the fingerprint and the listing signature of an existing
folder are the values the version-1 code computed (frozen below), a version-1 cache is converted
without re-decoding, the path table round-trips any path, and a row costs what the layout says."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from ddkit.data import load_dataset
from ddkit.data.imagefolder import list_split, read_class_map, write_class_map
from ddkit.data.manifest import DIGEST_BYTES, MANIFEST_VERSION, PathTable, _cache_path, index_split

CLASSES = ["zèbre", "apple", "b"]
FILES = {
    "train": {"zèbre": ["0.pgm", "ünï code.pgm", "2.pgm"], "apple": ["a.pgm", "b.pgm"], "b": ["x.pgm", "y.pgm", "z.pgm"]},
    "test": {"zèbre": ["t0.pgm"], "apple": ["t1.pgm"], "b": ["t2.pgm", "t3.pgm"]},
}
EPOCH_NS = 1_700_000_000_000_000_000

# Computed once with the version-1 code (main at 8d1ab1b, before the compact layout) on `build_folder`:
# the compact layout must give the same values, or every file made from an existing folder (its ids
# hash) and every cached index (its signature) would stop matching.
FROZEN = {
    "train": ("b4fa13fb733e449e59591c9199bbdefba9c58791ba65b31ba06b57b89219ccbc",
              "6fcf1f3ff3cd5adc02f47fce6d540e66ceb0c634fe971fe442efbfd9f3cc5233"),
    "test": ("409965d7aa790b7164254aa802749a214bcfb748638ea67b3c585081d011cf90",
             "ff5d9660a9ed8eb822696d3566d0695e0fe1a846f1fe6883809f9f0eb318d13c"),
}


def pgm(side: int, seed: int) -> bytes:
    """A binary PGM written byte by byte: no encoder, so the file (and its hash) is the same everywhere."""
    return b"P5\n%d %d\n255\n" % (side, side) + bytes((seed * 7 + i * 13) % 256 for i in range(side * side))


def build_folder(root: Path) -> Path:
    """Non-ASCII class and file names, a file name with a space, one unreadable file, fixed mtimes."""
    k = 0
    for split, classes in FILES.items():
        for name, files in classes.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for f in files:
                k += 1
                path = root / split / name / f
                path.write_bytes(pgm(6, k))
                os.utime(path, ns=(EPOCH_NS + k, EPOCH_NS + k))
    broken = root / "train" / "b" / "broken.pgm"  # skipped, and listed as skipped
    broken.write_bytes(pgm(6, 99)[:20])
    os.utime(broken, ns=(EPOCH_NS, EPOCH_NS))
    write_class_map(root, CLASSES)
    return root


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("DDKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DDKIT_WORKERS", "0")
    return build_folder(tmp_path / "f").resolve()


def _index(root: Path, split: str):
    names = read_class_map(root)
    return index_split(root, split, names, None, *list_split(root, split, names))


def test_fingerprint_and_signature_are_the_version_1_values(folder):
    for split, (fingerprint, signature) in FROZEN.items():
        m = _index(folder, split)
        assert (m.fingerprint(), m.signature) == (fingerprint, signature)
    m = _index(folder, "train")  # from the cache this time
    assert m.fingerprint() == FROZEN["train"][0] and len(m) == 8 and m.skipped[0][0] == "train/b/broken.pgm"
    assert m.paths[2] == "train/zèbre/ünï code.pgm" and m.digests.shape == (8, DIGEST_BYTES)
    assert load_dataset(f"imagefolder:{folder}", "train").info.normalization.mean == (0.506754,)  # as version 1


def _write_version_1(m, path: Path) -> None:
    """The version-1 cache layout, as the version-1 code wrote it (keys, dtypes, meta)."""
    meta = {"version": 1, "root": m.root, "split": m.split, "class_names": list(m.class_names),
            "fit": None, "signature": m.signature, "skipped": m.skipped}
    sums = np.zeros((len(m), 3))
    sums[:, :m.sums.shape[1]] = m.sums
    sumsq = np.zeros((len(m), 3))
    sumsq[:, :m.sumsq.shape[1]] = m.sumsq
    with open(path, "wb") as fh:
        np.savez(fh, meta=np.array(json.dumps(meta)), paths=np.array(m.paths.tolist(), dtype=str),
                 labels=m.labels, sizes=m.sizes, mtimes=m.mtimes, shapes=np.array(m.shapes, dtype=np.int64),
                 digests=np.array([bytes(d).hex() for d in m.digests], dtype="<U32"), sums=sums, sumsq=sumsq)


def test_a_version_1_cache_is_converted_not_reindexed(folder, monkeypatch, capsys):
    import ddkit.data.manifest as manifest_mod

    fresh = _index(folder, "train")
    cache = _cache_path(folder, "train")
    _write_version_1(fresh, cache)
    assert np.load(cache)["digests"].dtype == np.dtype("<U32")

    def no_decoding(*args, **kwargs):
        raise AssertionError("a version-1 cache was re-indexed")

    monkeypatch.setattr(manifest_mod, "_check", no_decoding)
    capsys.readouterr()
    converted = _index(folder, "train")
    assert "converted its cached index to the compact layout" in capsys.readouterr().err
    assert converted.fingerprint() == FROZEN["train"][0] and converted.signature == FROZEN["train"][1]
    assert converted.paths.tolist() == fresh.paths.tolist() and np.array_equal(converted.digests, fresh.digests)
    assert np.array_equal(converted.sums, fresh.sums) and converted.normalization() == fresh.normalization()
    assert json.loads(str(np.load(cache)["meta"]))["version"] == MANIFEST_VERSION  # saved in the new layout
    _index(folder, "train")
    assert "converted" not in capsys.readouterr().err


def test_a_changed_file_reuses_the_other_rows(folder, capsys):
    first = _index(folder, "train")
    path = folder / "train" / "apple" / "b.pgm"
    path.write_bytes(pgm(6, 50))
    os.utime(path, ns=(EPOCH_NS + 77, EPOCH_NS + 77))
    capsys.readouterr()
    second = _index(folder, "train")
    assert "re-indexing 2 of 9 files" in capsys.readouterr().err  # the changed one, and the broken one again
    assert second.fingerprint() != first.fingerprint()
    changed = [i for i in range(len(first)) if bytes(first.digests[i]) != bytes(second.digests[i])]
    assert changed == [4] and second.paths.tolist() == first.paths.tolist()


def test_path_table_round_trips_and_takes_rows():
    paths = ["train/a/1.png", "train/a/ünï.png", "train/bb/2.png", "top.png", "train/a/3.png"]
    table = PathTable.from_paths(paths)
    assert list(table) == paths and table.tolist() == paths and len(table) == 5
    assert table.folders == ["train/a/", "train/bb/", ""] and table[-1] == "train/a/3.png"
    assert table[np.array([4, 0])].tolist() == ["train/a/3.png", "train/a/1.png"]
    assert table[np.array([True, False, False, True, False])].tolist() == ["train/a/1.png", "top.png"]
    assert pickle.loads(pickle.dumps(table)).tolist() == paths  # travels to the decoding workers
    with pytest.raises(IndexError):
        table[5]
    assert PathTable.from_paths([]).tolist() == []


def test_a_row_costs_what_the_layout_says(folder):
    """Per row: labels, sizes, mtimes (8 B each), 16 digest bytes, two float64 sums per channel, and the path
    table's folder id (1 B here), offset (1 B here) and UTF-8 file name — the shape is held once."""
    m = _index(folder, "train")
    names = sum(len(p.rpartition("/")[2].encode()) for p in m.paths)
    per_row = 3 * 8 + DIGEST_BYTES + 2 * 8 * 1 + 1 + 1
    folders = sum(len(f.encode()) for f in m.paths.folders)
    assert m.nbytes == len(m) * per_row + names + 1 + folders + 3 * 8  # + the last offset + the shape
    assert m.shapes.shape == (8, 3) and m.shapes.strides[0] == 0
