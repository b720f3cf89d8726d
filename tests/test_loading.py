"""Using sets from Python: `ddkit.load(path)` and `DistilledDataset(..., labels="hard"|"soft")`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ddkit
from ddkit.errors import FileFormatError, InvalidInput
from ddkit.store import (
    DBRLabels,
    DistilledDataset,
    DistilledSet,
    LogitsLabels,
    Selection,
    TopKLabels,
    write_distilled,
    write_selection,
)
from ddkit.store.selection import pool_record

DATASET = "procedural"


def write(path, source, soft=None) -> None:
    idx = torch.arange(0, len(source), 20)[:20]
    dset = DistilledSet.from_source(source, method="toy", method_version="1", config={}, seed=0,
                                    images=source.images[idx], labels=source.labels[idx], ipc=2, soft=soft or {})
    write_distilled(path, dset)


def test_hard_labels_are_the_default(tmp_path, source):
    write(tmp_path / "a.ddk.h5", source)
    ds = ddkit.load(tmp_path / "a.ddk.h5")
    assert isinstance(ds, DistilledDataset) and ds.label_kind == "hard"
    x, y = ds[3]
    assert isinstance(y, int) and y == int(ds.labels[3]) and x.shape == (1, 16, 16)


def test_soft_labels_yield_the_stored_logits(tmp_path, source):
    logits = torch.randn(20, 10, generator=torch.Generator().manual_seed(0))
    write(tmp_path / "a.ddk.h5", source, {"logits": LogitsLabels(logits.numpy())})
    ds = ddkit.load(tmp_path / "a.ddk.h5", labels="soft")
    assert ds.soft_scheme == "logits"
    _, y = ds[5]
    assert y.dtype == torch.float32 and y.shape == (10,)
    assert torch.allclose(y, logits[5].half().float())
    batch_x, batch_y = next(iter(torch.utils.data.DataLoader(ds, batch_size=8)))
    assert batch_x.shape == (8, 1, 16, 16) and batch_y.shape == (8, 10)
    assert "Targets: soft (logits)" in repr(ds)


def test_topk_soft_labels_are_dense_with_zeros_elsewhere(tmp_path, source):
    indices = np.stack([np.arange(20) % 10, (np.arange(20) + 1) % 10], 1)
    values = np.full((20, 2), 0.5, dtype=np.float16)
    write(tmp_path / "a.ddk.h5", source, {"topk": TopKLabels(indices, values)})
    with DistilledDataset(tmp_path / "a.ddk.h5", labels="soft") as ds:
        _, y = ds[4]
    expected = torch.zeros(10)
    expected[[4, 5]] = 0.5
    assert torch.equal(y, expected)


def test_soft_labels_need_a_per_instance_payload(tmp_path, source):
    write(tmp_path / "hard.ddk.h5", source)
    with pytest.raises(InvalidInput, match="hard labels only"):
        DistilledDataset(tmp_path / "hard.ddk.h5", labels="soft")
    dbr = DBRLabels(np.zeros((2, 3)), np.zeros((2, 3)), protocol="none")
    write(tmp_path / "dbr.ddk.h5", source, {"dbr": dbr})
    with pytest.raises(InvalidInput, match="dbr-cpu"):
        DistilledDataset(tmp_path / "dbr.ddk.h5", labels="soft")
    with pytest.raises(InvalidInput, match="hard, soft"):
        DistilledDataset(tmp_path / "hard.ddk.h5", labels="probabilities")
    logits = LogitsLabels(np.zeros((20, 10)))
    write(tmp_path / "l.ddk.h5", source, {"logits": logits})
    with pytest.raises(InvalidInput, match="soft_scheme"):
        DistilledDataset(tmp_path / "l.ddk.h5", labels="soft", soft_scheme="topk")


def test_load_resolves_a_selection_against_its_pool(tmp_path, source):
    ids = source.ids[[3, 50, 120]].numpy()
    sel = Selection(method="toy", method_version="1", config={}, seed=0, pool=pool_record(source), ids=ids)
    write_selection(tmp_path / "s.sel.h5", sel)
    ds = ddkit.load(tmp_path / "s.sel.h5")
    assert len(ds) == 3 and [ds[i][1] for i in range(3)] == source.labels[[3, 50, 120]].tolist()
    with pytest.raises(InvalidInput, match="hard labels only"):
        ddkit.load(tmp_path / "s.sel.h5", labels="soft")


def test_load_refuses_what_is_not_a_training_set(tmp_path):
    (tmp_path / "x.ddk.h5").write_bytes(b"nothing of the sort" * 100)
    with pytest.raises(FileFormatError):
        ddkit.load(tmp_path / "x.ddk.h5")


def test_import_ddkit_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, ddkit; assert callable(ddkit.load); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
