"""Multi-formation (`/formation`, IDC/IDM): the decode by hand, its gradient, the file (budget in bytes,
schema), every consumer seeing the decoded instances (DistilledDataset, export pt / imagefolder / hf,
the evaluator, merge, show), DM synthesizing through the decode, and bad options refused before any work."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from helpers import edit, run_cli

from ddkit.data import load_dataset
from ddkit.errors import FileFormatError, IncompatibleError, InvalidInput
from ddkit.evaluate import get_protocol
from ddkit.evaluate.sources import distilled_source
from ddkit.share import ImportOptions, export_file, import_set
from ddkit.store import (
    DistilledDataset,
    DistilledSet,
    LogitsLabels,
    MultiFormation,
    info_dict,
    merge_files,
    render_grid,
    validate_file,
    write_distilled,
)
from ddkit.store.formation import cell_bounds
from ddkit.synth import run_synthesizer
from ddkit.synth.dm import DMConfig, initial_state, optimize

pytestmark = pytest.mark.usefixtures("quiet")  # no progress lines; a cache of each test's own

DATASET = "procedural:3"  # 10 classes, 3×16×16, generated (no download)
TINY_DM = {"iterations": 4, "batch_real": 8, "net_options": "depth=2,width=8,norm=instance", "checkpoint_every": 2}


def make_file(path, source, factor: int = 2, ipc: int = 2, dtype: str = "float16", soft: bool = False,
              seed: int = 0) -> str:
    g = torch.Generator().manual_seed(factor + 100 * seed)
    labels = torch.arange(10).repeat_interleave(ipc)
    images = torch.rand(10 * ipc, 3, 16, 16, generator=g)
    if dtype == "uint8":
        images = (images * 255).round().to(torch.uint8)
    formation = MultiFormation(factor) if factor > 1 else None
    n_inst = 10 * ipc * factor**2
    dset = DistilledSet.from_source(
        source, method="toy", method_version="1", config={"formation": factor}, seed=seed, images=images, labels=labels,
        ipc=ipc, formation=formation,
        soft={"logits": LogitsLabels(torch.randn(n_inst, 10, generator=g))} if soft else {},
    )
    return write_distilled(path, dset)


# -- the decode ----------------------------------------------------------------------------------


def test_cells_cover_every_pixel_once_and_the_first_ones_take_the_remainder():
    assert cell_bounds(16, 2) == [(0, 8), (8, 16)]
    assert cell_bounds(28, 3) == [(0, 10), (10, 19), (19, 28)]
    for size, n in [(28, 3), (32, 3), (16, 5), (7, 3)]:
        bounds = cell_bounds(size, n)
        assert bounds[0][0] == 0 and bounds[-1][1] == size
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))


def test_decode_by_hand_quadrants_in_row_major_order():
    """Four constant quadrants decode to four constant images, top-left, top-right, bottom-left, bottom-right."""
    x = torch.zeros(1, 1, 4, 4)
    x[..., :2, :2], x[..., :2, 2:], x[..., 2:, :2], x[..., 2:, 2:] = 0.1, 0.2, 0.3, 0.4
    out = MultiFormation(2).decode(x)
    assert out.shape == (4, 1, 4, 4)
    for k, value in enumerate([0.1, 0.2, 0.3, 0.4]):
        assert torch.allclose(out[k], torch.full((1, 4, 4), value))


def test_decode_is_bilinear_upsampling_of_each_cell():
    """A cell that is a horizontal ramp 0, 1 (2 pixels) upsampled ×2 with half-pixel centres gives
    0, 0.25, 0.75, 1 (bilinear, align_corners=False: the edge pixels are clamped)."""
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, :2, 0], x[0, 0, :2, 1] = 0.0, 1.0
    first = MultiFormation(2).decode(x)[0, 0]
    assert torch.allclose(first[0], torch.tensor([0.0, 0.25, 0.75, 1.0]))


@pytest.mark.parametrize("factor, shape", [(1, (16, 16)), (2, (16, 16)), (3, (16, 16)), (3, (28, 28)), (2, (28, 20))])
def test_decode_shapes_and_decode_cells_agrees(factor, shape):
    f = MultiFormation(factor)
    x = torch.rand(5, 3, *shape)
    out = f.decode(x)
    assert out.shape == (5 * factor**2, 3, *shape)
    rows, cells = f.split(np.arange(len(out)))
    assert torch.allclose(f.decode_cells(x[rows], cells), out)
    assert f.encode(out).shape == x.shape


def test_decode_is_differentiable_and_commutes_with_normalization(source):
    f = MultiFormation(3)
    x = torch.rand(2, 1, 7, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f.decode, (x,))
    norm = source.info.normalization
    y = torch.rand(3, 3, 16, 16)
    assert torch.allclose(f.decode(norm.apply(y)), norm.apply(f.decode(y)), atol=1e-5)


def test_encode_then_decode_keeps_constant_instances():
    f = MultiFormation(2)
    instances = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 1, 16, 16) / 10
    assert torch.allclose(f.decode(f.encode(instances)), instances, atol=1e-6)


@pytest.mark.parametrize("factor", [0, -1, 1.5, True, "2"])
def test_bad_factors_are_refused(factor):
    with pytest.raises(InvalidInput, match="integer ≥ 1"):
        MultiFormation(factor)


def test_factor_too_large_for_the_images_is_refused():
    with pytest.raises(InvalidInput, match="at most 8"):
        MultiFormation(9).check((3, 16, 16))
    MultiFormation(8).check((3, 16, 16))  # 2-pixel cells are allowed


# -- the file and its consumers --------------------------------------------------------------------


def test_budget_in_bytes_is_exact_and_equal_to_plain_images(tmp_path, source):
    make_file(tmp_path / "f.ddk.h5", source, factor=3)
    make_file(tmp_path / "p.ddk.h5", source, factor=1)
    f, p = info_dict(tmp_path / "f.ddk.h5"), info_dict(tmp_path / "p.ddk.h5")
    images, labels = 20 * 3 * 16 * 16 * 2, 20 * 8  # float16 pixels, int64 labels
    for d in (f, p):
        b = d["budget"]
        assert (b["bytes_images"], b["bytes_labels"], b["bytes_aux"]) == (images, labels, 0)
        assert b["ipc_stored"] == 2 and d["stored_images"] == 20
    assert f["instances"] == 180 and f["budget"]["instances_per_class"] == 18 and p["instances"] == 20
    assert f["formation"] == {"kind": "multi", "factor": 3, "instances_per_image": 9, "bytes_decoder": 0,
                              "stored_per_class": 2.0, "instances_per_class": 18.0}
    assert f["schema"] == 2 and p["schema"] == 1 and p["formation"] is None
    assert validate_file(tmp_path / "f.ddk.h5").ok


def test_info_cli_shows_the_formation(tmp_path, source, capsys):
    make_file(tmp_path / "f.ddk.h5", source, factor=2)
    code, out, _ = run_cli(capsys, "info", tmp_path / "f.ddk.h5")
    assert code == 0
    assert "instances   80 from 20 stored images" in out and "factor 2" in out and "2 stored images × 4 = 8" in out
    code, out, _ = run_cli(capsys, "info", "--json", tmp_path / "f.ddk.h5")
    assert json.loads(out)["formation"]["factor"] == 2


def test_distilled_dataset_gives_decoded_instances(tmp_path, source):
    make_file(tmp_path / "f.ddk.h5", source, factor=2, soft=True)
    with DistilledDataset(tmp_path / "f.ddk.h5") as ds:
        assert len(ds) == 80 and ds.num_stored == 20 and ds.formation == MultiFormation(2)
        stored = ds.stored_pixels()
        decoded = MultiFormation(2).decode(stored)
        assert torch.allclose(ds.pixels(), decoded, atol=1e-6)
        assert torch.equal(ds.labels, torch.arange(10).repeat_interleave(8))
        assert torch.allclose(ds.pixels([77, 3, -1]), decoded[[77, 3, 79]], atol=1e-6)
        x, y = ds[13]
        assert torch.allclose(x, ds.info.normalization.apply(decoded[13:14])[0], atol=1e-6) and y == 1
        assert ds.soft["logits"].rows == 80
        assert "multi-formation factor 2" in repr(ds)


def test_the_evaluator_trains_on_decoded_instances_at_the_stored_budget(tmp_path, source):
    make_file(tmp_path / "f.ddk.h5", source, factor=2)
    train = distilled_source(str(tmp_path / "f.ddk.h5"), get_protocol("hard-cpu@2"))
    images, labels, _, _ = train.make(0)
    with DistilledDataset(tmp_path / "f.ddk.h5") as ds:
        expected = ds.info.normalization.apply(ds.pixels())
    assert torch.allclose(images, expected) and len(labels) == 80 and train.instances == 80
    assert train.ipc == 2.0  # the random baseline gets the same bytes: 2 real images per class


@pytest.mark.parametrize("fmt", ["pt", "imagefolder", "hf"])
@pytest.mark.parametrize("dtype", ["float16", "uint8"])
def test_export_writes_decoded_instances_and_imports_back_bit_for_bit(tmp_path, source, fmt, dtype):
    if fmt == "hf":
        pytest.importorskip("pyarrow")
    digest = make_file(tmp_path / "f.ddk.h5", source, factor=2, dtype=dtype, soft=fmt == "pt")
    report = export_file(tmp_path / "f.ddk.h5", fmt, tmp_path / "out")
    assert report.instances == 80 and any("decoded from 20 stored images" in n for n in report.notes)
    with DistilledDataset(tmp_path / "f.ddk.h5") as ds:
        decoded, labels = ds.pixels(), ds.labels
        norm = ds.info.normalization
    if fmt == "pt":
        images = torch.load(tmp_path / "out" / "images.pt", weights_only=True)
        assert torch.allclose(images, norm.apply(decoded), atol=1e-5)
        assert torch.equal(torch.load(tmp_path / "out" / "labels.pt", weights_only=True), labels)
    elif fmt == "imagefolder":
        pngs = sorted((tmp_path / "out" / "train").rglob("*.png"))
        assert len(pngs) == 80
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(sorted((tmp_path / "out" / "data").glob("*.parquet"))[0])
        assert table.num_rows == 80 and table.column("label").to_pylist() == labels.tolist()
    assert np.load(tmp_path / "out" / "extras" / "images.npy").shape == (20, 3, 16, 16)
    assert json.loads((tmp_path / "out" / "ddkit.json").read_text())["formation"] == {"kind": "multi", "factor": 2}
    assert "formation: each stored image decodes into 4" in (tmp_path / "out" / "README.md").read_text()
    assert import_set(tmp_path / "out", fmt, tmp_path / "back.ddk.h5", ImportOptions(DATASET)) == digest


def test_merge_keeps_the_formation_and_refuses_mixing(tmp_path, source):
    make_file(tmp_path / "a.ddk.h5", source, factor=2, soft=True)
    make_file(tmp_path / "b.ddk.h5", source, factor=2, soft=True, seed=1)
    merge_files([tmp_path / "a.ddk.h5", tmp_path / "b.ddk.h5"], tmp_path / "m.ddk.h5")
    with DistilledDataset(tmp_path / "m.ddk.h5") as m, DistilledDataset(tmp_path / "a.ddk.h5") as a, \
            DistilledDataset(tmp_path / "b.ddk.h5") as b:
        assert m.formation == MultiFormation(2) and len(m) == 160 and m.num_stored == 40
        assert torch.allclose(m.pixels(), torch.cat([a.pixels(), b.pixels()]))
        assert np.array_equal(m.soft["logits"].values, np.concatenate([a.soft["logits"].values, b.soft["logits"].values]))
    make_file(tmp_path / "c.ddk.h5", source, factor=3, soft=True)
    with pytest.raises(IncompatibleError, match="formation"):
        merge_files([tmp_path / "a.ddk.h5", tmp_path / "c.ddk.h5"], tmp_path / "x.ddk.h5")
    assert not (tmp_path / "x.ddk.h5").exists()


def test_show_draws_stored_images_by_default_and_decoded_ones_on_request(tmp_path, source, capsys):
    make_file(tmp_path / "f.ddk.h5", source, factor=2)
    from PIL import Image

    for what in ("auto", "stored", "instances"):
        render_grid(tmp_path / "f.ddk.h5", tmp_path / f"{what}.png", per_class=4, what=what)
    assert Image.open(tmp_path / "auto.png").tobytes() == Image.open(tmp_path / "stored.png").tobytes()
    assert Image.open(tmp_path / "stored.png").tobytes() != Image.open(tmp_path / "instances.png").tobytes()
    code, _, err = run_cli(capsys, "show", tmp_path / "f.ddk.h5", "--what", "instances", "--out", tmp_path / "c.png")
    assert code == 0, err


def test_an_older_reader_refuses_and_a_tampered_decode_is_caught(tmp_path, source, monkeypatch):
    make_file(tmp_path / "f.ddk.h5", source, factor=2)
    import ddkit.store.h5io as h5io

    with monkeypatch.context() as m:
        m.setattr(h5io, "SCHEMA", 1)  # a ddkit that knows only schema 1
        with pytest.raises(FileFormatError, match="upgrade ddkit"):
            DistilledDataset(tmp_path / "f.ddk.h5")
    with edit(tmp_path / "f.ddk.h5") as f:
        f["formation"].attrs["factor"] = 4  # 16 instances per image would be 320, not the recorded 80
    with pytest.raises(FileFormatError, match="recorded 80 instances"):
        DistilledDataset(tmp_path / "f.ddk.h5")
    make_file(tmp_path / "g.ddk.h5", source, factor=2)
    with edit(tmp_path / "g.ddk.h5") as f:
        f["formation"].attrs["kind"] = "fourier"
    with pytest.raises(FileFormatError, match="does not know"):
        DistilledDataset(tmp_path / "g.ddk.h5", verify=False)


def test_a_set_cannot_hold_a_composite_and_a_formation(source):
    from ddkit.store import AdditiveComposite

    dset = DistilledSet.from_source(
        source, method="toy", method_version="1", config={}, seed=0, images=torch.rand(10, 3, 16, 16),
        labels=torch.arange(10), ipc=2, formation=MultiFormation(2),
        composite=AdditiveComposite(torch.zeros(1, 3, 16, 16), torch.zeros(1, 2, dtype=torch.long)),
    )
    with pytest.raises(InvalidInput, match="not both"):
        dset.check()


# -- DM through the decode ---------------------------------------------------------------------------


def test_dm_with_formation_stores_ipc_images_and_matches_their_decoded_instances(tmp_path):
    out = tmp_path / "dm.ddk.h5"
    run_synthesizer("dm", "procedural", [], 2, {**TINY_DM, "formation": 2}, seed=0, out=out)
    with DistilledDataset(out) as ds:
        assert ds.formation == MultiFormation(2) and ds.num_stored == 20 and len(ds) == 80
        assert torch.equal(ds.stored_labels, torch.arange(10).repeat_interleave(2))
        assert len(ds.header.config["init_source_ids"]) == 80 and ds.header.config["formation"] == 2
    plain = tmp_path / "plain.ddk.h5"
    run_synthesizer("dm", "procedural", [], 2, TINY_DM, seed=0, out=plain)
    b, p = info_dict(out)["budget"], info_dict(plain)["budget"]
    assert (b["bytes_images"], b["bytes_labels"]) == (p["bytes_images"], p["bytes_labels"])  # equal bytes, 4× instances


def test_dm_starts_from_tiled_real_images_and_moves_the_stored_pixels(source):
    source = load_dataset("procedural", "train")
    config = DMConfig(**{**TINY_DM, "iterations": 12, "dsa": "none", "lr_img": 0.5, "formation": 2})
    state, picked = initial_state(source, 2, config, 0, "cpu")
    assert len(picked) == 80 and state.images.shape == (20, 1, 16, 16)
    assert torch.allclose(state.images, MultiFormation(2).encode(picked.normalized()))
    start = state.images.clone()
    losses = list(optimize(source, state, config, 0, "cpu"))
    assert not torch.equal(start, state.images)  # the gradient reached the stored pixels through the decode
    assert np.mean(losses[-3:]) < np.mean(losses[:3])


@pytest.mark.parametrize("overrides, match", [
    ({"formation": 0}, "formation must be an integer ≥ 1"),
    ({"formation": 9}, "at most 8"),
    ({"class_reg": 0.1}, "needs a trained model pool"),
    ({"pool_size": 2, "pool_fresh_fraction": 1.5}, "pool_fresh_fraction"),
    ({"pool_size": -1}, "pool_size"),
    ({"preset": "fast"}, "no preset"),
])
def test_bad_options_are_refused_before_any_work(tmp_path, overrides, match):
    out = tmp_path / "bad.ddk.h5"
    with pytest.raises(InvalidInput, match=match):
        run_synthesizer("dm", "procedural", [], 1, {**TINY_DM, **overrides}, seed=0, out=out)
    assert not out.exists() and not (tmp_path / "bad.ddk.h5.work").exists()


def test_cli_runs_dm_with_formation_and_pool(tmp_path, capsys):
    out = tmp_path / "cli.ddk.h5"
    code, _, err = run_cli(capsys, "synthesize", "--method", "dm", "--dataset", "procedural", "--ipc", "1",
                           "--config", "iterations=2", "--config", "batch_real=4",
                           "--config", "net_options=depth=2,width=8,norm=instance", "--config", "formation=2",
                           "--config", "pool_size=2", "--config", "pool_warmup_steps=1", "--config", "pool_batch=8",
                           "--config", "class_reg=0.5", "--out", out)
    assert code == 0, err
    with h5py.File(out, "r") as f:
        assert f.attrs["schema"] == 2 and f["formation"].attrs["factor"] == 2
    code, _, err = run_cli(capsys, "synthesize", "--method", "dm", "--dataset", "procedural", "--ipc", "1",
                           "--config", "formation=0", "--out", tmp_path / "bad.ddk.h5")
    assert code == 2 and "formation" in err and not (tmp_path / "bad.ddk.h5").exists()
