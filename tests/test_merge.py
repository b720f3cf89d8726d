"""`ddkit merge`: independent runs combine into one file with lineage; mismatched parents are refused."""

import numpy as np
import pytest
import torch

from ddkit.data import load_dataset
from ddkit.data.base import class_balanced_indices
from ddkit.errors import IncompatibleError, InvalidInput
from ddkit.store import AdditiveComposite, DistilledDataset, DistilledSet, LogitsLabels, merge_files, write_distilled


def make(tmp_path, name, classes, seed, with_composite=True, normalization=None, teacher="t1"):
    """A small file whose images come from `classes` only (as a team distilling those classes would)."""
    source = load_dataset("procedural")
    idx = class_balanced_indices(source, 2, seed)
    idx = idx[np.isin(source.labels[idx].numpy(), classes)]
    part = source.subset(idx)
    images = part.pixels()
    n = len(images)
    composite = None
    if with_composite:
        g = torch.Generator().manual_seed(seed)
        composite = AdditiveComposite(torch.randn(2, 1, 16, 16, generator=g).numpy() * 0.1,
                                      np.array([[0, 1], [n - 2, n - 1]]), extra={"group_of": np.array([0, 1])})
    rows = n + (composite.num_instances if composite else 0)
    logits = torch.randn(rows, 10, generator=torch.Generator().manual_seed(seed + 7)).numpy()
    dset = DistilledSet.from_source(source, method="m", method_version="1", config={"classes": classes}, seed=seed,
                                    images=images, labels=part.labels, ipc=2, teachers=[{"arch": "a", "sha256": teacher}],
                                    soft={"logits": LogitsLabels(logits)}, composite=composite, normalization=normalization)
    path = tmp_path / f"{name}.ddk.h5"
    write_distilled(path, dset)
    return path


def test_merge_keeps_every_instance_and_label_row_in_order(tmp_path):
    a = make(tmp_path, "a", [0, 1, 2, 3, 4], seed=1)
    b = make(tmp_path, "b", [5, 6, 7, 8, 9], seed=2)
    out = tmp_path / "ab.ddk.h5"
    merge_files([a, b], out)
    with DistilledDataset(a) as da, DistilledDataset(b) as db, DistilledDataset(out) as dm:
        na, nb = da.num_stored, db.num_stored
        order_a = np.r_[np.arange(na), na + nb + np.arange(len(da) - na)]
        order_b = np.r_[na + np.arange(nb), na + nb + (len(da) - na) + np.arange(len(db) - nb)]
        merged = dm.pixels()
        assert len(dm) == len(da) + len(db)
        torch.testing.assert_close(merged[order_a], da.pixels(), rtol=0, atol=0)
        torch.testing.assert_close(merged[order_b], db.pixels(), rtol=0, atol=0)
        assert torch.equal(dm.labels[order_a], da.labels) and torch.equal(dm.labels[order_b], db.labels)
        logits = dm.soft["logits"].values
        assert np.array_equal(logits[order_a], da.soft["logits"].values)
        assert np.array_equal(logits[order_b], db.soft["logits"].values)
        lineage = dm.header.config["merged_from"]
        assert [p["content_sha256"] for p in lineage] == [da.content_sha256, db.content_sha256]
        assert dm.header.budget.ipc_stored == 3  # ceil((20 images + 4 compensators) / 10 classes)


def test_merge_refuses_different_parents(tmp_path):
    from ddkit.data.base import Normalization

    a = make(tmp_path, "a", [0, 1], seed=1)
    other_norm = make(tmp_path, "n", [2, 3], seed=2, normalization=Normalization((0.4,), (0.3,)))
    other_teacher = make(tmp_path, "t", [2, 3], seed=2, teacher="t2")
    for bad, what in ((other_norm, "normalization"), (other_teacher, "teachers")):
        with pytest.raises(IncompatibleError, match=what):
            merge_files([a, bad], tmp_path / "x.ddk.h5")
    assert not (tmp_path / "x.ddk.h5").exists()
    with pytest.raises(InvalidInput, match="at least two"):
        merge_files([a], tmp_path / "x.ddk.h5")
