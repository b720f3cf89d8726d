"""DM and the coreset baselines: the matching loss against a hand computation, batched classes equal the
per-class loop, pixels stay in range, resume equals uninterrupted, refusals, herding and k-center
against hand cases, and the command line end to end on `procedural`."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from helpers import kill_at_call, run_cli as _cli

from ddkit.augment import DSA, take_rows
from ddkit.data import load_dataset
from ddkit.errors import InvalidInput
from ddkit.models import create_model
from ddkit.models.teacher import save_teacher
from ddkit.store import DistilledDataset
from ddkit.synth import SYNTHESIZERS, run_synthesizer
from ddkit.synth.coresets import herding
from ddkit.synth.dm import DMConfig, embed, initial_state, matching_loss, optimize, synthetic_rows
from ddkit.workitems import WorkItemStore

pytestmark = pytest.mark.usefixtures("quiet")  # no progress lines; a cache of each test's own

TINY = {"iterations": 4, "batch_real": 8, "net_options": "depth=2,width=8,norm=instance", "checkpoint_every": 2}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    info = load_dataset("procedural", "train").info
    path = tmp_path_factory.mktemp("matching-teacher") / "t.safetensors"
    save_teacher(path, create_model("convnet-bn", 1, 16, 10, seed=3, width=8, depth=2).eval(), info)
    return str(path)


@pytest.fixture(scope="module")
def dm_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("dm") / "dm.ddk.h5"
    run_synthesizer("dm", "procedural", [], 2, TINY, seed=0, out=out)
    return out


def _net(norm="instance"):
    net = create_model("convnet", 1, 16, 10, seed=0, depth=2, width=8, norm=norm)
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def test_matching_loss_equals_the_per_class_loop_of_the_paper():
    """One batched pass over all classes gives Σ_c ‖mean φ(A(real_c)) − mean φ(A(syn_c))‖² computed
    class by class with the same siamese DSA parameters."""
    net, dsa, classes = _net(), DSA(), 10
    real, syn = torch.randn(classes * 6, 1, 16, 16), torch.randn(classes * 2, 1, 16, 16)
    batched = matching_loss(net, real, syn, classes, dsa, torch.Generator().manual_seed(5))

    params = dsa.sample((classes * 6, 1, 16, 16), torch.Generator().manual_seed(5), units=classes)
    total = 0.0
    for c in range(classes):
        rows = torch.arange(6) + 6 * c
        r = dsa.apply(real[rows], take_rows(params, rows))
        s = dsa.apply(syn[2 * c:2 * c + 2], take_rows(params, rows[:2]))
        total += float((embed(net, r).mean(0) - embed(net, s).mean(0)).square().sum())
    assert float(batched) == pytest.approx(total, rel=1e-5)
    chunked = matching_loss(net, real, syn, classes, dsa, torch.Generator().manual_seed(5), chunk=7)
    assert float(chunked) == pytest.approx(float(batched), rel=1e-5)  # chunking changes speed, not the loss


def test_matching_loss_without_dsa_by_hand_and_batchnorm_nets_run_per_class():
    real, syn = torch.randn(20, 1, 16, 16), torch.randn(10, 1, 16, 16)
    for norm in ("instance", "batch"):
        net = _net(norm).train()
        expected = sum(float((embed(net, real[2 * c:2 * c + 2]).mean(0) - embed(net, syn[c:c + 1]).mean(0)).square().sum())
                       for c in range(10))
        assert float(matching_loss(net, real, syn, 10, None, torch.Generator())) == pytest.approx(expected, rel=1e-5)


def test_dm_moves_pixels_lowers_the_loss_and_keeps_them_in_range(dm_file):
    source = load_dataset("procedural", "train")
    config = DMConfig(**{**TINY, "iterations": 30, "dsa": "none", "lr_img": 0.5})
    state, picked = initial_state(source, 2, config, 0, "cpu")
    start = state.images.clone()
    losses = [float(terms.sum()) for terms in optimize(source, state, config, 0, "cpu")]
    assert not torch.equal(start, state.images)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    pixels = source.info.normalization.invert(state.images)
    assert float(pixels.min()) >= -1e-6 and float(pixels.max()) <= 1 + 1e-6
    with h5py.File(dm_file, "r") as f:
        images, labels = f["images"][()], f["labels"][()]
    assert images.shape == (20, 1, 16, 16) and images.dtype == np.float16
    assert labels.tolist() == [c for c in range(10) for _ in range(2)]
    assert float(images.min()) >= 0 and float(images.max()) <= 1
    assert len(DistilledDataset(dm_file)) == 20


def test_resume_equals_uninterrupted(tmp_path, monkeypatch, dm_file):
    out, real_save = tmp_path / "r.ddk.h5", WorkItemStore.save
    kill_at_call(monkeypatch, WorkItemStore, "save", 1, after=True)  # killed right after the first checkpoint
    with pytest.raises(KeyboardInterrupt):
        run_synthesizer("dm", "procedural", [], 2, TINY, seed=0, out=out)
    assert not out.exists() and [p.name for p in (tmp_path / "r.ddk.h5.work").glob("*.npz")] == ["iter-0000002.npz"]
    monkeypatch.setattr(WorkItemStore, "save", real_save)
    with pytest.raises(InvalidInput, match="different run"):
        run_synthesizer("dm", "procedural", [], 2, {**TINY, "lr_img": 2.0}, seed=0, out=out, resume=True)
    run_synthesizer("dm", "procedural", [], 2, TINY, seed=0, out=out, resume=True)
    assert not (tmp_path / "r.ddk.h5.work").exists()
    with h5py.File(out, "r") as a, h5py.File(dm_file, "r") as b:
        assert np.array_equal(a["images"][()], b["images"][()])


def test_teacher_gives_stored_logits(tmp_path, teacher):
    out = tmp_path / "t.ddk.h5"
    run_synthesizer("dm", "procedural", [teacher], 1, {**TINY, "iterations": 1}, seed=0, out=out)
    with h5py.File(out, "r") as f:
        assert f["soft/logits/values"].shape == (10, 10)


@pytest.mark.parametrize("overrides, match", [
    ({"init": "zeros"}, "init must be"),
    ({"dsa": "color_warp"}, "unknown group"),
    ({"net": "nonet"}, "unknown model"),
    ({"iterations": -1}, "iterations"),
])
def test_dm_refuses_bad_config_before_writing(tmp_path, overrides, match):
    out = tmp_path / "bad.ddk.h5"
    with pytest.raises(Exception, match=match):
        run_synthesizer("dm", "procedural", [], 1, {**TINY, **overrides}, seed=0, out=out)
    assert not out.exists()


def test_herding_by_hand():
    # Mean 1.0 on a line: the first pick is the point nearest the mean, the second the one that pulls
    # the running mean back onto it.
    x = torch.tensor([[0.0], [0.9], [3.0], [1.2], [-0.6]])
    assert herding(x, 1).tolist() == [1]  # |0.9 − 0.9| = 0 (mean is 0.9)
    assert herding(x, 2).tolist() == [1, 3]  # (0.9 + x)/2 closest to 0.9 → x = 0.9 is taken, next 1.2 vs 0.0
    assert sorted(herding(x, 5).tolist()) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("method", ["herding", "kcenter"])
def test_coresets_are_class_balanced_real_images(tmp_path, method, teacher):
    source = load_dataset("procedural", "train")
    for teachers, space in (([], "random"), ([teacher], "teacher")):
        out = tmp_path / f"{method}-{space}.ddk.h5"
        run_synthesizer(method, "procedural", teachers, 3, {}, seed=0, out=out)
        with h5py.File(out, "r") as f:
            config = json.loads(f.attrs["config"])
            images, labels = f["images"][()], f["labels"][()]
        assert config["features_resolved"] == space
        ids = np.asarray(config["source_ids"])
        assert len(set(ids.tolist())) == 30 and np.bincount(labels).tolist() == [3] * 10
        assert images.dtype == np.uint8  # the source's own bytes, stored as they are
        assert np.array_equal(images, source.images[torch.from_numpy(ids)].numpy())


def test_kcenter_picks_the_farthest_points(tmp_path):
    from ddkit.synth.coresets import KCenter

    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [0.0, 0.2], [-4.0, 0.0]])
    picks = KCenter().choose(x, 3, seed=0)
    assert {int(picks[1]), int(picks[2])} >= {2} and len(set(picks.tolist())) == 3


def test_cli_end_to_end_and_refusals(capsys, tmp_path):
    out = tmp_path / "c.ddk.h5"
    config = [a for k, v in TINY.items() for a in ("--config", f"{k}={v}")]
    code, _, err = _cli(capsys, "synthesize", "--method", "dm", "--dataset", "procedural", "--ipc", "1", *config,
                        "--out", str(out))
    assert code == 0, err
    code, text, err = _cli(capsys, "validate", str(out))
    assert code == 0, err
    code, text, err = _cli(capsys, "evaluate", str(out), "--protocol", "hard-cpu", "--seeds", "1", "--steps", "3", "--no-full")
    assert code == 0 and "random real" in text, err
    big = tmp_path / "big.ddk.h5"
    for method in ("dm", "herding", "kcenter"):
        code, _, err = _cli(capsys, "synthesize", "--method", method, "--dataset", "procedural", "--ipc", "100000",
                            *config if method == "dm" else [], "--out", str(big))
        assert code == 2 and "fewer than" in err and "Traceback" not in err and not big.exists(), (method, err)


def test_registered():
    assert {"dm", "herding", "kcenter"} <= set(SYNTHESIZERS)


@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_classes_shared_out_compute_the_rows_of_all_classes(norm):
    """Two calls that optimize the even and the odd classes (what two ranks do) give bit for bit the rows
    and per-class loss terms of one call over all classes: same draws, class c's rows see only class c's term."""
    source = load_dataset("procedural", "train")
    config = DMConfig(**{**TINY, "iterations": 3, "net_options": f"depth=2,width=8,norm={norm}"})
    whole, _ = initial_state(source, 2, config, 0, "cpu")
    terms = list(optimize(source, whole, config, 0, "cpu"))
    merged = torch.full_like(whole.images, float("nan"))
    for classes in ([0, 2, 4, 6, 8], [1, 3, 5, 7, 9]):
        part, _ = initial_state(source, 2, config, 0, "cpu")
        part_terms = list(optimize(source, part, config, 0, "cpu", classes=classes))
        assert all(torch.equal(a[classes], b) for a, b in zip(terms, part_terms, strict=True))
        rows = synthetic_rows(torch.tensor(classes), 2)
        merged[rows] = part.images[rows]
        others = torch.ones(len(merged), dtype=torch.bool)
        others[rows] = False
        assert torch.equal(part.images[others], initial_state(source, 2, config, 0, "cpu")[0].images[others])
    assert torch.equal(merged, whole.images)


def test_more_processes_than_classes_is_refused(monkeypatch):
    from ddkit import distributed
    from ddkit.synth.dm import ClassShare

    monkeypatch.setattr(distributed, "world", lambda: distributed.World(0, 11))
    with pytest.raises(InvalidInput, match="--nproc 10 or fewer"):
        ClassShare.of(10, 2)
    monkeypatch.setattr(distributed, "world", lambda: distributed.World(1, 3))
    share = ClassShare.of(10, 2)
    assert share.owners == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]] and share.mine == [1, 4, 7]
