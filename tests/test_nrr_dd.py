"""NRR-DD on tiny data: CAM of every registered model, crop scoring, lowest- vs highest-confidence
selection, the refinement mask freezing critical pixels bit for bit, stitching, config checks, and a
resumed run equal to an uninterrupted one."""

import dataclasses

import pytest
import torch
from helpers import tiny_model_options

from ddkit.data import load_dataset
from ddkit.errors import InvalidInput
from ddkit.models import MODELS, create_model
from ddkit.models.teacher import load_teacher, save_teacher
from ddkit.synth import SYNTHESIZERS
from ddkit.synth.cam import box_mask, cam_ratio, minmax, normalized_cam
from ddkit.synth.nrr_dd import (
    NRRDD,
    NRRDDConfig,
    discover,
    refine,
    refinement_mask,
    select_crops,
    stitch,
    stitching_factor,
)


@pytest.fixture(scope="module")
def data():
    return load_dataset("procedural", "train")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, data):
    """A small BN ConvNet fitted for a few steps (enough for non-trivial CAMs), as a real teacher file."""
    from ddkit.training import TrainConfig, train_supervised

    model = create_model("convnet-bn", 1, 16, 10, seed=0, width=8)
    train_supervised(model, data.normalized(), data.labels, TrainConfig(epochs=2, batch_size=64, augmentation="none"),
                     seed=0, device=torch.device("cpu"))
    path = tmp_path_factory.mktemp("nrr-teacher") / "t.safetensors"
    save_teacher(path, model, data.info)
    return load_teacher(path)


def small(**changes) -> NRRDDConfig:
    base = {"mipc": 12, "num_crop": 3, "iterations": 4, "refine": True}  # refined: the tests cover stage 2 too
    return dataclasses.replace(NRRDDConfig(), **{**base, **changes})


@pytest.mark.parametrize("name", MODELS.names())
def test_cam_shape_and_normalization_for_every_registered_model(name):
    model = create_model(name, 1, 16, 10, seed=1, **tiny_model_options(name)).eval()
    x = torch.randn(5, 1, 16, 16)
    cam, logits = normalized_cam(model, x, torch.tensor([0, 1, 2, 3, 4]))
    assert cam.shape == (5, 16, 16) and logits.shape == (5, 10)
    assert cam.min() >= 0 and cam.max() <= 1
    for m in cam:  # each map spans [0, 1] exactly, unless it has no positive evidence at all
        assert (m.min() == 0 and m.max() == 1) or m.abs().sum() == 0


def test_minmax_and_cam_ratio_against_hand_computation():
    raw = torch.tensor([[[1.0, 3.0], [5.0, 9.0]]])
    torch.testing.assert_close(minmax(raw), torch.tensor([[[0.0, 0.25], [0.5, 1.0]]]))
    assert minmax(torch.full((1, 2, 2), 7.0)).abs().sum() == 0  # constant map: no evidence
    cam = torch.tensor([[[0.0, 0.25], [0.5, 1.0]]])
    # box x ∈ [1, 2), y ∈ [0, 2): covers the right column only (pixel j is in when x0 ≤ j ≤ x1 − 1)
    box = torch.tensor([[1.0, 0.0, 2.0, 2.0]])
    assert box_mask(box, 2, 2).tolist() == [[[False, True], [False, True]]]
    torch.testing.assert_close(cam_ratio(cam, box), torch.tensor([1.25 / 1.75]))
    assert float(cam_ratio(torch.zeros(1, 2, 2), box)) == 0.0


def test_select_crops_lowest_vs_highest_and_misclassified_last():
    conf = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.7])
    correct = torch.tensor([True, False, True, True, True])
    assert select_crops(conf, correct, 3, "lowest-confidence", False).tolist() == [1, 3, 2]
    assert select_crops(conf, correct, 3, "highest-confidence", False).tolist() == [0, 4, 2]
    assert select_crops(conf, correct, 3, "lowest-confidence", True).tolist() == [3, 2, 4]
    assert select_crops(conf, correct, 5, "lowest-confidence", True).tolist() == [3, 2, 4, 0, 1]


def test_discover_takes_the_least_confident_crops_of_the_same_pool(teacher, data):
    """Same seed → same candidate crops; lowest- and highest-confidence picks are the two ends."""
    cls, ipc = 3, 4
    idx = data.class_indices()[cls]
    found = {}
    for select in ("lowest-confidence", "highest-confidence"):
        cfg = small(select=select, reject_misclassified=False, mipc=40)
        gen = torch.Generator().manual_seed(0)
        found[select] = discover(teacher.model, data.info.normalization, data.pixels(idx), data.ids[idx], cls, ipc, 1, cfg, gen)
    low, high = found["lowest-confidence"], found["highest-confidence"]
    assert low.images.shape == (ipc, 1, 16, 16) and 0 <= low.images.min() and low.images.max() <= 1
    assert float(low.confidence.max()) <= float(high.confidence.min())
    assert torch.all(low.confidence[:-1] <= low.confidence[1:])  # ordered as selected
    assert set(low.source_ids.tolist()) <= set(data.ids[idx].tolist())


def test_mask_freezes_pixels_with_cam_at_least_epsilon(teacher, data):
    cls = 2
    x0 = data.pixels(data.class_indices()[cls][:4])
    cfg = small(epsilon=0.5, iterations=6, lr=0.2)
    norm = data.info.normalization
    cam, _ = normalized_cam(teacher.model, norm.apply(x0), cls)
    mask = refinement_mask(teacher.model, norm, x0, cls, cfg.epsilon)
    frozen = (cam >= cfg.epsilon).unsqueeze(1)
    assert frozen.any() and (~frozen).any()
    assert torch.equal(mask == 0, frozen) and mask.max() <= cfg.epsilon
    out = refine(teacher.model, norm, x0, cls, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(out[frozen.expand_as(out)], x0[frozen.expand_as(x0)])  # bit-identical
    assert not torch.equal(out, x0)  # ... and the rest did move
    assert out.min() >= 0 and out.max() <= 1


def test_stitching_factor_and_layout():
    assert stitching_factor(0, 28, 28) == 1 and stitching_factor(0, 64, 64) == 2 and stitching_factor(3, 28, 28) == 3
    ipc, factor = 2, 2
    patches = torch.arange(ipc * factor * factor, dtype=torch.float).view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()
    out = stitch(patches, ipc, factor)
    # image i, cell (a, b) holds patch (a·factor + b)·ipc + i
    assert out[1, 0, 0, 0] == 1 and out[1, 0, 0, 3] == 3 and out[0, 0, 3, 0] == 4 and out[0, 0, 3, 3] == 6


def test_config_is_checked_and_registered():
    assert "nrr-dd" in SYNTHESIZERS
    with pytest.raises(InvalidInput, match="select"):
        small(select="median").check()
    with pytest.raises(InvalidInput, match="epsilon"):
        small(epsilon=2.0).check()


def test_resume_equals_uninterrupted(tmp_path, monkeypatch, teacher, data):
    synth, cfg, ipc = NRRDD(), small(), 2
    reference = synth.synthesize(data, [teacher], ipc, cfg, 5, torch.device("cpu"))
    assert reference.images.shape == (10 * ipc, 1, 16, 16) and reference.labels.tolist() == sorted(reference.labels.tolist())

    real = NRRDD.class_item
    calls = []

    def dies_at_class_4(self, *args):
        calls.append(args[4])
        if args[4] == 4:
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(NRRDD, "class_item", dies_at_class_4)
    workdir = tmp_path / "out.ddk.h5.work"
    with pytest.raises(KeyboardInterrupt):
        synth.synthesize(data, [teacher], ipc, cfg, 5, torch.device("cpu"), workdir)
    assert sorted(p.name for p in workdir.glob("class*.npz")) == [f"class{c:05d}.npz" for c in range(4)]
    monkeypatch.setattr(NRRDD, "class_item", real)
    calls.clear()
    monkeypatch.setattr(NRRDD, "class_item", lambda self, *a: calls.append(a[4]) or real(self, *a))
    resumed = synth.synthesize(data, [teacher], ipc, cfg, 5, torch.device("cpu"), workdir)
    assert calls == list(range(4, 10))  # only the unfinished classes ran again
    assert torch.equal(resumed.images, reference.images)
    assert resumed.config == reference.config
    with pytest.raises(InvalidInput, match="different run"):
        synth.synthesize(data, [teacher], ipc, small(epsilon=0.3), 5, torch.device("cpu"), workdir)


def test_defaults_are_the_val_choice_under_teacher_cpu_v2():
    """BENCHMARKS.md `nrr-dd-v2-choice`: best-CAM-ratio crop per image, the most confident of those, unrefined."""
    cfg = NRRDDConfig()
    assert (cfg.per_image, cfg.select, cfg.refine) == ("cam-ratio", "highest-confidence", False)


def test_ablations_come_from_the_same_code(teacher, data):
    """The crop-only set = NRR-DD before refinement; the paper's CIDD selection differs only in the crop choice."""
    synth, ipc = NRRDD(), 1
    full = synth.synthesize(data, [teacher], ipc, small(), 0, torch.device("cpu"))
    rded = synth.synthesize(data, [teacher], ipc, small(refine=False), 0, torch.device("cpu"))
    cidd = synth.synthesize(data, [teacher], ipc, small(refine=False, select="lowest-confidence", per_image="cam-ratio"),
                            0, torch.device("cpu"))
    assert rded.config["patch_source_ids"] == full.config["patch_source_ids"]
    assert not torch.equal(full.images, rded.images)
    assert rded.config["patch_source_ids"] != cidd.config["patch_source_ids"]
    assert full.config["refine"] and not rded.config["refine"]
    assert full.config["select"] == "highest-confidence" and full.config["per_image"] == "cam-ratio"
    assert cidd.config["select"] == "lowest-confidence"
