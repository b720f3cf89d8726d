"""Expert trajectories: the file round trip, plain SGD against a hand loop, refusal of damaged,
foreign and mismatched files, resume equals uninterrupted, and the command line on `procedural`."""

from __future__ import annotations

import dataclasses
import json

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import edit, kill_at_call, one_thread, run_cli as _cli  # noqa: F401 (one_thread: autouse)

import ddkit.experts as experts_mod
from ddkit.augment import build_augmentation
from ddkit.data import load_dataset
from ddkit.data.base import ImageDataset, Normalization
from ddkit.errors import FileFormatError, IncompatibleError, InvalidInput
from ddkit.experts import ExpertTraining, flatten_params, load_experts, train_experts
from ddkit.models import create_model
from ddkit.seeding import generator

pytestmark = pytest.mark.usefixtures("quiet")  # no progress lines; a cache of each test's own

ARCH = {"width": 4, "depth": 2}
TRAIN = ExpertTraining(epochs=3, batch_size=128)


@pytest.fixture(scope="module")
def experts_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("experts") / "p.experts.h5"
    train_experts(out, "procedural", "convnet", ARCH, 2, TRAIN, seed=0)
    return out


def test_round_trip(experts_file):
    ex = load_experts(experts_file, load_dataset("procedural", "train"), arch="convnet", arch_kwargs=ARCH)
    h = ex.header
    model = create_model("convnet", 1, 16, 10, **ARCH)
    p = sum(q.numel() for q in model.parameters())
    assert ex.params.shape == (2, 4, p) and ex.params.dtype == torch.float32
    assert h.num_params == p and [n for n, _ in h.param_layout] == [n for n, _ in model.named_parameters()]
    assert h.training == {"epochs": 3, "lr": 0.01, "momentum": 0.0, "weight_decay": 0.0, "batch_size": 128, "augmentation": "dsa"}
    assert h.dataset["name"] == "procedural" and h.dataset["num_classes"] == 10 and h.dataset["image_shape"] == [1, 16, 16]
    assert h.normalization == load_dataset("procedural").info.normalization.to_dict()
    assert h.created.endswith("Z") and len(h.expert_seeds) == 2 and h.params_sha256
    for i in range(2):  # epoch 0 is each expert's own initialization
        init = create_model("convnet", 1, 16, 10, seed=h.expert_seeds[i], **ARCH)
        assert torch.equal(ex.params[i, 0], flatten_params(init))
        assert not torch.equal(ex.params[i, 1], ex.params[i, 0])
    assert not torch.equal(ex.params[0, 0], ex.params[1, 0])
    with h5py.File(experts_file, "r") as f:
        assert f.attrs["format"] == "ddkit.experts" and json.loads(f.attrs["header"])["format"] == "ddkit.experts"


def test_first_epoch_is_plain_sgd_by_hand(experts_file):
    """Epoch 1 = epoch 0 followed by p ← p − lr·∇ on each shuffled, DSA-augmented batch (no momentum, no decay)."""
    ex = load_experts(experts_file)
    source = load_dataset("procedural", "train")
    x, y = source.normalized(), source.labels
    model = create_model("convnet", 1, 16, 10, seed=ex.header.expert_seeds[1], **ARCH)
    order = torch.randperm(len(x), generator=generator(0, "expert-batches", 1, 0))
    aug, aug_gen = build_augmentation("dsa"), generator(0, "expert-augment", 1, 0)
    for s in range(0, len(x), 128):
        idx = order[s : s + 128]
        loss = F.cross_entropy(model(aug(x[idx], aug_gen)), y[idx])
        grads = torch.autograd.grad(loss, list(model.parameters()))
        with torch.no_grad():
            for p, g in zip(model.parameters(), grads):
                p -= 0.01 * g
    torch.testing.assert_close(ex.params[1, 1], flatten_params(model), rtol=1e-5, atol=1e-6)


def test_damaged_and_foreign_files_are_refused(experts_file, tmp_path):
    data = experts_file.read_bytes()
    truncated = tmp_path / "t.experts.h5"
    truncated.write_bytes(data[: len(data) // 2])
    flipped = tmp_path / "f.experts.h5"
    flipped.write_bytes(data[:-100] + bytes([data[-100] ^ 1]) + data[-99:])
    for path in (truncated, flipped):
        with pytest.raises(FileFormatError, match="damaged|not a readable"):
            load_experts(path)
    edited = tmp_path / "e.experts.h5"  # re-sealed after the edit: the params hash must catch it
    edited.write_bytes(data)
    with edit(edited) as f:
        f["params"][0, 1, 0] += 1.0
    with pytest.raises(FileFormatError, match="params hash mismatch"):
        load_experts(edited)
    foreign = tmp_path / "x.h5"
    with h5py.File(foreign, "w") as f:
        f["params"] = np.zeros((1, 2, 3), np.float32)
    with pytest.raises(FileFormatError, match="without ddkit's seal"):
        load_experts(foreign)
    other = tmp_path / "o.experts.h5"  # a sealed ddkit file of another kind
    other.write_bytes(data)
    with edit(other) as f:
        f.attrs["format"] = "ddkit.distilled"
    with pytest.raises(FileFormatError, match="not a ddkit experts file"):
        load_experts(other)
    newer = tmp_path / "n.experts.h5"
    newer.write_bytes(data)
    with edit(newer) as f:
        f.attrs["schema"] = 2
    with pytest.raises(FileFormatError, match="newer ddkit"):
        load_experts(newer)
    with pytest.raises(FileFormatError, match="does not exist"):
        load_experts(tmp_path / "missing.experts.h5")


def test_mismatched_dataset_and_arch_are_refused(experts_file):
    with pytest.raises(IncompatibleError, match="fashion-mnist-mini"):
        load_experts(experts_file, load_dataset("fashion-mnist-mini", "train"))
    with pytest.raises(IncompatibleError, match="not on 'procedural:3'"):
        load_experts(experts_file, load_dataset("procedural:3", "train"))
    with pytest.raises(IncompatibleError, match="not of convnet-bn"):
        load_experts(experts_file, arch="convnet-bn")
    with pytest.raises(IncompatibleError, match="not of convnet"):
        load_experts(experts_file, arch="convnet", arch_kwargs={"width": 8})
    ex = load_experts(experts_file)
    subset = load_dataset("procedural", "train")
    subset = subset.subset(np.arange(200))
    with pytest.raises(IncompatibleError, match="sample id list"):
        ex.check_fits(subset)
    full = load_dataset("procedural", "train")
    renormed = ImageDataset(dataclasses.replace(full.info, normalization=Normalization((0.5,), (0.5,))), "train",
                            full.images, full.labels)
    with pytest.raises(IncompatibleError, match="normalization"):
        ex.check_fits(renormed)


def test_resume_equals_uninterrupted(experts_file, tmp_path, monkeypatch):
    out = tmp_path / "r.experts.h5"
    calls = kill_at_call(monkeypatch, experts_mod, "train_epoch", 5)  # expert 0 finished (3 epochs), expert 1 at 1
    with pytest.raises(KeyboardInterrupt):
        train_experts(out, "procedural", "convnet", ARCH, 2, TRAIN, seed=0)
    work = tmp_path / "r.experts.h5.work"
    assert not out.exists() and (work / "expert000.npz").exists() and (work / "expert001-partial.npz").exists()
    with pytest.raises(InvalidInput, match="different run"):
        train_experts(out, "procedural", "convnet", ARCH, 2, ExpertTraining(epochs=3, lr=0.02, batch_size=128), resume=True)
    calls["n"] = -100
    r = train_experts(out, "procedural", "convnet", ARCH, 2, TRAIN, seed=0, resume=True)
    assert calls["n"] == -100 + 2 and r.epochs_trained == 2  # only expert 1's epochs 2 and 3 were trained
    assert not work.exists()
    with load_experts(out) as a, load_experts(experts_file) as b:
        assert a.header.params_sha256 == b.header.params_sha256
        assert all(torch.equal(a.params.trajectory(i), b.params.trajectory(i)) for i in range(2))


def test_cli(capsys, tmp_path, experts_file):
    out = tmp_path / "c.experts.h5"
    args = ["experts", "train", "--dataset", "procedural", "--model", "convnet", "--model-opt", "width=4", "--model-opt",
            "depth=2", "--experts", "1", "--epochs", "1", "--augmentation", "crop-flip", "--out", out]
    code, text, err = _cli(capsys, *args)
    assert code == 0, err
    assert "1 experts × 1 epochs" in text and "per expert-epoch" in text
    assert load_experts(out).header.training["augmentation"] == "crop-flip"
    code, _, err = _cli(capsys, *args)
    assert code == 2 and "already exists" in err
    code, text, err = _cli(capsys, "experts", "info", str(experts_file))
    assert code == 0 and "2 experts × 3 epochs of convnet" in text
    bn = tmp_path / "bn.experts.h5"
    code, _, err = _cli(capsys, "experts", "train", "--dataset", "procedural", "--model", "convnet-bn", "--epochs", "1",
                        "--out", bn)
    assert code == 2 and "BatchNorm" in err and not bn.exists() and not (tmp_path / "bn.experts.h5.work").exists()
    code, _, err = _cli(capsys, "experts", "train", "--dataset", "procedural", "--augmentation", "blur", "--out", bn)
    assert code == 2 and "unknown augmentation" in err and "Traceback" not in err


def test_the_file_is_read_vector_by_vector(tmp_path):
    """The loader checks a ~24 MB buffer holding one parameter vector at a time (the seal and the params
    hash are both streamed), and `params[i, e]` reads one vector from the file."""
    import tracemalloc

    from ddkit.data import load_dataset
    from ddkit.experts import ExpertsHeader, dataset_record, param_layout, write_experts
    from ddkit.models import create_model

    source = load_dataset("procedural", "train")
    info = source.info
    model = create_model("convnet", info.image_shape[0], info.image_shape[1], info.num_classes, seed=0, width=128)
    layout = param_layout(model)
    n, epochs, p = 2, 9, sum(int(np.prod(s)) for _, s in layout)  # 2 × 10 × ~300k float32 ≈ 24 MB
    header = ExpertsHeader(arch="convnet", arch_kwargs={"width": 128}, dataset=dataset_record(source),
                           normalization=info.normalization.to_dict(),
                           training={"epochs": epochs, "lr": 0.01, "momentum": 0.0, "weight_decay": 0.0,
                                     "batch_size": 8, "augmentation": "none"},
                           num_experts=n, seed=0, expert_seeds=[0, 1], param_layout=layout, num_params=p)
    rng = np.random.default_rng(0)
    trajectories = [rng.standard_normal((epochs + 1, p), dtype=np.float32) for _ in range(n)]
    path = tmp_path / "big.experts.h5"
    write_experts(path, header, trajectories)
    whole, expected = n * (epochs + 1) * p * 4, trajectories[1][-1].copy()
    del trajectories
    tracemalloc.start()
    try:
        experts = load_experts(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < whole / 4, f"loading held {peak} bytes of a {whole}-byte buffer"  # reading it whole: > whole
    with experts:
        assert experts.params.reads == n * (epochs + 1)  # the streamed params hash: each vector once
        v = experts.params[1, -1]
        assert np.array_equal(v.numpy(), expected) and experts.params.reads == n * (epochs + 1) + 1
        with pytest.raises(IndexError, match="one vector at a time"):
            experts.params[1]
        with pytest.raises(IndexError, match="out of range"):
            experts.params[2, 0]
    with pytest.raises(ValueError, match="closed"):
        experts.params[0, 0]
