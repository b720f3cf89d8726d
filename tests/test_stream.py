"""The streamed dataset path: the same samples as the in-memory path, bounded reads, a cached index."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ddkit.data import load_dataset
from ddkit.data.imagefolder import write_class_map
from ddkit.data.stream import StreamedImageDataset, StreamedViews, batches_at, iter_batches, normalized_source
from ddkit.errors import FileFormatError, InvalidInput


@pytest.fixture
def folder(tmp_path, make_imagefolder, monkeypatch):
    monkeypatch.setenv("DDKIT_CACHE", str(tmp_path / "cache"))
    root = make_imagefolder(tmp_path / "f", ["zebra", "apple", "mango"], per_split={"train": 7, "test": 3})
    write_class_map(root, ["zebra", "apple", "mango"])
    return root


def _load(root, split, mode, monkeypatch):
    monkeypatch.setenv("DDKIT_DATA_MODE", mode)
    return load_dataset(f"imagefolder:{root}", split)


@pytest.mark.parametrize("split", ["train", "test"])
def test_streamed_and_in_memory_paths_give_the_same_samples(folder, monkeypatch, split):
    mem = _load(folder, split, "memory", monkeypatch)
    st = _load(folder, split, "stream", monkeypatch)
    assert isinstance(st, StreamedImageDataset) and not isinstance(mem, StreamedImageDataset)
    assert st.info == mem.info and torch.equal(st.labels, mem.labels) and torch.equal(st.ids, mem.ids)
    assert torch.equal(st.images[:], mem.images) and torch.equal(st.normalized(), mem.normalized())
    x, y = st[4]
    assert torch.equal(x, mem[4][0]) and y == mem[4][1]
    picks = [5, 0, 3]
    assert torch.equal(st.subset(picks).pixels(), mem.subset(picks).pixels())
    assert torch.equal(st.subset(picks).ids, mem.subset(picks).ids)
    assert [len(c) for c in st.class_indices()] == [len(c) for c in mem.class_indices()]
    assert torch.equal(st.materialize().images, mem.images)
    assert st.fingerprint() == mem.fingerprint() == st.materialize().fingerprint()  # one definition, both paths
    assert st.subset(picks).fingerprint() == mem.subset(picks).fingerprint() != mem.fingerprint()


@pytest.mark.parametrize("workers", [0, 2])
def test_iter_batches_streams_every_row_once_in_order(folder, monkeypatch, workers):
    mem = _load(folder, "train", "memory", monkeypatch)
    st = _load(folder, "train", "stream", monkeypatch)
    order = np.random.default_rng(0).permutation(len(st))
    for ds in (mem, st):
        got = list(iter_batches(ds, batch_size=4, positions=order, workers=workers))
        assert [len(b.y) for b in got] == [4, 4, 4, 4, 4, 1]
        assert torch.equal(torch.cat([b.positions for b in got]), torch.as_tensor(order))
        assert torch.equal(torch.cat([b.x for b in got]), mem.normalized(torch.as_tensor(order)))
        assert torch.equal(torch.cat([b.y for b in got]), mem.labels[order])


def test_trainer_views_of_a_streamed_set_match_the_tensor(folder, monkeypatch):
    mem = _load(folder, "train", "memory", monkeypatch)
    st = _load(folder, "train", "stream", monkeypatch)
    idx = [torch.tensor([3, 1, 2]), torch.tensor([0, 20]), torch.tensor([7])]
    source = normalized_source(st)
    assert isinstance(source, StreamedViews) and len(source) == len(mem)
    for a, b in zip(batches_at(source, idx), batches_at(normalized_source(mem), idx), strict=True):
        assert torch.equal(a, b)


def test_a_read_beyond_the_memory_limit_is_refused_not_attempted(folder, monkeypatch):
    st = _load(folder, "train", "stream", monkeypatch)
    monkeypatch.setenv("DDKIT_MEMORY_LIMIT", str(3 * 8 * 8 * 5))
    assert st.pixels(slice(0, 5)).shape == (5, 3, 8, 8)
    with pytest.raises(InvalidInput, match="memory limit"):
        st.normalized()
    assert sum(len(b.y) for b in iter_batches(st, batch_size=2)) == 21  # whole passes still work


def test_auto_mode_streams_what_does_not_fit(folder, monkeypatch):
    monkeypatch.setenv("DDKIT_MEMORY_LIMIT", str(3 * 8 * 8 * 10))
    assert isinstance(_load(folder, "train", "auto", monkeypatch), StreamedImageDataset)  # 21 images
    assert not isinstance(_load(folder, "test", "auto", monkeypatch), StreamedImageDataset)  # 9 images
    monkeypatch.setenv("DDKIT_DATA_MODE", "fast")
    with pytest.raises(InvalidInput, match="DDKIT_DATA_MODE"):
        load_dataset(f"imagefolder:{folder}")


def test_the_index_is_cached_and_a_changed_folder_is_reindexed(folder, monkeypatch, capsys):
    first = _load(folder, "train", "stream", monkeypatch)
    capsys.readouterr()
    again = _load(folder, "train", "stream", monkeypatch)
    assert "indexed" not in capsys.readouterr().err and again.fingerprint() == first.fingerprint()
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(folder / "train" / "apple" / "100.png")
    changed = _load(folder, "train", "stream", monkeypatch)
    assert "re-indexing 1 of 22 files" in capsys.readouterr().err
    assert len(changed) == 22 and changed.fingerprint() != first.fingerprint()
    assert torch.equal(changed.pixels(14)[0], torch.full((8, 8), 200 / 255))  # zebra 0-6, apple 7-14


def test_unreadable_files_are_skipped_counted_and_recorded(folder, monkeypatch, capsys):
    (folder / "train" / "mango" / "999.png").write_bytes(b"\x89PNG truncated")
    ds = _load(folder, "train", "stream", monkeypatch)
    assert len(ds) == 21
    err = capsys.readouterr().err
    assert "skipped 1 unreadable image(s) of 22" in err and "999.png" in err


def test_a_file_changed_during_a_run_is_a_clear_error(folder, monkeypatch):
    ds = _load(folder, "train", "stream", monkeypatch)
    (folder / "train" / "zebra" / "000.png").write_bytes(b"gone")
    with pytest.raises(FileFormatError, match="changed during the run"):
        ds.pixels(0)


def test_mixed_sizes_need_a_declared_fit(tmp_path, make_imagefolder, monkeypatch):
    monkeypatch.setenv("DDKIT_CACHE", str(tmp_path / "cache"))
    root = make_imagefolder(tmp_path / "mixed", ["a", "b"], per_split={"train": 2, "test": 1}, size=(12, 9))
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(root / "train" / "a" / "wide.png")
    write_class_map(root, ["a", "b"])
    with pytest.raises(InvalidInput, match="ddkit-folder.json"):
        load_dataset(f"imagefolder:{root}")
    (root / "ddkit-folder.json").write_text(json.dumps({"image_size": 8, "resize": 10}))
    for mode in ("memory", "stream"):
        ds = _load(root, "train", mode, monkeypatch)
        assert ds.info.image_shape == (3, 8, 8) and ds.pixels().shape == (5, 3, 8, 8)
    imagenet = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    (root / "ddkit-folder.json").write_text(json.dumps({"image_size": 8, "resize": 10, "normalization": imagenet}))
    assert load_dataset(f"imagefolder:{root}", "test").info.normalization.to_dict() == imagenet
    (root / "ddkit-folder.json").write_text(json.dumps({"image_size": "8"}))
    with pytest.raises(InvalidInput, match="image_size must be an integer"):
        load_dataset(f"imagefolder:{root}")


def test_teacher_training_streams_to_the_same_teacher(folder, monkeypatch, tmp_path):
    from ddkit.teachers import train_teacher

    monkeypatch.setenv("DDKIT_WORKERS", "0")  # worker processes are covered above; here they only cost time
    runs = {}
    for mode in ("memory", "stream"):
        monkeypatch.setenv("DDKIT_DATA_MODE", mode)
        runs[mode] = train_teacher(tmp_path / f"{mode}.safetensors", f"imagefolder:{folder}", model="convnet-bn",
                                   model_kwargs={"width": 8, "depth": 2}, epochs=2, batch_size=4, device="cpu")
    assert runs["stream"].history == runs["memory"].history
    assert runs["stream"].header.test_accuracy == runs["memory"].header.test_accuracy


def test_evaluation_streams_full_data_and_test_split_to_the_same_card(folder, monkeypatch, tmp_path):
    from ddkit.evaluate import evaluate

    monkeypatch.setenv("DDKIT_WORKERS", "0")
    cards = {}
    for mode in ("memory", "stream"):
        monkeypatch.setenv("DDKIT_DATA_MODE", mode)
        monkeypatch.setenv("DDKIT_CACHE", str(tmp_path / mode))  # no reference shared between the two
        cards[mode] = evaluate(f"random:imagefolder:{folder}:2", "hard-cpu@2", seeds=[0, 1], steps=6, device="cpu",
                               ranking=False, write_card=False)
    assert cards["stream"].full_data.accuracies == cards["memory"].full_data.accuracies
    assert cards["stream"].result.accuracies == cards["memory"].result.accuracies
