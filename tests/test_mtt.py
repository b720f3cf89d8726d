"""MTT: the constant-memory meta-gradient equals naive unrolling (images, step size, soft labels),
the matching loss and minibatch schedule by hand, the command line end to end on `procedural`
(a valid file, learned step size recorded, DATM soft labels), resume equals uninterrupted, and bad
input refused with exit code 2 and no output."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from helpers import one_thread, run_cli as _cli  # noqa: F401 (one_thread: autouse)

import ddkit.synth.mtt as mtt_mod
from ddkit.augment import build_augmentation
from ddkit.errors import IncompatibleError, InvalidInput
from ddkit.experts import ExpertTraining, flatten_params, param_layout, train_experts
from ddkit.models import create_model
from ddkit.store import DistilledDataset
from ddkit.synth import SYNTHESIZERS, run_synthesizer
from ddkit.synth.mtt import StudentSteps, matching_loss, meta_gradient_constant, meta_gradient_unrolled, minibatches

pytestmark = pytest.mark.usefixtures("quiet")  # no progress lines; a cache of each test's own

TINY = {"iterations": 3, "syn_steps": 3, "max_start_epoch": 1, "expert_epochs": 1, "lr_img": 10.0}


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    out = tmp_path_factory.mktemp("mtt-experts") / "p.experts.h5"
    train_experts(out, "procedural", "convnet", {"width": 4, "depth": 2}, 2, ExpertTraining(epochs=2, batch_size=128), seed=0)
    return str(out)


@pytest.fixture(scope="module")
def synthesized(experts, tmp_path_factory):
    out = tmp_path_factory.mktemp("mtt") / "m.ddk.h5"
    run_synthesizer("mtt", "procedural", [], 2, {"experts": experts, **TINY}, seed=0, out=out)
    return out


# -- the meta-gradient ----------------------------------------------------------------------------


def _problem(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    model = create_model("convnet", 1, 8, 4, seed=seed, width=4, depth=2).to(dtype)
    start = flatten_params(model)
    target = start + 0.05 * torch.randn(start.shape, generator=g, dtype=dtype)
    images = torch.randn(12, 1, 8, 8, generator=g, dtype=dtype)
    soft = torch.randn(12, 4, generator=g, dtype=dtype)
    augment = build_augmentation("dsa")
    batches = minibatches(12, 5, 6, g)
    aug_gen = torch.Generator().manual_seed(seed + 1)
    params = [augment.sample(torch.Size((5, 1, 8, 8)), aug_gen) for _ in batches]
    params = [_cast(p, dtype) for p in params]
    steps = StudentSteps(model, param_layout(model), batches, augment, params)
    return steps, images, torch.arange(12) % 4, soft, start, target


def _cast(p, dtype):
    if isinstance(p, dict):
        return {k: _cast(v, dtype) for k, v in p.items()}
    if isinstance(p, (list, tuple)):
        return type(p)(_cast(v, dtype) for v in p)
    return p.to(dtype) if torch.is_tensor(p) and p.is_floating_point() else p


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("learn_labels", [False, True])
def test_constant_memory_meta_gradient_equals_unrolled(dtype, tol, learn_labels):
    steps, images, hard, soft, start, target = _problem(dtype)
    labels = soft if learn_labels else hard
    alpha = torch.tensor(0.1, dtype=dtype)
    a = meta_gradient_constant(steps, images, labels, alpha, start, target, learn_labels)
    b = meta_gradient_unrolled(steps, images, labels, alpha, start, target, learn_labels)
    assert abs(a.loss - b.loss) <= tol * abs(b.loss)
    assert (b.images.flatten(1).abs().sum(1) > 0).sum() >= 10  # most images are in some minibatch
    scale = b.images.abs().max()
    torch.testing.assert_close(a.images, b.images, rtol=tol, atol=tol * scale)
    torch.testing.assert_close(a.alpha, b.alpha, rtol=tol, atol=tol * b.alpha.abs())
    if learn_labels:
        torch.testing.assert_close(a.labels, b.labels, rtol=tol, atol=tol * b.labels.abs().max())
    else:
        assert a.labels is None and b.labels is None


def test_loss_and_schedule_by_hand():
    start, target, end = torch.tensor([0.0, 0.0]), torch.tensor([3.0, 4.0]), torch.tensor([3.0, 0.0])
    assert float(matching_loss(end, start, target)) == pytest.approx(16 / 25)
    gen = torch.Generator().manual_seed(0)
    batches = minibatches(10, 4, 5, gen)
    assert [len(b) for b in batches] == [4] * 5
    gen = torch.Generator().manual_seed(0)
    p1, p2 = torch.randperm(10, generator=gen), torch.randperm(10, generator=gen)
    flat = torch.cat([p1, p2])
    assert torch.equal(torch.cat(batches[:2]), flat[:8])  # chunks of one permutation, then the next
    assert torch.equal(batches[2], flat[8:12])
    assert all(len(b) == 10 for b in minibatches(10, 0, 3, gen))  # batch_syn 0: the whole set each step


# -- the synthesizer ------------------------------------------------------------------------------


def test_file_is_valid_and_records_the_learned_step_size(synthesized, experts, capsys):
    code, text, err = _cli(capsys, "validate", str(synthesized))
    assert code == 0, text + err
    with DistilledDataset(synthesized) as ds:
        cfg = ds.header.config
        assert ds.header.method == "mtt" and len(ds) == 20 and ds.soft_schemes == []
        assert cfg["learned_lr"] != 0.01 and np.isfinite(cfg["learned_lr"])  # α moved from the experts' lr
        assert cfg["experts_file"]["num_experts"] == 2 and cfg["syn_steps"] == 3 and cfg["meta_grad"] == "constant"
        pixels = ds.pixels()
        assert pixels.min() >= 0 and pixels.max() <= 1
        assert ds.labels.tolist() == [c for c in range(10) for _ in range(2)]
    with h5py.File(synthesized, "r") as f:
        assert f["images"].dtype == np.float16
    # the images moved away from the real images they started from
    from ddkit.data import load_dataset

    source = load_dataset("procedural", "train")
    real = source.pixels(torch.as_tensor(cfg["source_ids"]))
    assert (pixels - real).abs().max() > 1e-3


def test_unrolled_mode_writes_the_same_file(experts, synthesized, tmp_path):
    out = tmp_path / "u.ddk.h5"
    run_synthesizer("mtt", "procedural", [], 2, {"experts": experts, "meta_grad": "unrolled", **TINY}, seed=0, out=out)
    with h5py.File(out, "r") as a, h5py.File(synthesized, "r") as b:
        diff = np.abs(a["images"][()].astype(np.float32) - b["images"][()].astype(np.float32)).max()
        assert diff <= 2e-3  # float16 storage: at most a rounding step apart


def test_learned_soft_labels(experts, tmp_path):
    out = tmp_path / "s.ddk.h5"
    run_synthesizer("mtt", "procedural", [], 2, {"experts": experts, "learn_labels": True, **TINY}, seed=0, out=out)
    with DistilledDataset(out) as ds:
        assert ds.soft_schemes == ["logits"]
    with h5py.File(out, "r") as f:
        logits = f["soft/logits/values"][()]
    assert logits.shape == (20, 10) and logits.dtype == np.float16 and np.isfinite(logits).all()


def test_meta_gradient_through_the_formation_decode_matches_finite_differences():
    """formation=2: 3 stored 8×8 images decode into the 12 student instances; the meta-gradient on the
    instances carried through the decode (what the synthesizer does) is the derivative of the loss as a
    function of the stored pixels."""
    from ddkit.store import MultiFormation

    steps, _, hard, _, start, target = _problem(torch.float64)
    decoder, alpha = MultiFormation(2), torch.tensor(0.1, dtype=torch.float64)
    stored = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(7), dtype=torch.float64)

    def loss(x):
        return meta_gradient_constant(steps, decoder.decode(x), hard, alpha, start, target).loss

    x = stored.clone().requires_grad_(True)
    instances = decoder.decode(x)
    res = meta_gradient_constant(steps, instances, hard, alpha, start, target)
    (grad,) = torch.autograd.grad(instances, x, res.images)
    v = torch.randn(stored.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    eps = 1e-5
    numeric = (loss(stored + eps * v) - loss(stored - eps * v)) / (2 * eps)
    assert float((grad * v).sum()) == pytest.approx(numeric, rel=1e-5)


def test_formation_file_stores_ipc_images_decoding_into_their_instances(experts, tmp_path):
    out = tmp_path / "f.ddk.h5"
    run_synthesizer("mtt", "procedural", [], 2, {"experts": experts, **TINY, "formation": 2, "learn_labels": True},
                    seed=0, out=out)
    with DistilledDataset(out) as ds:
        assert ds.num_stored == 20 and len(ds) == 80 and ds.formation.factor == 2
        assert len(ds.header.config["source_ids"]) == 80 and ds.soft["logits"].rows == 80
    with pytest.raises(InvalidInput, match="at most 8"):
        run_synthesizer("mtt", "procedural", [], 2, {"experts": experts, **TINY, "formation": 9}, out=tmp_path / "x.ddk.h5")
    assert not (tmp_path / "x.ddk.h5").exists()


@pytest.mark.parametrize("learn_labels", [False, True])
def test_iterations_read_only_the_two_vectors_they_match(experts, tmp_path, monkeypatch, learn_labels):
    """Beyond the loader's streamed check (every vector once), an iteration reads its start and target
    vectors from the file (DATM's label init one more): the buffer is never read whole."""
    opened, real_load = [], mtt_mod.load_experts

    def load(*args, **kwargs):
        opened.append(real_load(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(mtt_mod, "load_experts", load)
    config = {"experts": experts, **TINY, "learn_labels": learn_labels}
    run_synthesizer("mtt", "procedural", [], 2, config, seed=0, out=tmp_path / "v.ddk.h5")
    (ex,) = opened
    n, e1, _ = ex.params.shape
    assert ex.params.reads == n * e1 + 2 * TINY["iterations"] + int(learn_labels)
    with pytest.raises(ValueError, match="closed"):  # mtt closed the file when done
        ex.params[0, 0]


def test_resume_equals_uninterrupted(experts, synthesized, tmp_path, monkeypatch):
    out = tmp_path / "r.ddk.h5"
    config = {"experts": experts, **TINY, "checkpoint_every": 2}
    real, calls = mtt_mod.META_GRADIENTS["constant"], {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated kill in iteration 3")
        return real(*args, **kwargs)

    monkeypatch.setitem(mtt_mod.META_GRADIENTS, "constant", dying)
    with pytest.raises(KeyboardInterrupt):
        run_synthesizer("mtt", "procedural", [], 2, config, seed=0, out=out)
    assert not out.exists() and (tmp_path / "r.ddk.h5.work" / "state.safetensors").exists()
    with pytest.raises(InvalidInput, match="different run"):
        run_synthesizer("mtt", "procedural", [], 2, {**config, "lr_img": 5.0}, seed=0, out=out, resume=True)
    calls["n"] = -10
    run_synthesizer("mtt", "procedural", [], 2, config, seed=0, out=out, resume=True)
    assert calls["n"] == -10 + 1  # only iteration 3 of 3 was computed again
    assert not (tmp_path / "r.ddk.h5.work").exists()
    with h5py.File(out, "r") as a, h5py.File(synthesized, "r") as b:
        assert np.array_equal(a["images"][()], b["images"][()])
        assert a.attrs["content_sha256"] == b.attrs["content_sha256"]
    with DistilledDataset(out) as a, DistilledDataset(synthesized) as b:
        for key in ("learned_lr", "final_loss"):
            assert a.header.config[key] == b.header.config[key], key


def test_library_refusals(experts, tmp_path):
    out = tmp_path / "x.ddk.h5"
    with pytest.raises(InvalidInput, match="needs an experts file"):
        run_synthesizer("mtt", "procedural", [], 2, TINY, out=out)
    with pytest.raises(InvalidInput, match="max_start_epoch"):
        run_synthesizer("mtt", "procedural", [], 2, {"experts": experts, **TINY, "max_start_epoch": 2}, out=out)
    with pytest.raises(IncompatibleError, match="not of resnet8"):
        run_synthesizer("mtt", "procedural", [], 2, {"experts": experts, **TINY, "model": "resnet8"}, out=out)
    with pytest.raises(InvalidInput, match="meta_grad"):
        run_synthesizer("mtt", "procedural", [], 2, {"experts": experts, **TINY, "meta_grad": "approx"}, out=out)
    assert not out.exists() and not (tmp_path / "x.ddk.h5.work").exists()


def test_cli_end_to_end_and_bad_input(capsys, tmp_path, experts):
    out = tmp_path / "c.ddk.h5"
    base = ["synthesize", "--method", "mtt", "--dataset", "procedural", "--config", f"experts={experts}",
            "--config", "iterations=2", "--config", "syn_steps=2", "--config", "max_start_epoch=0"]
    code, text, err = _cli(capsys, *base, "--ipc", "1", "--out", out)
    assert code == 0, err
    assert "wrote" in text
    code, text, err = _cli(capsys, "validate", str(out))
    assert code == 0, text + err
    bad = {
        "ipc": ([*base, "--ipc", "41"], "fewer than the 41"),  # procedural has 40 train images per class
        "dataset": (["synthesize", "--method", "mtt", "--dataset", "fashion-mnist-mini", "--ipc", "1", "--config",
                     f"experts={experts}"], "trained on dataset 'procedural'"),
        "labels": ([*base, "--ipc", "1", "--config", "learn_labels=true", "--config", "labels=hard"], "hard labels only"),
        "missing": ([*base, "--ipc", "1", "--config", f"experts={tmp_path / 'none.experts.h5'}"], "does not exist"),
    }
    for name, (args, message) in bad.items():
        target = tmp_path / f"bad-{name}.ddk.h5"
        code, _, err = _cli(capsys, *args, "--out", target)
        assert code == 2 and message in err and "Traceback" not in err, (name, err)
        assert not target.exists() and not (tmp_path / f"bad-{name}.ddk.h5.work").exists(), name


def test_registered():
    assert "mtt" in SYNTHESIZERS
