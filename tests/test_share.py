"""Sharing sets: export -> import round trips, imports of the field's layouts (written here the way the
anchors' code writes them), refusal of pickles that would run code, remote reads over a local HTTP
server, packs and the catalog."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sqlite3

import numpy as np
import pytest
import torch
from helpers import edit, run_cli
from http_range import serve

from ddkit.errors import FileFormatError, IncompatibleError, InvalidInput
from ddkit.share import ImportOptions, export_file, import_set
from ddkit.share.pack import pack, resolve_train_set
from ddkit.share.remote import fetch, header_info
from ddkit.store import (
    AdditiveComposite,
    DistilledDataset,
    DistilledSet,
    LogitsLabels,
    TopKLabels,
    add_result,
    write_distilled,
)

DATASET = "procedural:3"  # 10 classes, 3×16×16, generated (no download)


def make_file(path, source, kind: str = "uint8") -> str:
    """A small distilled file of DATASET: uint8 pixels + logits + a learned lr, or float16 pixels +
    a composite + top-k labels. Returns its content hash."""
    g = torch.Generator().manual_seed(1)
    idx = torch.arange(0, len(source), 10)[:30]
    labels = source.labels[idx]
    if kind == "uint8":
        fields = dict(
            images=source.images[idx],
            soft={"logits": LogitsLabels(torch.randn(30, 10, generator=g))},
            config={"learned_lr": 0.0125},
        )
    else:
        members = torch.arange(8).view(2, 4)
        comp = AdditiveComposite(torch.randn(2, 3, 16, 16, generator=g) * 0.1, members)
        fields = dict(
            images=torch.rand(30, 3, 16, 16, generator=g),
            composite=comp,
            config={},
            soft={"topk": TopKLabels(torch.randint(0, 10, (38, 2), generator=g), torch.rand(38, 2, generator=g))},
        )
    dset = DistilledSet.from_source(
        source,
        method="toy",
        method_version="1",
        seed=3,
        labels=labels,
        ipc=5,
        teachers=[{"arch": "convnet", "sha256": "ab" * 32}],
        **fields,
    )
    return write_distilled(path, dset)


@pytest.mark.parametrize("kind", ["uint8", "float16-composite"])
@pytest.mark.parametrize("fmt", ["imagefolder", "pt", "hf"])
def test_export_then_import_gives_the_same_content_hash(tmp_path, source, fmt, kind):
    if fmt == "hf":
        pytest.importorskip("pyarrow")
    digest = make_file(tmp_path / "a.ddk.h5", source, kind)
    report = export_file(tmp_path / "a.ddk.h5", fmt, tmp_path / "out")
    assert report.instances == 30 + (8 if kind != "uint8" else 0)
    assert (tmp_path / "out" / "README.md").read_text().startswith("---" if fmt == "hf" else "# toy")
    again = import_set(tmp_path / "out", fmt, tmp_path / "b.ddk.h5", ImportOptions(DATASET))
    assert again == digest
    with DistilledDataset(tmp_path / "b.ddk.h5") as ds:
        assert ds.header.config["import"]["format"] == fmt and ds.header.config["import"]["imported"] is True
        assert len(ds.header.config["import"]["source_sha256"]) == 64


def test_export_folders_look_like_the_field_expects(tmp_path, source):
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    make_file(tmp_path / "a.ddk.h5", source)
    export_file(tmp_path / "a.ddk.h5", "imagefolder", tmp_path / "if")
    export_file(tmp_path / "a.ddk.h5", "pt", tmp_path / "pt")
    export_file(tmp_path / "a.ddk.h5", "hf", tmp_path / "hf")
    with DistilledDataset(tmp_path / "a.ddk.h5") as ds:
        images, labels = ds.info.normalization.apply(ds.pixels()), ds.labels
    # pt: normalized images, labels, the stored logits, the learned lr
    assert torch.allclose(torch.load(tmp_path / "pt" / "images.pt", weights_only=True), images, atol=1e-6)
    assert torch.equal(torch.load(tmp_path / "pt" / "labels.pt", weights_only=True), labels)
    assert torch.load(tmp_path / "pt" / "soft_labels.pt", weights_only=True).shape == (30, 10)
    assert float(torch.load(tmp_path / "pt" / "lr.pt", weights_only=True)) == pytest.approx(0.0125)
    # imagefolder: one PNG per instance under its class folder, classes.json in label order
    names = json.loads((tmp_path / "if" / "classes.json").read_text())
    assert names == [f"{i:02d}_{n}" for i, n in enumerate(source.info.class_names)] and names == sorted(names)
    assert len(list((tmp_path / "if" / "train").rglob("*.png"))) == 30
    # hf: parquet with typed features in the schema metadata and a card with YAML front matter
    table = pq.read_table(next((tmp_path / "hf" / "data").glob("*.parquet")))
    assert table.column_names == ["image", "label", "logits"] and b"ClassLabel" in table.schema.metadata[b"huggingface"]
    assert "dataset_info" in (tmp_path / "hf" / "README.md").read_text()


@pytest.mark.parametrize("kind", ["uint8", "float16-composite"])
def test_torchvision_imagefolder_reads_every_exported_label_as_ddkit_does(tmp_path, source, kind):
    """procedural's class names sort in another order than their indices ('coarse-108' < 'coarse-36'):
    the loader's label of every exported image must still be the file's label of that instance."""
    from torchvision.datasets import ImageFolder

    assert sorted(source.info.class_names) != list(source.info.class_names)
    make_file(tmp_path / "a.ddk.h5", source, kind)
    export_file(tmp_path / "a.ddk.h5", "imagefolder", tmp_path / "if")
    loader = ImageFolder(str(tmp_path / "if" / "train"))
    with DistilledDataset(tmp_path / "a.ddk.h5") as ds:
        labels = ds.labels.tolist()
    assert len(loader.samples) == len(labels)
    for path, label in loader.samples:
        assert label == labels[int(os.path.basename(path).split(".")[0])], path
    assert [name.split("_", 1)[1] for name in loader.classes] == list(source.info.class_names)


def test_hf_imagefolder_builder_reads_every_exported_label_as_ddkit_does(tmp_path, source):
    datasets = pytest.importorskip("datasets")
    make_file(tmp_path / "a.ddk.h5", source)
    export_file(tmp_path / "a.ddk.h5", "imagefolder", tmp_path / "if")
    loaded = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "if" / "train"), split="train",
                                   cache_dir=str(tmp_path / "hf-cache"))
    with DistilledDataset(tmp_path / "a.ddk.h5") as ds:
        labels = ds.labels.tolist()
    names = loaded.features["label"].names
    assert [name.split("_", 1)[1] for name in names] == list(source.info.class_names)
    assert sorted(loaded["label"]) == sorted(labels)
    exported = {int(os.path.basename(p).split(".")[0]): p for p in (tmp_path / "if" / "train").rglob("*.png")}
    for i, path in exported.items():  # the builder labels a file by its folder's position among the sorted names
        assert names.index(os.path.basename(os.path.dirname(path))) == labels[i]


def test_import_reads_an_export_made_before_the_index_prefix(tmp_path, source):
    """Exports before issue 27 named class folders by bare class names; they import to the same content."""
    digest = make_file(tmp_path / "a.ddk.h5", source)
    export_file(tmp_path / "a.ddk.h5", "imagefolder", tmp_path / "if")
    train = tmp_path / "if" / "train"
    for folder in list(train.iterdir()):
        folder.rename(train / folder.name.split("_", 1)[1])
    old_names = [n.split("_", 1)[1] for n in json.loads((tmp_path / "if" / "classes.json").read_text())]
    (tmp_path / "if" / "classes.json").write_text(json.dumps(old_names))
    assert import_set(tmp_path / "if", "imagefolder", tmp_path / "b.ddk.h5", ImportOptions(DATASET)) == digest
    (tmp_path / "if" / "classes.json").unlink()  # bare class names alone still name the classes
    assert import_set(tmp_path / "if", "imagefolder", tmp_path / "c.ddk.h5", ImportOptions(DATASET)) == digest


def test_export_refuses_a_damaged_file_and_writes_nothing(tmp_path, source):
    make_file(tmp_path / "a.ddk.h5", source)
    with edit(tmp_path / "a.ddk.h5") as f:
        f["images"][0, 0, 0, 0] = 7
    with pytest.raises(FileFormatError, match="content hash"):
        export_file(tmp_path / "a.ddk.h5", "pt", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


# -- imports of the field's layouts ---------------------------------------------------------------


def test_import_dc_result_file(tmp_path, source):
    # DC/DSA/DM main.py: data_save.append([copy.deepcopy(image_syn.detach().cpu()), copy.deepcopy(label_syn...)])
    # torch.save({'data': data_save, 'accs_all_exps': accs_all_exps}, 'res_DC_<dataset>_ConvNet_2ipc.pt')
    idx = torch.arange(0, 400, 20)
    norm = source.info.normalization
    images = norm.apply(source.pixels(idx))
    other = torch.randn_like(images)
    path = tmp_path / "res_DM_procedural_ConvNet_2ipc.pt"
    torch.save(
        {
            "data": [[other, source.labels[idx]], [images, source.labels[idx]]],
            "accs_all_exps": {"ConvNet": [0.41, 0.43]},
        },
        path,
    )
    import_set(path, "dc", tmp_path / "dc.ddk.h5", ImportOptions(DATASET, index=1))
    with DistilledDataset(tmp_path / "dc.ddk.h5") as ds:
        assert ds.header.method == "dm" and ds.header.config["import"]["reported_accuracies"] == {
            "ConvNet": [0.41, 0.43]
        }
        assert torch.equal(ds.labels, source.labels[idx])
        assert torch.allclose(ds.pixels(), source.pixels(idx), atol=1e-3)  # float16 storage
    with pytest.raises(InvalidInput, match="out of range"):
        import_set(path, "dc", tmp_path / "x.ddk.h5", ImportOptions(DATASET, index=2))


def _mtt_zca():
    """MTT's buffer.py / distill.py: zca = K.enhance.ZCAWhitening(eps=0.1, compute_inv=True); zca.fit(images)."""
    import kornia

    return kornia.enhance.ZCAWhitening(eps=0.1, compute_inv=True)


def test_import_mtt_undoes_zca_and_refuses_without_its_parameters(tmp_path, source):
    norm = source.info.normalization
    train = norm.apply(source.pixels())
    zca = _mtt_zca()
    zca.fit(train)
    idx = torch.arange(0, 400, 10)
    folder = tmp_path / "logged_files" / "procedural" / "run"
    folder.mkdir(parents=True)
    torch.save(zca(train[idx]).cpu(), folder / "images_best.pt")
    soft = torch.randn(len(idx), 10)  # DATM: learned soft labels
    torch.save(soft, folder / "labels_best.pt")
    torch.save(torch.tensor(0.01), folder / "lr_best.pt")
    with pytest.raises(InvalidInput, match="ZCA"):
        import_set(folder, "mtt", tmp_path / "m.ddk.h5", ImportOptions(DATASET))
    assert not (tmp_path / "m.ddk.h5").exists()
    torch.save({"mean": zca.mean_vector, "transform": zca.transform_matrix}, tmp_path / "zca.pt")
    for zca_arg, out in (("fit", "fit.ddk.h5"), (str(tmp_path / "zca.pt"), "file.ddk.h5")):
        import_set(folder, "mtt", tmp_path / out, ImportOptions(DATASET, zca=zca_arg))
        with DistilledDataset(tmp_path / out) as ds:
            assert torch.allclose(ds.pixels(), source.pixels(idx), atol=2e-3), zca_arg
            assert torch.equal(ds.labels, soft.argmax(1))
            assert np.allclose(ds.soft["logits"].values, soft.numpy(), atol=1e-2)
            assert ds.header.config["learned_lr"] == pytest.approx(0.01)


def test_import_sre2l_style_folder_and_class_order(tmp_path, source):
    from PIL import Image

    # SRe2L recover: '{syn_data_path}/new{class_id:03d}/class{class_id:03d}_id{ipc_id:03d}.jpg' (PNG here: exact)
    idx = torch.arange(0, 400, 40)
    for i in idx.tolist():
        c = int(source.labels[i])
        folder = tmp_path / "syn" / f"new{c:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(source.images[i].permute(1, 2, 0).numpy()).save(folder / f"class{c:03d}_id{i:03d}.png")
    import_set(tmp_path / "syn", "imagefolder", tmp_path / "s.ddk.h5", ImportOptions(DATASET))
    with DistilledDataset(tmp_path / "s.ddk.h5") as ds:
        order = torch.argsort(source.labels[idx], stable=True)
        assert torch.equal(ds.labels, source.labels[idx][order])
        assert torch.equal((ds.pixels() * 255).round().byte(), source.images[idx][order])
        assert ds.header.budget.ipc_stored == int(torch.bincount(source.labels[idx]).max())  # the fullest class
    (tmp_path / "syn" / "new000").rename(tmp_path / "syn" / "cats")
    with pytest.raises(FileFormatError, match="class map"):
        import_set(tmp_path / "syn", "imagefolder", tmp_path / "t.ddk.h5", ImportOptions(DATASET))


def test_import_foreign_parquet_and_dd_ranking_tensors(tmp_path, source):
    pa = pytest.importorskip("pyarrow")
    import io

    import pyarrow.parquet as pq
    from PIL import Image

    idx = torch.arange(0, 400, 40)
    blobs = []
    for i in idx.tolist():
        buffer = io.BytesIO()
        Image.fromarray(source.images[i].permute(1, 2, 0).numpy()).save(buffer, format="PNG")
        blobs.append({"bytes": buffer.getvalue(), "path": None})
    names = list(source.info.class_names)[::-1]  # the publisher's own class order: remapped by name
    meta = {
        b"huggingface": json.dumps(
            {"info": {"features": {"img": {"_type": "Image"}, "label": {"_type": "ClassLabel", "names": names}}}}
        ).encode()
    }
    table = pa.table({"img": blobs, "label": [9 - int(source.labels[i]) for i in idx]}).replace_schema_metadata(meta)
    pq.write_table(table, tmp_path / "train-00000-of-00001.parquet")
    import_set(tmp_path / "train-00000-of-00001.parquet", "hf", tmp_path / "h.ddk.h5", ImportOptions(DATASET))
    with DistilledDataset(tmp_path / "h.ddk.h5") as ds:
        assert torch.equal(ds.labels, source.labels[idx])
    # DD-Ranking: images (normalized), soft labels, syn lr as tensors
    folder = tmp_path / "ddr"
    folder.mkdir()
    torch.save(source.info.normalization.apply(source.pixels(idx)), folder / "images.pt")
    torch.save(source.labels[idx], folder / "labels.pt")
    import_set(folder, "pt", tmp_path / "p.ddk.h5", ImportOptions(DATASET))
    with DistilledDataset(tmp_path / "p.ddk.h5") as ds:
        assert ds.header.budget.bytes_images == len(idx) * 3 * 16 * 16  # recognized as 8-bit pixels, stored uint8
    with pytest.raises(IncompatibleError, match="shape"):
        import_set(folder, "pt", tmp_path / "q.ddk.h5", ImportOptions("procedural"))


class _Payload:
    """Unpickling this runs os.system: what a hostile `.pt` does to a plain torch.load."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path, source):
    marker = tmp_path / "pwned"
    images = torch.zeros(2, 3, 16, 16)
    torch.save({"data": [[images, torch.tensor([0, 1])]], "accs_all_exps": _Payload(marker)}, tmp_path / "res_DC_x.pt")
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "images_best.pt").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(FileFormatError, match="weights_only"):
        import_set(tmp_path / "res_DC_x.pt", "dc", tmp_path / "a.ddk.h5", ImportOptions(DATASET))
    with pytest.raises(FileFormatError, match="weights_only"):
        import_set(tmp_path / "raw", "mtt", tmp_path / "b.ddk.h5", ImportOptions(DATASET, no_zca=True))
    assert not marker.exists() and not (tmp_path / "a.ddk.h5").exists()
    pickle.loads((tmp_path / "raw" / "images_best.pt").read_bytes())  # the payload is live: a plain load runs it
    assert marker.exists()


def test_objects_other_than_plain_tensors_are_refused(tmp_path):
    torch.save(
        {"data": [[torch.zeros(1, 3, 16, 16), torch.float32]]}, tmp_path / "res_DC_x.pt"
    )  # weights_only allows dtypes
    with pytest.raises(FileFormatError, match="torch.dtype"):
        import_set(tmp_path / "res_DC_x.pt", "dc", tmp_path / "a.ddk.h5", ImportOptions(DATASET))


# -- remote files ---------------------------------------------------------------------------------


def test_remote_info_reads_only_the_header_and_downloads_are_verified(tmp_path, source, monkeypatch, capsys):
    monkeypatch.setenv("DDKIT_CACHE", str(tmp_path / "cache"))
    served = tmp_path / "served"
    served.mkdir()
    dset = DistilledSet.from_source(
        source,
        method="toy",
        method_version="1",
        config={},
        seed=0,
        images=torch.rand(400, 3, 16, 16),
        labels=source.labels,
        ipc=40,
    )
    digest = write_distilled(served / "big.ddk.h5", dset)  # ~600 KiB of float16 pixels
    size = (served / "big.ddk.h5").stat().st_size
    with serve(served) as (base, counter):
        d = header_info(f"{base}/big.ddk.h5")
        assert d["content_sha256"] == digest and d["instances"] == 400
        assert counter["bytes"] < size / 3 and d["remote"]["bytes_read"] < size / 3
        code, out, _ = run_cli(capsys, "info", f"{base}/big.ddk.h5")
        assert code == 0 and "ddkit distilled dataset" in out
        path = fetch(f"{base}/big.ddk.h5")
        assert path.is_file() and str(path).startswith(str(tmp_path / "cache"))
        before = counter["bytes"]
        assert fetch(f"{base}/big.ddk.h5") == path and counter["bytes"] - before <= 512  # cached: the seal block only
        code, out, _ = run_cli(capsys, "validate", f"{base}/big.ddk.h5")
        assert code == 0 and "OK" in out
        # tampered: a pixel changed and the file re-sealed (so only the content hash can tell)
        with edit(served / "big.ddk.h5") as f:
            f["images"][0, 0, 0, 0] = 0.5 if f["images"][0, 0, 0, 0] != 0.5 else 0.25
        with pytest.raises(FileFormatError, match="download refused.*content hash"):
            fetch(f"{base}/big.ddk.h5")
        # tampered: bytes flipped without re-sealing
        raw = bytearray((served / "big.ddk.h5").read_bytes())
        raw[-100] ^= 0xFF
        (served / "big.ddk.h5").write_bytes(bytes(raw))
        code, _, err = run_cli(capsys, "export", f"{base}/big.ddk.h5", "--to", "pt", tmp_path / "x")
        assert code == 2 and "download refused" in err and not (tmp_path / "x").exists()
    assert not [p for p in (tmp_path / "cache").rglob("*.tmp")]


# -- packs and the catalog ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory, source):
    from ddkit.models import create_model
    from ddkit.models.teacher import save_teacher

    path = tmp_path_factory.mktemp("teachers") / "t.safetensors"
    header = save_teacher(path, create_model("convnet", 3, 16, 10, width=8), source.info, test_accuracy=0.5)
    return path, header


def test_pack_carries_the_teachers_and_evaluate_finds_them(tmp_path, source, teacher_file, capsys):
    path, header = teacher_file
    dset = DistilledSet.from_source(
        source,
        method="toy",
        method_version="1",
        config={},
        seed=0,
        images=source.images[:20],
        labels=source.labels[:20],
        ipc=2,
        teachers=[header.summary()],
    )
    write_distilled(tmp_path / "a.ddk.h5", dset)
    with pytest.raises(FileFormatError, match="not found"):
        pack(tmp_path / "a.ddk.h5", tmp_path / "pack", [str(tmp_path)])
    code, out, _ = run_cli(capsys, "pack", tmp_path / "a.ddk.h5", tmp_path / "pack", "--teacher", path.parent)
    assert code == 0 and "1 teacher" in out
    assert "ddkit evaluate" in (tmp_path / "pack" / "README.md").read_text()
    train_set, teachers = resolve_train_set(str(tmp_path / "pack"), [])
    assert train_set.endswith("a.ddk.h5") and len(teachers) == 1
    code, out, err = run_cli(
        capsys,
        "evaluate",
        tmp_path / "pack",
        "--protocol",
        "teacher-cpu",
        "--steps",
        "2",
        "--seeds",
        "1",
        "--no-baseline",
        "--no-full",
        "--no-write",
    )
    assert code == 0, err


def test_catalog_lists_good_damaged_and_stale_files(tmp_path, source, capsys):
    root = tmp_path / "team"
    root.mkdir()
    for ipc, gain in ((2, 0.05), (3, 0.12)):
        dset = DistilledSet.from_source(
            source,
            method=f"m{ipc}",
            method_version="1",
            config={},
            seed=0,
            images=source.images[: 10 * ipc],
            labels=source.labels[: 10 * ipc],
            ipc=ipc,
        )
        write_distilled(root / f"m{ipc}.ddk.h5", dset)
        add_result(
            root / f"m{ipc}.ddk.h5",
            "hard-cpu@1",
            {"result": {"mean": 0.5 + gain, "std": 0.01}, "random_baseline": {"mean": 0.5, "std": 0.01}},
        )
    shutil.copyfile(root / "m2.ddk.h5", root / "m2-copy.ddk.h5")
    (root / "junk.ddk.h5").write_bytes(b"not a file")
    half = (root / "m3.ddk.h5").read_bytes()
    (root / "cut.ddk.h5").write_bytes(half[: len(half) // 2])
    cat = tmp_path / "cat.sqlite"
    code, out, _ = run_cli(capsys, "catalog", "scan", root, "--catalog", cat)
    assert code == 0 and "3 ok, 2 damaged" in out
    code, out, _ = run_cli(
        capsys,
        "catalog",
        "ls",
        "--catalog",
        cat,
        "--dataset",
        DATASET,
        "--ipc",
        "3",
        "--protocol",
        "hard-cpu",
        "--sort",
        "gain",
        "--json",
    )
    rows = json.loads(out)
    assert [r["method"] for r in rows] == ["m3"] and rows[0]["gain"] == pytest.approx(0.12)
    code, out, _ = run_cli(capsys, "catalog", "ls", "--catalog", cat, "--json")
    rows = json.loads(out)
    assert [r["status"] for r in rows].count("damaged") == 2
    assert [(r["ipc"], r["method"]) for r in rows if r["status"] == "ok"] == [(2, "m2"), (2, "m2"), (3, "m3")]
    # a file changed since it was indexed shows as stale; get refuses it, and fetches a good one
    with edit(root / "m2-copy.ddk.h5") as f:
        f.attrs["method"] = "edited"
    statuses = {
        r["location"].rsplit("/", 1)[-1]: r["status"]
        for r in json.loads(run_cli(capsys, "catalog", "ls", "--catalog", cat, "--json")[1])
    }
    assert statuses["m2-copy.ddk.h5"] == "stale" and statuses["m2.ddk.h5"] == "ok"
    m3 = next(r for r in rows if r["method"] == "m3")
    code, out, _ = run_cli(capsys, "catalog", "get", m3["id"], "--catalog", cat, "--out", tmp_path / "got.ddk.h5")
    assert code == 0 and (tmp_path / "got.ddk.h5").is_file()
    with sqlite3.connect(cat) as db:
        assert db.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 3


def test_a_named_catalog_reads_only_inside_its_own_folder(tmp_path, source, capsys, monkeypatch):
    """A catalog anyone may edit never decides where ddkit reads: a --catalog indexes and opens only files
    inside its folder; the user's own default catalog indexes files anywhere."""
    from ddkit.share.catalog import Catalog

    team, elsewhere = tmp_path / "team", tmp_path / "elsewhere"
    for folder in (team, elsewhere):
        folder.mkdir()
        dset = DistilledSet.from_source(source, method=folder.name, method_version="1", config={}, seed=0,
                                        images=source.images[:20], labels=source.labels[:20], ipc=2)
        write_distilled(folder / "s.ddk.h5", dset)
    cat = team / "cat.sqlite"
    code, _, err = run_cli(capsys, "catalog", "scan", elsewhere, "--catalog", cat)
    assert code != 0 and "outside the folder of the catalog" in err and "fix:" in err
    assert not cat.exists() or sqlite3.connect(cat).execute("SELECT COUNT(*) FROM files").fetchone()[0] == 0
    assert run_cli(capsys, "catalog", "scan", team, "--catalog", cat)[0] == 0
    (team / "out").symlink_to(elsewhere)  # a link on the way out of the folder counts as outside
    with Catalog(cat) as c:
        assert c.holds(str(team / "s.ddk.h5")) and not c.holds(str(elsewhere / "s.ddk.h5"))
        assert not c.holds(str(team / "out" / "s.ddk.h5")) and not c.holds(str(team / ".." / "elsewhere" / "s.ddk.h5"))
        assert not c.holds("s.ddk.h5") and not c.holds(str(team))
    entry = json.loads(run_cli(capsys, "catalog", "ls", "--catalog", cat, "--json")[1])[0]["id"]
    for location in (str(elsewhere / "s.ddk.h5"), f"local://{elsewhere / 's.ddk.h5'}", str(team / "out" / "s.ddk.h5")):
        with sqlite3.connect(cat) as db:
            db.execute("UPDATE files SET location = ?", (location,))
        rows = json.loads(run_cli(capsys, "catalog", "ls", "--catalog", cat, "--json")[1])
        assert [r["status"] for r in rows] == ["outside"]
        code, _, err = run_cli(capsys, "catalog", "get", entry, "--catalog", cat, "--out", tmp_path / "got.ddk.h5")
        assert code != 0 and "points outside the folder of the catalog" in err and not (tmp_path / "got.ddk.h5").exists()
    monkeypatch.setenv("DDKIT_CACHE", str(tmp_path / "cache"))
    assert run_cli(capsys, "catalog", "scan", elsewhere, team)[0] == 0  # the default catalog: anywhere
    code, out, _ = run_cli(capsys, "catalog", "ls", "--json")
    assert sorted(r["status"] for r in json.loads(out)) == ["ok", "ok"]


def test_catalog_never_ranks_two_protocol_versions_together(tmp_path, source, capsys):
    root = tmp_path / "team"
    root.mkdir()
    for name, version, gain in (("a", 1, 0.30), ("b", 2, 0.02)):
        dset = DistilledSet.from_source(source, method=name, method_version="1", config={}, seed=0,
                                        images=source.images[:20], labels=source.labels[:20], ipc=2)
        write_distilled(root / f"{name}.ddk.h5", dset)
        add_result(root / f"{name}.ddk.h5", f"hard-cpu@{version}",
                   {"result": {"mean": 0.5 + gain, "std": 0.01}, "random_baseline": {"mean": 0.5, "std": 0.01}})
    cat = tmp_path / "cat.sqlite"
    assert run_cli(capsys, "catalog", "scan", root, "--catalog", cat)[0] == 0
    code, _, err = run_cli(capsys, "catalog", "ls", "--catalog", cat, "--protocol", "hard-cpu", "--sort", "gain")
    assert code != 0 and "hard-cpu@1, hard-cpu@2" in err and "never compared" in err
    code, out, _ = run_cli(capsys, "catalog", "ls", "--catalog", cat, "--protocol", "hard-cpu@2", "--json")
    assert code == 0 and [r["method"] for r in json.loads(out)] == ["b"]
