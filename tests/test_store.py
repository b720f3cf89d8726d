"""The `.ddk.h5` store: round trips, content hash, lazy reading under DataLoader workers, refusals,
atomic writes (including a real kill -9), validation, description and rendering."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from helpers import edit
from PIL import Image

import ddkit.store.h5io as h5io
from ddkit.data.base import DatasetInfo, ImageDataset, Normalization
from ddkit.errors import FileFormatError, IncompatibleError, InvalidInput, OutputExists
from ddkit.store import (
    PAYLOADS,
    SCHEMA,
    AdditiveComposite,
    DBRLabels,
    DistilledDataset,
    DistilledSet,
    GenericPayload,
    LogitsLabels,
    Selection,
    TopKLabels,
    add_result,
    describe,
    info_dict,
    read_results,
    render_grid,
    validate_file,
    write_distilled,
    write_selection,
)

K, SHAPE = 4, (3, 8, 8)


def make_source(n: int = 40, seed: int = 0) -> ImageDataset:
    info = DatasetInfo("toy", tuple(f"class{i}" for i in range(K)), SHAPE, Normalization((0.5, 0.4, 0.3), (0.2, 0.25, 0.3)))
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *SHAPE), dtype=torch.uint8, generator=g)
    return ImageDataset(info, "train", images, torch.arange(n) % K)


def make_set(
    per_class: int = 2, with_composite: bool = True, schemes: tuple[str, ...] = ("logits",), seed: int = 0, **overrides
) -> DistilledSet:
    """A small distilled set: `per_class` images per class, 2 compensators over 4 images each, payloads
    of `schemes`; `overrides` replace any DistilledSet field."""
    g = torch.Generator().manual_seed(seed)
    n = per_class * K
    comp = None
    if with_composite:
        members = torch.randperm(n, generator=g)[:8].view(2, 4)
        comp = AdditiveComposite(torch.randn(2, *SHAPE, generator=g) * 0.3, members, {"group_of": np.array([0, 1])})
    n_inst = n + (8 if with_composite else 0)
    payloads = {
        "logits": lambda: LogitsLabels(torch.randn(n_inst, K, generator=g) * 3, meta={"teachers": ["t0"], "T": 1.0}),
        "topk": lambda: TopKLabels(torch.randint(0, K, (n_inst, 2), generator=g), torch.rand(n_inst, 2, generator=g)),
        "dbr": lambda: DBRLabels(
            torch.rand(3, n_inst, generator=g), torch.rand(3, n_inst, generator=g), "cutmix-v1",
            {"seeds": np.arange(3, dtype=np.int64), "lam": np.random.default_rng(seed).random((3, n_inst))},
        ),
    }
    fields = dict(
        method="toy", method_version="1.2", config={"lr": 0.1, "steps": [1, 2]}, seed=seed,
        images=torch.rand(n, *SHAPE, generator=g), labels=torch.arange(n) % K, ipc=per_class + 1,
        soft={s: payloads[s]() for s in schemes}, composite=comp,
        teachers=[{"arch": "convnet", "sha256": "ab" * 32, "accuracy": 0.9}],
    )
    fields.update(overrides)
    return DistilledSet.from_source(make_source(), **fields)


def write(tmp_path: Path, dset: DistilledSet | None = None, name: str = "set.ddk.h5") -> Path:
    path = tmp_path / name
    write_distilled(path, dset or make_set())
    return path


def expected_pixels(dset: DistilledSet) -> torch.Tensor:
    """What the reader must return: stored float16 images, then clamp(base + compensator) in float32."""
    base = dset.images.half().float()
    if dset.composite is None:
        return base
    members = torch.from_numpy(dset.composite.members)
    comps = torch.from_numpy(dset.composite.compensators)
    composed = (base[members.reshape(-1)] + comps.repeat_interleave(members.shape[1], 0)).clamp(0, 1)
    return torch.cat([base, composed])


# -- round trips ----------------------------------------------------------------------------------


def test_round_trip_images_labels_header(tmp_path):
    dset = make_set()
    path = tmp_path / "set.ddk.h5"
    digest = write_distilled(path, dset)
    ds = DistilledDataset(path)
    assert ds.content_sha256 == digest
    assert len(ds) == 8 + 8 and ds.num_stored == 8
    assert torch.equal(ds.pixels(), expected_pixels(dset))
    assert torch.equal(ds.labels, dset.instance_labels())
    h = ds.header
    assert (h.method, h.method_version, h.seed, h.config) == ("toy", "1.2", 0, {"lr": 0.1, "steps": [1, 2]})
    assert h.dataset == dset.dataset and ds.info == dset.dataset.info
    assert h.teachers == dset.teachers and h.created.endswith("Z")
    assert write_distilled(tmp_path / "again.ddk.h5", dset) == digest  # the hash depends on the data only
    with h5py.File(path) as f:
        assert f["images"].dtype == np.float16 and f["labels"].dtype == np.int64
        assert f["images"].compression == "gzip" and f["images"].chunks[0] <= 2  # ≤ one class's worth
        assert f.attrs["format"] == "ddkit.distilled" and f.attrs["schema"] == 1
        assert json.loads(f.attrs["dataset"])["num_classes"] == K


def test_budget_counts_what_is_stored(tmp_path):
    dset = make_set()
    b = DistilledDataset(write(tmp_path, dset)).budget
    n_img = 8 * int(np.prod(SHAPE))
    assert b.bytes_images == 2 * n_img
    assert b.bytes_by_part["labels"] == 8 * 8 and b.bytes_by_part["soft/logits"] == 16 * K * 2
    assert b.bytes_labels == 8 * 8 + 16 * K * 2
    assert b.bytes_aux == b.bytes_by_part["composite"] == 2 * int(np.prod(SHAPE)) * 4 + 8 * 8 + 2 * 8
    assert b.ratio == pytest.approx(b.bytes_total / (40 * int(np.prod(SHAPE))))
    assert (b.ipc_stored, b.instances, b.instances_per_class) == (3, 16, 4.0)


def test_uint8_storage_is_lossless(tmp_path):
    src = make_source()
    dset = make_set(with_composite=False, schemes=(), images=src.images[:8])
    ds = DistilledDataset(write(tmp_path, dset))
    with h5py.File(ds.path) as f:
        assert f["images"].dtype == np.uint8
    assert torch.equal(ds.pixels(), src.images[:8].float() / 255)
    exact = src.images[:8].float() / 255  # float multiples of 1/255 may be stored as uint8 on request
    ds2 = DistilledDataset(write(tmp_path, make_set(with_composite=False, schemes=(), images=exact, image_dtype="uint8"), "b.ddk.h5"))
    assert torch.equal(ds2.pixels(), ds.pixels())
    with pytest.raises(InvalidInput, match="uint8 storage would change"):
        write(tmp_path, make_set(with_composite=False, schemes=(), image_dtype="uint8"), "c.ddk.h5")


PAYLOAD_EXAMPLES = {"logits", "topk", "dbr"}


def test_every_registered_payload_has_a_round_trip_example():
    assert set(PAYLOADS.names()) == PAYLOAD_EXAMPLES, "add the new scheme to make_set and PAYLOAD_EXAMPLES"


@pytest.mark.parametrize("scheme", sorted(PAYLOAD_EXAMPLES))
def test_payload_round_trip(tmp_path, scheme):
    dset = make_set(schemes=(scheme,))
    stored = DistilledDataset(write(tmp_path, dset)).soft[scheme]
    given = dset.soft[scheme]
    assert type(stored) is type(given) and stored.meta == given.meta and stored.fields() == given.fields()
    assert stored.arrays().keys() == given.arrays().keys()
    for name, array in given.arrays().items():
        assert stored.arrays()[name].dtype == array.dtype
        np.testing.assert_array_equal(stored.arrays()[name], array)


def test_unknown_scheme_reads_as_generic_payload_and_survives_a_rewrite(tmp_path):
    future = GenericPayload("future", {"a": np.arange(6).reshape(2, 3), "b/c": np.ones(2, np.float16)}, {"x": 1}, meta={"m": 2})
    path = write(tmp_path, make_set(with_composite=False, soft={"future": future}))
    stored = DistilledDataset(path).soft["future"]
    assert isinstance(stored, GenericPayload) and stored.scheme == "future"
    assert stored.fields() == {"x": 1} and stored.meta == {"m": 2}
    np.testing.assert_array_equal(stored.arrays()["b/c"], np.ones(2, np.float16))
    again = write(tmp_path, make_set(with_composite=False, soft={"future": stored}), "again.ddk.h5")
    assert DistilledDataset(again).content_sha256 == DistilledDataset(path).content_sha256


def test_composite_round_trip(tmp_path):
    dset = make_set(schemes=())
    ds = DistilledDataset(write(tmp_path, dset))
    assert isinstance(ds.composite, AdditiveComposite)
    np.testing.assert_array_equal(ds.composite.members, dset.composite.members)
    np.testing.assert_array_equal(ds.composite.compensators, dset.composite.compensators)
    np.testing.assert_array_equal(ds.composite.extra["group_of"], [0, 1])
    expected = expected_pixels(dset)
    for i in (0, 7, 8, 11, 12, 15):  # per-item reads compose exactly like the bulk read
        assert torch.equal(ds.pixels([i])[0], expected[i])
    assert torch.equal(ds.pixels([15, 0, 15, 9]), expected[[15, 0, 15, 9]])


def test_getitem_normalizes_and_applies_transforms(tmp_path):
    dset = make_set()
    ds = DistilledDataset(write(tmp_path, dset), transform=lambda x: x * 2, target_transform=lambda y: y + 100)
    x, y = ds[-1]
    norm = dset.dataset.info.normalization
    assert torch.allclose(x, 2 * norm.apply(expected_pixels(dset)[-1])) and y == int(dset.instance_labels()[-1]) + 100
    with pytest.raises(IndexError):
        ds[len(ds)]
    assert "DistilledDataset toy" in repr(ds) and "Number of datapoints: 16" in repr(ds)


def test_reader_under_dataloader_workers_matches_single_process(tmp_path):
    ds = DistilledDataset(write(tmp_path))
    ds[0]  # the parent holds an open handle when the workers fork

    def load(workers):
        loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=workers)
        xs, ys = zip(*loader, strict=True)
        return torch.cat(xs), torch.cat(ys)

    x0, y0 = load(0)
    x2, y2 = load(2)
    assert torch.equal(x0, x2) and torch.equal(y0, y2)
    clone = pickle.loads(pickle.dumps(ds))  # what spawned workers receive: the path, no handle
    assert clone._handle is None and torch.equal(clone[3][0], ds[3][0])


# -- content hash and results ---------------------------------------------------------------------


def test_content_hash_ignores_results_but_not_payload_bytes(tmp_path):
    path = write(tmp_path)
    digest = DistilledDataset(path).content_sha256
    add_result(path, "convnet-cpu", {"result": {"mean": 0.61}, "content_sha256": digest})
    add_result(path, "convnet-cpu", {"result": {"mean": 0.62}})  # replaces the card
    ds = DistilledDataset(path, verify=True)
    assert ds.content_sha256 == digest
    assert ds.results == {"convnet-cpu": {"result": {"mean": 0.62}}}
    assert not list(tmp_path.glob("*.tmp"))
    with edit(path) as f:
        f["soft/logits/values"][0, 0] = np.float16(f["soft/logits/values"][0, 0] + 1)
    with pytest.raises(FileFormatError, match="content hash mismatch: the file was modified or corrupted"):
        DistilledDataset(path)
    DistilledDataset(path, verify=False)  # explicitly unverified opens still work
    with pytest.raises(InvalidInput, match="verify must be"):
        DistilledDataset(path, verify="yes")


def test_add_result_refusals(tmp_path):
    path = write(tmp_path)
    with pytest.raises(IncompatibleError, match="card is for content"):
        add_result(path, "p", {"result": {"mean": 1.0}, "content_sha256": "0" * 64})
    with pytest.raises(InvalidInput, match="not a valid name"):
        add_result(path, "a/b", {})
    with pytest.raises(InvalidInput, match="cannot be stored as JSON"):
        add_result(path, "p", {"result": {"mean": float("nan")}})
    assert read_results(path) == {}


# -- refusals on read -----------------------------------------------------------------------------


def test_truncated_file_is_refused(tmp_path):
    path = write(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError, match="is damaged: its bytes do not match the checksum"):
        DistilledDataset(path)


def test_random_bytes_and_missing_files_are_refused(tmp_path):
    path = tmp_path / "noise.ddk.h5"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(FileFormatError, match="is not a readable HDF5 file"):
        DistilledDataset(path)
    with pytest.raises(FileFormatError, match="does not exist"):
        DistilledDataset(tmp_path / "missing.ddk.h5")


def test_foreign_hdf5_and_other_kinds_are_refused(tmp_path):
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["images"] = np.zeros((2, *SHAPE))
        f.attrs["format"] = "ddkit.distilled"  # even claiming the format does not make it a ddkit file
    with pytest.raises(FileFormatError, match="not a ddkit distilled dataset.*without ddkit's seal"):
        DistilledDataset(plain)
    sealed_other_kind = tmp_path / "other.ddk.h5"
    write(tmp_path)
    write_selection(sealed_other_kind, Selection(method="m", method_version="1", config={}, seed=0,
                                                 pool={"name": "p", "split": "train", "size": 5, "fingerprint": "f",
                                                       "ids_sha256": "i"}, ids=np.arange(3)))
    with pytest.raises(FileFormatError, match="is a ddkit selection file"):
        DistilledDataset(sealed_other_kind)


def test_newer_schema_is_refused_with_upgrade_hint(tmp_path):
    path = write(tmp_path)
    with edit(path) as f:
        f.attrs["schema"] = SCHEMA + 1
    with pytest.raises(FileFormatError, match=f"schema {SCHEMA + 1}") as err:
        DistilledDataset(path)
    assert "pip install -U ddkit" in str(err.value)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: f.__delitem__("labels"), "has no /labels dataset"),
        (lambda f: f.attrs.__delitem__("budget"), "budget"),
        (lambda f: f.attrs.__setitem__("config", "{not json"), "'config' is not valid JSON"),
        (lambda f: f.attrs.__setitem__("config", "[1]"), "config must be a JSON object"),
        (lambda f: f.attrs.__setitem__("teachers", "x" * ((1 << 20) + 1)), "byte limit"),
        (lambda f: f["labels"].__setitem__(0, 99), "labels span"),
        (lambda f: f["composite/members"].__setitem__((0, 0), 99), "members span"),
        (lambda f: f["composite"].attrs.__setitem__("kind", "warp"), "does not know"),
        (lambda f: f["soft/logits"].attrs.__setitem__("meta", "{"), "soft/logits meta is not valid JSON"),
    ],
)
def test_damaged_files_are_refused_with_file_format_error(tmp_path, damage, message):
    path = write(tmp_path)
    with edit(path) as f:
        damage(f)
    with pytest.raises(FileFormatError, match=message):
        _ = DistilledDataset(path, verify=False).soft


# -- refusals on write, atomicity -----------------------------------------------------------------


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: make_set(images=torch.full((8, *SHAPE), float("nan"))), "NaN"),
        (lambda: make_set(images=torch.full((8, *SHAPE), 1.5)), "outside \\[0, 1\\]"),
        (lambda: make_set(images=torch.rand(8, 3, 9, 8)), "expected \\(3, 8, 8\\)"),
        (lambda: make_set(labels=torch.arange(8) % K + 1), "labels span"),
        (lambda: make_set(with_composite=False, soft={"logits": LogitsLabels(torch.zeros(9, K))}), "9 rows"),
        (lambda: make_set(schemes=(), composite=AdditiveComposite(torch.zeros(1, *SHAPE), [[0, 8]])), "members span"),
        (lambda: make_set(ipc=1), "exceed the budget"),
        (lambda: make_set(config={"f": object()}), "cannot be stored as JSON"),
        (lambda: make_set(config={"big": "x" * (1 << 20)}), "byte limit"),
        (lambda: make_set(teachers=[{"arch": "convnet"}]), "sha256"),
        (lambda: make_set(config=[1, 2]), "config must be a dict"),
        (lambda: make_set(soft={"topk": LogitsLabels(torch.zeros(16, K))}), "has scheme"),
    ],
)
def test_invalid_sets_are_refused_before_any_file_exists(tmp_path, build, message):
    with pytest.raises(InvalidInput, match=message):
        write_distilled(tmp_path / "out" / "set.ddk.h5", build())
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_existing_output_needs_overwrite(tmp_path):
    path = write(tmp_path)
    before = path.read_bytes()
    with pytest.raises(OutputExists):
        write_distilled(path, make_set(seed=1))
    assert path.read_bytes() == before
    write_distilled(path, make_set(seed=1), overwrite=True)
    assert DistilledDataset(path).header.seed == 1


def test_failure_midway_leaves_no_file_and_no_tmp(tmp_path, monkeypatch):
    original = h5io.create_dataset
    calls = []

    def failing(group, name, *args, **kwargs):
        calls.append(name)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return original(group, name, *args, **kwargs)

    monkeypatch.setattr(h5io, "create_dataset", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_distilled(tmp_path / "set.ddk.h5", make_set())
    assert len(calls) == 3 and list(tmp_path.iterdir()) == []


KILL_SCRIPT = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
import torch
import ddkit.store.h5io as h5io
from ddkit.store import write_distilled
from test_store import make_set

import contextlib
original = h5io.atomic_output

@contextlib.contextmanager
def slow(path, overwrite=False):
    # Stop after the bytes are on disk under the temporary name, before the rename.
    with original(path, overwrite) as tmp:
        yield tmp
        Path({marker!r}).touch()
        time.sleep(120)

h5io.atomic_output = slow
dset = make_set(per_class=2000, with_composite=False, schemes=())  # 8000 images, 3 MB as float16
write_distilled({out!r}, dset)
"""


def test_kill_9_while_writing_leaves_no_file_under_the_final_name(tmp_path):
    out, marker = tmp_path / "big.ddk.h5", tmp_path / "writing"
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), marker=str(marker), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the writer never reached the middle of the write"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    assert list(tmp_path.glob(".big.ddk.h5.*.tmp")), "the half-written file lived under a temporary name"


# -- validate, describe, render -------------------------------------------------------------------


def test_validate_passes_a_good_file_and_checks_the_teacher(tmp_path):
    path = write(tmp_path)
    report = validate_file(path, num_classes=K, image_shape=SHAPE)
    assert report.ok, str(report)
    assert {"content hash", "class coverage", "teacher label space", "teacher input shape"} <= set(report.checks)
    report = validate_file(path, num_classes=10, image_shape=(1, 28, 28))
    assert not report.ok and len(report.problems) == 2
    assert any("teacher label space" in p and "10" in p for p in report.problems)
    assert "[FAIL]" in str(report)


def test_validate_finds_a_missing_class(tmp_path):
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])  # class 3 never appears
    path = write(tmp_path, make_set(labels=labels))
    report = validate_file(path)
    assert not report.ok and report.problems == ["class coverage: classes 3 (class3) have no instance"]


def test_validate_finds_a_hash_mismatch_after_a_changed_pixel(tmp_path):
    path = write(tmp_path)
    with edit(path) as f:
        f["images"][0, 0, 0, 0] = np.float16(0.5) if f["images"][0, 0, 0, 0] != 0.5 else np.float16(0.25)
    report = validate_file(path)
    assert [p.split(":")[0] for p in report.problems] == ["content hash"]
    assert "modified or corrupted" in report.problems[0]


def test_validate_reports_unreadable_files_instead_of_raising(tmp_path):
    path = tmp_path / "noise.ddk.h5"
    path.write_bytes(b"\0" * 100)
    report = validate_file(path)
    assert not report.ok and "not a readable HDF5 file" in report.problems[0]


def test_describe_and_info_dict(tmp_path):
    path = write(tmp_path)
    add_result(path, "convnet-cpu", {"result": {"mean": 0.615, "std": 0.004}, "random_baseline": {"mean": 0.5025, "std": 0.01}})  # fractions, as ddkit evaluate writes them
    info = info_dict(path)
    json.dumps(info)
    assert info["instances"] == 16 and info["compensators"] == 2 and info["instances_per_class"]["class0"] == 4
    text = describe(path)
    for fragment in ("toy 1.2", "toy (train), 4 classes, 3×8×8", "16 from 8 stored images + 2 compensators",
                     "soft/logits", "composite", "convnet (sha256 abababababab", "61.50 ± 0.40", "+11.25"):
        assert fragment in text, (fragment, text)


def test_render_grid_instances_and_compensators(tmp_path):
    path = write(tmp_path)
    render_grid(path, tmp_path / "grid.png", per_class=3)
    with Image.open(tmp_path / "grid.png") as img:
        assert img.mode == "RGB" and img.height == 4 * (48 + 2) + 2  # one row per class, 8 px upscaled ×6
    with pytest.raises(OutputExists):
        render_grid(path, tmp_path / "grid.png")
    render_grid(path, tmp_path / "comp.png", per_class=1, what="compensators")
    with Image.open(tmp_path / "comp.png") as img:
        assert img.size == (48 + 2 + 2, 2 * (48 + 2) + 2)
    plain = write(tmp_path, make_set(with_composite=False, schemes=()), "plain.ddk.h5")
    with pytest.raises(InvalidInput, match="no compensators"):
        render_grid(plain, tmp_path / "none.png", what="compensators")
    assert not (tmp_path / "none.png").exists()
