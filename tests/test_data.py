"""Dataset sources: the contract every source meets, and each source's own rules.

Nothing here touches the network: downloads are monkeypatched to fail, and the full Fashion-MNIST
tests run only where the Debian package's files exist.
"""

from __future__ import annotations

import gzip
import json
import time
import urllib.error

import h5py
import numpy as np
import pytest
import torch

from ddkit.data import (
    DATASETS,
    DEFAULT_DATASET,
    fashion_mnist,
    imagefolder,
    load_dataset,
    mini,
    procedural,
    torchvision_sources,
    train_val_split,
)
from ddkit.data.idx import read_idx, write_idx
from ddkit.data.stats import channel_stats
from ddkit.errors import DatasetUnavailable, DdkitError, FileFormatError, InvalidInput, OutputExists
from ddkit.fileio import sha256_file

OFFLINE = ["fashion-mnist-mini", "procedural", "procedural:3", "imagefolder"]
DEBIAN_PRESENT = fashion_mnist.source_paths("train", [fashion_mnist.DEBIAN_DIR]) is not None
needs_debian = pytest.mark.skipif(not DEBIAN_PRESENT, reason="apt package dataset-fashion-mnist not installed")


@pytest.fixture(params=OFFLINE)
def offline_name(request, imagefolder_root):
    """A loadable dataset name for each source that needs no download."""
    return f"imagefolder:{imagefolder_root}" if request.param == "imagefolder" else request.param


# -- the contract every source meets ---------------------------------------------------------------
def test_registry_lists_every_source_and_offline_ones_are_tagged():
    expected = {"fashion-mnist", "fashion-mnist-mini", "mnist", "cifar10", "cifar100", "imagefolder", "procedural"}
    assert expected <= set(DATASETS)
    assert DATASETS.names(offline=True) == ["fashion-mnist-mini", "procedural"]
    assert DEFAULT_DATASET in DATASETS
    assert all(entry.summary for entry in DATASETS.entries())


@pytest.mark.parametrize("split", ["train", "test"])
def test_split_contract(offline_name, split):
    ds = load_dataset(offline_name, split)
    info = ds.info
    assert info.name == offline_name and ds.split == split and ds.source
    assert ds.images.dtype == torch.uint8 and ds.images.ndim == 4
    assert tuple(ds.images.shape[1:]) == info.image_shape
    assert ds.labels.dtype == torch.int64 and ds.ids.dtype == torch.int64
    assert len(ds.labels) == len(ds.ids) == len(ds.images) > 0
    assert set(ds.labels.tolist()) == set(range(info.num_classes))  # every class present
    assert len(set(ds.ids.tolist())) == len(ds)
    assert all(isinstance(c, str) and c for c in info.class_names)
    assert len(info.normalization.mean) == len(info.normalization.std) == info.image_shape[0]
    assert all(s > 0 for s in info.normalization.std)
    assert info == load_dataset(offline_name, "train").info  # test split shares the train split's info


def test_loading_is_deterministic_and_callers_get_their_own_copy(offline_name):
    first = load_dataset(offline_name, "train")
    fingerprint = first.fingerprint()
    first.images.zero_()  # must not leak into the next load through a cache
    again = load_dataset(offline_name, "train")
    assert again.fingerprint() == fingerprint
    assert again.info == first.info


def test_getitem_returns_normalized_float(offline_name):
    ds = load_dataset(offline_name, "train")
    x, y = ds[3]
    assert x.dtype == torch.float32 and tuple(x.shape) == ds.info.image_shape
    assert isinstance(y, int) and y == int(ds.labels[3])
    expected = ds.info.normalization.apply(ds.images[3].float() / 255.0)
    torch.testing.assert_close(x, expected)


def test_train_val_split_is_deterministic_stratified_disjoint_and_covering(offline_name):
    ds = load_dataset(offline_name, "train")
    train, val = train_val_split(ds, 0.2, seed=1)
    train2, val2 = train_val_split(ds, 0.2, seed=1)
    assert torch.equal(train.ids, train2.ids) and torch.equal(val.ids, val2.ids)
    assert not set(train.ids.tolist()) & set(val.ids.tolist())
    assert sorted(train.ids.tolist() + val.ids.tolist()) == sorted(ds.ids.tolist())
    for c, rows in enumerate(ds.class_indices()):
        n_val = int((val.labels == c).sum())
        assert n_val == max(1, round(len(rows) * 0.2))
    other, _ = train_val_split(ds, 0.2, seed=2)
    assert not torch.equal(other.ids, train.ids)


def test_normalization_of_computed_sources_is_the_train_pixels_stats(imagefolder_root):
    for name in ("procedural", "procedural:3", f"imagefolder:{imagefolder_root}"):
        train = load_dataset(name, "train")
        assert load_dataset(name, "test").info.normalization == train.info.normalization
        stats = channel_stats(train.images)
        assert stats == train.info.normalization
        x = train.normalized()
        assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-2


def test_sources_without_argument_refuse_one():
    for name in ("fashion-mnist", "fashion-mnist-mini", "mnist", "cifar10"):
        with pytest.raises(InvalidInput, match="takes no argument"):
            load_dataset(f"{name}:x")


# -- fashion-mnist-mini ------------------------------------------------------------------------
def test_mini_is_balanced_and_describes_fashion_mnist():
    train, test = load_dataset("fashion-mnist-mini", "train"), load_dataset("fashion-mnist-mini", "test")
    assert train.info.class_names == fashion_mnist.CLASS_NAMES
    assert train.info.image_shape == (1, 28, 28)
    assert train.info.normalization.mean == (0.2860,) and train.info.normalization.std == (0.3530,)
    assert train.labels.bincount().tolist() == [500] * 10 and test.labels.bincount().tolist() == [200] * 10
    assert 0 <= int(train.ids.min()) and int(train.ids.max()) < 60000 and int(test.ids.max()) < 10000
    assert torch.equal(train.ids, train.ids.sort().values)
    attrs = mini.attrs()
    assert attrs["format"] == mini.FORMAT and attrs["seed"] == mini.SEED
    assert attrs["per_class_counts"] == {"train": [500] * 10, "test": [200] * 10}
    assert [f["name"].split(".")[0] for f in attrs["source_files"]] == [
        "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    assert attrs["command"].startswith("python scripts/make_fashion_mnist_mini.py")
    assert "ddkit_version" in attrs


def test_mini_missing_or_damaged_asset_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(mini, "ASSET_PATH", tmp_path / "absent.h5")
    with pytest.raises(FileFormatError, match="missing"):
        load_dataset("fashion-mnist-mini")
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not hdf5 at all" * 10)
    with pytest.raises(FileFormatError, match="damaged"):
        mini.load("train", garbage)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.attrs["format"] = "something.else"
    with pytest.raises(FileFormatError, match="not a fashion-mnist-mini asset"):
        mini.load("train", foreign)


def _write_fake_fashion_mnist(folder, per_class=(30, 12), gz=True, seed=0):
    """Small IDX files in the Fashion-MNIST names: images whose pixels encode (split, row)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in zip(("train", "t10k"), per_class, strict=True):
        labels = rng.permutation(np.arange(10 * n) % 10).astype(np.uint8)
        images = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
        ext = ".gz" if gz else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels)
    return folder


def test_mini_builder_is_deterministic_and_keeps_full_set_ids(tmp_path, monkeypatch):
    monkeypatch.setenv("DDKIT_DATA", str(_write_fake_fashion_mnist(tmp_path / "data", gz=False)))
    per_class = {"train": 5, "test": 2}
    a = mini.build(tmp_path / "a.h5", per_class=per_class, command="test")
    b = mini.build(tmp_path / "b.h5", per_class=per_class, command="test")
    assert a.read_bytes() == b.read_bytes()
    full = load_dataset("fashion-mnist", "train")
    small = mini.load("train", a)
    assert small.labels.bincount().tolist() == [5] * 10
    assert torch.equal(small.images, full.images[small.ids]) and torch.equal(small.labels, full.labels[small.ids])
    recorded = {f["name"]: f["sha256"] for f in mini.attrs(a)["source_files"]}
    assert recorded["train-images-idx3-ubyte"] == sha256_file(tmp_path / "data" / "train-images-idx3-ubyte")
    other = mini.build(tmp_path / "c.h5", seed=1, per_class=per_class, command="test")
    assert not torch.equal(mini.load("train", other).ids, small.ids)


# -- fashion-mnist (full) ------------------------------------------------------------------------
def test_fashion_mnist_reads_ddkit_data_first(tmp_path, monkeypatch):
    for layout in ("", "fashion-mnist", "FashionMNIST/raw"):
        root = tmp_path / f"root{len(layout)}"
        _write_fake_fashion_mnist(root / layout, gz=bool(layout))
        monkeypatch.setenv("DDKIT_DATA", str(root))
        ds = load_dataset("fashion-mnist", "test")
        assert len(ds) == 120 and ds.source == str(root / layout)
        assert torch.equal(ds.ids, torch.arange(120))
        assert torch.equal(ds.images[:, 0], torch.from_numpy(read_idx(next((root / layout).glob("t10k-images*")))))


def test_fashion_mnist_offline_error_names_both_ways(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "search_folders", lambda: [tmp_path])
    calls = []

    def no_network(root):
        calls.append(root)
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(fashion_mnist, "download", no_network)
    with pytest.raises(DatasetUnavailable) as err:
        load_dataset("fashion-mnist", "train")
    text = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in text and "DDKIT_DATA" in text and "internet" in text
    assert calls  # the download was tried (and failed) before giving up


def test_fashion_mnist_rejects_a_foreign_idx_file(tmp_path, monkeypatch):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((4, 32, 32), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(4, np.uint8))
    monkeypatch.setattr(fashion_mnist, "search_folders", lambda: [tmp_path])
    with pytest.raises(FileFormatError, match="N×28×28"):
        load_dataset("fashion-mnist", "test")


@needs_debian
def test_full_fashion_mnist_and_mini_ids_resolve_to_it():
    for split, n, n_mini in (("train", 60000, 5000), ("test", 10000, 2000)):
        full = load_dataset("fashion-mnist", split)
        assert len(full) == n and tuple(full.images.shape) == (n, 1, 28, 28)
        assert full.labels.bincount().tolist() == [n // 10] * 10
        small = load_dataset("fashion-mnist-mini", split)
        assert len(small) == n_mini
        assert torch.equal(small.images, full.images[small.ids])
        assert torch.equal(small.labels, full.labels[small.ids])


@needs_debian
def test_mini_asset_hashes_match_the_debian_files():
    for record in mini.attrs()["source_files"]:
        path = fashion_mnist.DEBIAN_DIR / record["name"]
        if not path.exists():
            pytest.skip(f"{path} not present (the asset was cut from files named differently)")
        assert sha256_file(path) == record["sha256"]


# -- mnist / cifar10 / cifar100 through torchvision -------------------------------------------
class _FakeTorchvision:
    """Stands in for a torchvision dataset class: absent on disk, offline, or present with `data`."""

    present: dict = {}

    def __init__(self, root, train=True, download=False):
        if root in self.present:
            self.data, self.targets, self.classes = self.present[root]
            return
        if download:
            raise urllib.error.URLError("Name or service not known")
        raise RuntimeError("Dataset not found or corrupted.")


@pytest.fixture
def fake_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets

    for cls in ("MNIST", "CIFAR10", "CIFAR100"):
        monkeypatch.setattr(torchvision.datasets, cls, _FakeTorchvision)
    monkeypatch.setattr(torchvision_sources, "data_roots", lambda: [tmp_path / "a", tmp_path / "b"])
    monkeypatch.setattr(torchvision_sources, "download_root", lambda: tmp_path / "dl")
    monkeypatch.setattr(_FakeTorchvision, "present", {})
    torchvision_sources._load_tensors.cache_clear()
    yield tmp_path
    torchvision_sources._load_tensors.cache_clear()


@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar100"])
def test_torchvision_sources_offline_error(fake_torchvision, name):
    with pytest.raises(DatasetUnavailable) as err:
        load_dataset(name, "train")
    assert "DDKIT_DATA" in str(err.value) and "internet" in str(err.value)


def test_torchvision_sources_convert_to_uint8_nchw(fake_torchvision):
    hwc = np.arange(4 * 32 * 32 * 3, dtype=np.uint32).reshape(4, 32, 32, 3).astype(np.uint8)
    _FakeTorchvision.present[str(fake_torchvision / "b")] = (hwc, [0, 1, 2, 1], ["x", "y", "z"])
    ds = load_dataset("cifar100", "train")
    assert tuple(ds.images.shape) == (4, 3, 32, 32) and torch.equal(ds.images[2, 1], torch.from_numpy(hwc[2, :, :, 1]))
    assert ds.info.class_names == ("x", "y", "z") and ds.info.normalization.mean == (0.5071, 0.4865, 0.4409)
    digits = torch.zeros(5, 28, 28, dtype=torch.uint8)
    _FakeTorchvision.present[str(fake_torchvision / "a")] = (digits, torch.arange(5) % 2, ["0", "1"])
    ds = load_dataset("mnist", "test")
    assert tuple(ds.images.shape) == (5, 1, 28, 28) and ds.labels.dtype == torch.int64
    assert ds.info.normalization.std == (0.3081,)


# -- imagefolder ---------------------------------------------------------------------------------
def test_imagefolder_class_order_comes_from_the_map_not_the_listing(imagefolder_root):
    ds = load_dataset(f"imagefolder:{imagefolder_root}", "train")
    assert ds.info.class_names == ("zebra", "apple", "mango")
    # The fixture makes class i brighter with i in map order, so labels follow the map.
    means = [float(ds.pixels(ds.labels == c).mean()) for c in range(3)]
    assert means == sorted(means)
    assert ds.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6 and torch.equal(ds.ids, torch.arange(18))
    assert ds.info.image_shape == (3, 8, 8)


def test_imagefolder_without_class_map_explains_how_to_write_it(tmp_path, make_imagefolder):
    root = make_imagefolder(tmp_path, ["b", "a"])
    with pytest.raises(FileFormatError) as err:
        load_dataset(f"imagefolder:{root}")
    assert "classes.json" in str(err.value) and "write_class_map" in err.value.fix
    path = imagefolder.write_class_map(root, ["b", "a"])
    assert json.loads(path.read_text()) == ["b", "a"]
    assert load_dataset(f"imagefolder:{root}").info.class_names == ("b", "a")
    with pytest.raises(OutputExists):
        imagefolder.write_class_map(root, ["a", "b"])
    imagefolder.write_class_map(root, ["a", "b"], overwrite=True)
    assert load_dataset(f"imagefolder:{root}").info.class_names == ("a", "b")


def test_imagefolder_map_and_folders_must_agree(tmp_path, make_imagefolder):
    root = make_imagefolder(tmp_path, ["a", "b", "c"])
    imagefolder.write_class_map(root, ["a", "b"])
    with pytest.raises(InvalidInput, match=r"folders not in classes.json: \['c'\]"):
        load_dataset(f"imagefolder:{root}")
    imagefolder.write_class_map(root, ["a", "b", "c", "d"], overwrite=True)
    with pytest.raises(InvalidInput, match=r"classes without a folder: \['d'\]"):
        load_dataset(f"imagefolder:{root}")
    with pytest.raises(InvalidInput, match="more than once"):
        imagefolder.write_class_map(root, ["a", "a"], overwrite=True)


def test_imagefolder_mixed_sizes_name_the_files(tmp_path, make_imagefolder):
    root = make_imagefolder(tmp_path, ["a", "b"])
    make_imagefolder(tmp_path, ["b"], {"train": 1}, size=(9, 8), seed=1)  # overwrites b/000.png at 8×9
    imagefolder.write_class_map(root, ["a", "b"])
    with pytest.raises(InvalidInput) as err:
        load_dataset(f"imagefolder:{root}")
    text = str(err.value)
    assert "000.png" in text and "3×8×8" in text and "3×8×9" in text


def test_imagefolder_grayscale_and_bad_paths(tmp_path, make_imagefolder):
    root = make_imagefolder(tmp_path / "gray", ["a", "b"], mode="L")
    imagefolder.write_class_map(root, ["a", "b"])
    ds = load_dataset(f"imagefolder:{root}", "test")
    assert ds.info.image_shape == (1, 8, 8) and len(ds) == 6
    with pytest.raises(InvalidInput, match="needs a path"):
        load_dataset("imagefolder")
    with pytest.raises(DatasetUnavailable, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'nowhere'}")
    (root / "train" / "a" / "bad.png").write_bytes(b"not a png")
    assert len(load_dataset(f"imagefolder:{root}")) == 12  # unreadable files are skipped and counted
    for path in (root / "train" / "b").iterdir():
        path.write_bytes(b"truncated")
    with pytest.raises(InvalidInput, match="class 'b' has no readable images"):
        load_dataset(f"imagefolder:{root}")


# -- procedural --------------------------------------------------------------------------------
def test_procedural_is_fast_sized_and_shares_structure_across_channels():
    start = time.perf_counter()
    images, labels = procedural.generate("train", 3)
    procedural.generate("test", 3)
    assert time.perf_counter() - start < 0.2
    assert images.shape == (400, 3, 16, 16)
    gray = load_dataset("procedural", "train")
    assert torch.equal(gray.labels, torch.from_numpy(labels))
    assert gray.labels.bincount().tolist() == [40] * 10
    assert load_dataset("procedural", "test").labels.bincount().tolist() == [20] * 10
    assert not torch.equal(load_dataset("procedural:3").images[:, 0], load_dataset("procedural:3").images[:, 1])
    with pytest.raises(InvalidInput, match="procedural:3"):
        load_dataset("procedural:2")


def test_procedural_is_learnable_but_not_by_pixel_templates():
    torch.manual_seed(0)
    train, test = load_dataset("procedural", "train"), load_dataset("procedural", "test")
    # Nearest class mean on raw pixels is weak: random phases cancel the gratings in the mean.
    means = torch.stack([train.normalized(train.labels == c).mean(0).flatten() for c in range(10)])
    nearest = torch.cdist(test.normalized().flatten(1), means).argmin(1)
    assert float((nearest == test.labels).float().mean()) < 0.5
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(32, 10),
    )
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    x, y = train.normalized(), train.labels
    for _ in range(20):
        for idx in torch.randperm(len(x)).split(50):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    accuracy = float((net(test.normalized()).argmax(1) == test.labels).float().mean())
    assert accuracy > 0.5, accuracy


# -- IDX reader ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["x-idx3-ubyte", "x-idx3-ubyte.gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_idx_round_trip(tmp_path, name, dtype):
    array = (np.arange(2 * 3 * 4) - 5).reshape(2, 3, 4).astype(dtype) if dtype != np.uint8 else \
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / name, array)
    assert (tmp_path / name).read_bytes()[:2] == (b"\x1f\x8b" if name.endswith(".gz") else b"\x00\x00")
    back = read_idx(tmp_path / name)
    assert back.dtype == np.dtype(dtype) and np.array_equal(back, array)


def test_idx_damage_is_a_file_format_error_naming_the_file(tmp_path):
    path = tmp_path / "images-idx3-ubyte"
    write_idx(path, np.zeros((3, 4, 4), np.uint8))
    data = path.read_bytes()
    cases = {
        "truncated": data[:-5],
        "longer than its header": data + b"\x00",
        "not an IDX file": b"\x08\x03" + data[2:],
        "inside its IDX header": data[:9],
    }
    for message, content in cases.items():
        path.write_bytes(content)
        with pytest.raises(FileFormatError, match=message) as err:
            read_idx(path)
        assert str(path) in str(err.value)
    gz = tmp_path / "cut.gz"
    gz.write_bytes(gzip.compress(data)[:-10])
    with pytest.raises(FileFormatError, match="cut.gz"):
        read_idx(gz)


def test_every_error_is_a_ddkit_error():
    for cls in (DatasetUnavailable, FileFormatError, InvalidInput, OutputExists):
        assert issubclass(cls, DdkitError)
