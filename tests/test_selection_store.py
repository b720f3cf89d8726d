"""The `.sel.h5` selection file: round trip, refusals, and resolving ids against a pool."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from helpers import edit

from ddkit.data.base import DatasetInfo, ImageDataset, Normalization
from ddkit.errors import FileFormatError, IncompatibleError, InvalidInput, OutputExists
from ddkit.store import (
    DistilledDataset,
    Selection,
    add_result,
    describe,
    info_dict,
    pool_record,
    read_results,
    read_selection,
    resolve_selection,
    validate_file,
    write_selection,
)
from ddkit.store.selection import ids_to_positions


def make_pool(n: int = 30, seed: int = 0) -> ImageDataset:
    """A pool whose sample ids are not its positions (ids 100, 103, 106, ...)."""
    info = DatasetInfo("toy-pool", ("a", "b", "c"), (1, 6, 6), Normalization((0.5,), (0.5,)))
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 6, 6), dtype=torch.uint8, generator=g)
    return ImageDataset(info, "train", images, torch.arange(n) % 3, ids=100 + 3 * torch.arange(n))


def make_selection(dataset: ImageDataset, ids=(127, 100, 142, 103), **overrides) -> Selection:
    n = len(ids)
    fields = dict(
        method="kcenter", method_version="1", config={"metric": "l2"}, seed=7,
        pool=pool_record(dataset), ids=np.array(ids), score=np.linspace(1, 0, n),
        round=np.arange(n) // 2, extra={"min_distance": np.linspace(3, 1, n)},
        teachers=[{"arch": "convnet", "sha256": "cd" * 32}],
    )
    fields.update(overrides)
    return Selection(**fields)


def test_selection_round_trip(tmp_path):
    pool = make_pool()
    sel = make_selection(pool)
    path = tmp_path / "pick.sel.h5"
    digest = write_selection(path, sel)
    back = read_selection(path, verify=True)
    assert back.content_sha256 == digest and sel.content_sha256 == ""
    for name in ("method", "method_version", "config", "seed", "pool", "teachers"):
        assert getattr(back, name) == getattr(sel, name), name
    for name in ("ids", "score", "rank", "round"):
        np.testing.assert_array_equal(getattr(back, name), getattr(sel, name))
        assert getattr(back, name).dtype == getattr(sel, name).dtype
    np.testing.assert_array_equal(back.rank, np.arange(4))  # default: pick order
    np.testing.assert_array_equal(back.extra["min_distance"], sel.extra["min_distance"])
    assert back.created.endswith("Z") and back.pool["size"] == 30
    with h5py.File(path) as f:
        assert f.attrs["format"] == "ddkit.selection" and f.attrs["content_sha256"] == digest


def test_duplicate_ids_and_ragged_arrays_are_refused_at_write(tmp_path):
    pool = make_pool()
    with pytest.raises(InvalidInput, match="more than once \\(e.g. 100\\)"):
        write_selection(tmp_path / "dup.sel.h5", make_selection(pool, ids=(100, 103, 100)))
    with pytest.raises(InvalidInput, match="min_distance has shape"):
        write_selection(tmp_path / "rag.sel.h5", make_selection(pool, extra={"min_distance": np.ones(3)}))
    with pytest.raises(InvalidInput, match="pool record lacks split, size"):
        write_selection(tmp_path / "pool.sel.h5", make_selection(pool, pool={"name": "toy-pool"}))
    with pytest.raises(InvalidInput, match="keeps no samples"):
        write_selection(tmp_path / "empty.sel.h5", make_selection(pool, ids=()))
    assert list(tmp_path.iterdir()) == []


def test_existing_selection_needs_overwrite(tmp_path):
    pool = make_pool()
    path = tmp_path / "pick.sel.h5"
    write_selection(path, make_selection(pool))
    with pytest.raises(OutputExists):
        write_selection(path, make_selection(pool, seed=8))
    write_selection(path, make_selection(pool, seed=8), overwrite=True)
    assert read_selection(path).seed == 8


def test_resolve_against_the_pool_keeps_pick_order(tmp_path):
    pool = make_pool()
    path = tmp_path / "pick.sel.h5"
    write_selection(path, make_selection(pool))
    kept = resolve_selection(path, pool)
    positions = [9, 0, 14, 1]  # id 100 + 3·position
    assert torch.equal(kept.ids, torch.tensor([127, 100, 142, 103]))
    assert torch.equal(kept.images, pool.images[positions]) and torch.equal(kept.labels, pool.labels[positions])
    assert "kcenter selection of 4" in kept.source


def test_resolve_loads_the_recorded_pool_by_name(tmp_path, monkeypatch):
    pool = make_pool()
    calls = []
    monkeypatch.setattr("ddkit.data.load_dataset", lambda name, split: calls.append((name, split)) or pool)  # looked up when resolving
    kept = resolve_selection(make_selection(pool))
    assert calls == [("toy-pool", "train")] and len(kept) == 4


def test_a_changed_pool_is_refused(tmp_path):
    pool = make_pool()
    sel = make_selection(pool)
    changed = make_pool()
    changed.images[5, 0, 0, 0] ^= 1  # one pixel differs
    with pytest.raises(IncompatibleError, match="the pool changed since selection"):
        resolve_selection(sel, changed)
    with pytest.raises(IncompatibleError, match="the pool changed since selection"):
        resolve_selection(sel, pool.subset(torch.arange(29)))


def test_unknown_ids_and_ambiguous_pools_are_refused():
    pool_ids = np.array([5, 1, 9])
    np.testing.assert_array_equal(ids_to_positions(pool_ids, np.array([9, 5])), [2, 0])
    with pytest.raises(IncompatibleError, match="2 selected ids are not in the pool \\(e.g. 4, 10\\)"):
        ids_to_positions(pool_ids, np.array([4, 1, 10]))
    with pytest.raises(IncompatibleError, match="duplicate sample ids"):
        ids_to_positions(np.array([1, 1]), np.array([1]))


def test_read_refusals(tmp_path):
    pool = make_pool()
    path = tmp_path / "pick.sel.h5"
    write_selection(path, make_selection(pool))
    with pytest.raises(FileFormatError, match="is a ddkit selection file \\(.sel.h5\\), not a ddkit distilled dataset"):
        DistilledDataset(path)
    with edit(path) as f:
        f["score"][0] = 42.0
    with pytest.raises(FileFormatError, match="content hash mismatch"):
        read_selection(path)
    with edit(path) as f:
        f.attrs["schema"] = 3
    with pytest.raises(FileFormatError, match="pip install -U ddkit"):
        read_selection(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError, match="is damaged"):
        read_selection(path)


def test_duplicate_ids_in_a_stored_file_are_refused_on_read(tmp_path):
    pool = make_pool()
    path = tmp_path / "pick.sel.h5"
    write_selection(path, make_selection(pool))
    with edit(path) as f:
        f["ids"][1] = f["ids"][0]
    with pytest.raises(FileFormatError, match="more than once"):
        read_selection(path, verify=False)


def test_results_validate_and_describe_work_on_selections(tmp_path):
    pool = make_pool()
    path = tmp_path / "pick.sel.h5"
    digest = write_selection(path, make_selection(pool))
    card = {"result": {"mean": 0.40, "std": 0.01}, "random_baseline": {"mean": 0.35}, "content_sha256": digest}  # fractions
    add_result(path, "convnet-cpu", card)
    assert read_results(path) == {"convnet-cpu": card}
    report = validate_file(path)
    assert report.ok and report.kind == "ddkit.selection", str(report)
    assert info_dict(path)["content_sha256"] == digest and info_dict(path)["kept"] == 4
    text = describe(path)
    assert "kept        4 samples, over 2 rounds (round 0: " in text and "+5.00" in text
