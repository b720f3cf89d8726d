"""KD³: the math against hand computations, the selector end to end on tiny data (never reading pool
labels), the ablation switches, and the trained student file loading and evaluating."""

import math

import numpy as np
import pytest
import torch
from helpers import one_thread  # noqa: F401 (autouse fixture)

from ddkit.data import load_dataset
from ddkit.data.base import ImageDataset
from ddkit.errors import InvalidInput, OutputExists
from ddkit.models import create_model
from ddkit.models.teacher import load_teacher, save_teacher
from ddkit.selectors import run_selector, write_side_outputs
from ddkit.selectors.kd3 import KD3Config, KD3Selector, train_kd3
from ddkit.selectors.kd3_losses import (
    alignment_weights,
    alpha_schedule,
    class_thresholds,
    mix_distribution,
    nt_xent,
    select_instances,
    step_lr_factor,
    weighted_feature_alignment,
)
from ddkit.teachers import evaluate_teacher
from ddkit.training import OptimConfig, TrainConfig, train_supervised

CPU = torch.device("cpu")


# -- the math ---------------------------------------------------------------------------------
def test_alpha_schedule_matches_the_paper_at_240_epochs():
    for e in (0, 1, 59, 119):
        assert alpha_schedule(e, 240) == pytest.approx(1 - math.exp(-5 * ((e + 1) / 160 - 1) ** 2))
    assert alpha_schedule(0, 240) == pytest.approx(1 - math.exp(-5 * (159 / 160) ** 2))
    assert alpha_schedule(119, 240) == pytest.approx(1 - math.exp(-0.3125))  # (120/160 − 1)² = 1/16
    assert alpha_schedule(120, 240) == 0.0 and alpha_schedule(239, 240) == 0.0


def test_alpha_schedule_scaled_run():
    # E = 12: E_r = 8, α = 0 from epoch 6 (= 0.75·E_r).
    assert alpha_schedule(0, 12) == pytest.approx(1 - math.exp(-5 * (1 / 8 - 1) ** 2))
    assert alpha_schedule(5, 12) == pytest.approx(1 - math.exp(-5 * (6 / 8 - 1) ** 2))
    assert [alpha_schedule(e, 12) for e in range(6, 13)] == [0.0] * 7
    assert all(alpha_schedule(e, 12) > alpha_schedule(e + 1, 12) for e in range(5))


def test_class_thresholds_by_hand():
    predicted = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    tau = class_thresholds(predicted, 4, 0.95)
    # N = [4, 2, 1, 0], σ = [1, 1/2, 1/4, 0], τ_c = 0.95·σ/(2 − σ)
    expected = [0.95, 0.95 * 0.5 / 1.5, 0.95 * 0.25 / 1.75, 0.0]
    torch.testing.assert_close(tau, torch.tensor(expected), rtol=1e-6, atol=1e-7)


def test_select_instances_by_hand():
    zt = torch.tensor([[4.0, 0.0], [0.0, 0.0], [0.0, 3.0]])
    zs = torch.tensor([[0.0, 4.0], [2.0, 0.0], [0.0, 1.0]])
    out = select_instances(zt, zs, 0.25, 0.5)
    z = 0.25 * zt + 0.75 * zs
    p = torch.softmax(z, 1)
    q, y = p.max(1)
    assert y.tolist() == [1, 0, 1]
    # predicted counts: class 0: 1, class 1: 2 → σ = [1/2, 1] → τ = [0.5·(1/2)/(3/2), 0.5]
    thresholds = torch.tensor([0.5, 0.5 / 3, 0.5])
    torch.testing.assert_close(out["threshold"], thresholds)
    torch.testing.assert_close(out["confidence"], q)
    assert out["keep"].tolist() == (q > thresholds).tolist() == [True, True, True]
    # only the teacher (α = 1): sample 1 is a coin flip (q = 0.5), not above its bar
    teacher_only = select_instances(zt, zs, 1.0, 0.5)
    assert teacher_only["predicted"].tolist() == [0, 0, 1]
    assert teacher_only["keep"].tolist() == [True, False, True]


def test_weighted_feature_alignment_by_hand():
    s = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])  # 2×1×2×2
    t = torch.tensor([[[[1.0]]], [[[2.0]]]])  # 2×1×1×1: s is average-pooled to 1×1
    zs, zt = torch.tensor([[0.0, 0.0], [3.0, 4.0]]), torch.zeros(2, 2)
    w = alignment_weights(zs, zt)
    torch.testing.assert_close(w, torch.sigmoid(torch.tensor([0.0, 5.0])))
    loss = weighted_feature_alignment(s, t, w)
    expected = (w[0] * (2.5 - 1.0) ** 2 + w[1] * (0.0 - 2.0) ** 2) / 2
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(weighted_feature_alignment(s, t, None), torch.tensor((1.5 ** 2 + 4.0) / 2))


def test_step_lr_factor_milestones():
    assert [step_lr_factor(e / 240) for e in (0, 149, 150, 179, 180, 210, 239)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.001, 0.001])


@pytest.mark.parametrize("channels", [1, 3])
def test_mix_distribution_keeps_shape_and_mixes_statistics(channels):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, channels, 8, 8, generator=g) * torch.tensor([0.5, 1.0, 2.0, 3.0]).view(4, 1, 1, 1) + torch.arange(4.0).view(4, 1, 1, 1)
    perm = torch.tensor([1, 2, 3, 0])
    lam = torch.tensor([1.0, 0.0, 0.3, 0.7])
    out = mix_distribution(x, lam, perm)
    assert out.shape == x.shape
    mu, sd = x.mean((2, 3)), (x.var((2, 3), unbiased=False) + 1e-6).sqrt()
    w = lam.view(4, 1)
    torch.testing.assert_close(out.mean((2, 3)), w * mu + (1 - w) * mu[perm], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close((out.var((2, 3), unbiased=False) + 1e-6).sqrt(), w * sd + (1 - w) * sd[perm], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(out[0], x[0], rtol=1e-4, atol=1e-4)  # λ = 1: unchanged
    # λ = 0: the content of image 1 with exactly image 2's statistics
    z1 = (x[1] - mu[1].view(-1, 1, 1)) / sd[1].view(-1, 1, 1)
    torch.testing.assert_close(out[1], z1 * sd[2].view(-1, 1, 1) + mu[2].view(-1, 1, 1), rtol=1e-4, atol=1e-4)


def test_nt_xent_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[1.0, 1.0], [-1.0, 1.0]])
    temp = 0.5
    z = [v / v.norm() for v in (a[0], a[1], b[0], b[1])]
    total = 0.0
    for i in range(4):
        pos = (i + 2) % 4
        denom = sum(math.exp(float(z[i] @ z[j]) / temp) for j in range(4) if j != i)
        total += -math.log(math.exp(float(z[i] @ z[pos]) / temp) / denom)
    assert nt_xent(a, b, temp).item() == pytest.approx(total / 4, rel=1e-5)
    # perfectly aligned views with orthogonal negatives give a lower loss than swapped ones
    e = torch.eye(2)
    assert nt_xent(e, e, 0.3) < nt_xent(e, e.flip(0), 0.3)


# -- the selector on tiny data ----------------------------------------------------------------
class LabelRecordingDataset(ImageDataset):
    """Records every read of `labels` once armed (and counts its size from the images)."""

    def __init__(self, base: ImageDataset):
        self._labels, self.reads, self.armed = base.labels, 0, False
        super().__init__(base.info, base.split, base.images, base.labels, base.ids)
        self.fingerprint()  # cached before arming (the pool record hashes it)

    @property
    def labels(self):
        if self.armed:
            self.reads += 1
        return self._labels

    @labels.setter
    def labels(self, value):
        self._labels = value

    def __len__(self):
        return int(self.images.shape[0])




@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    data = load_dataset("procedural", "train")
    model = create_model("convnet-bn", 1, 16, 10, seed=0, width=8, depth=2)
    cfg = TrainConfig(epochs=3, batch_size=64, augmentation="none", optim=OptimConfig(lr=0.05))
    train_supervised(model, data.normalized(), data.labels, cfg, seed=0, device=CPU)
    path = tmp_path_factory.mktemp("kd3") / "teacher.safetensors"
    save_teacher(path, model, data.info)
    return path


TINY = dict(epochs=2, batch_size=32, student="convnet-bn", student_width=4, augmentation="none", tau=0.1)


def test_selection_never_reads_pool_labels_and_records_per_sample(teacher_file, tmp_path):
    pool = LabelRecordingDataset(load_dataset("procedural", "train").subset(np.arange(0, 400, 2)))
    teacher = load_teacher(teacher_file)
    pool.armed = True
    student_out = tmp_path / "student.safetensors"
    trace_out = tmp_path / "trace.npz"
    sel, outputs = KD3Selector().select_with_outputs(pool, [teacher], 150, KD3Config(**TINY, student_out=str(student_out),
                                                                                     trace_out=str(trace_out)), 0, CPU)
    assert [o.path for o in outputs] == [str(trace_out), str(student_out)] and not trace_out.exists()
    write_side_outputs(outputs)  # what run_selector does after writing the selection
    assert pool.reads == 0, "KD³ read the pool's labels"
    n = len(pool)
    assert 1 <= len(sel) <= 150 and len(np.unique(sel.ids)) == len(sel)
    assert set(sel.extra) == {"epochs_selected", "final_threshold", "final_class"}
    assert ((sel.extra["epochs_selected"] >= 0) & (sel.extra["epochs_selected"] <= 2)).all()
    assert (sel.score > sel.extra["final_threshold"]).all(), "every kept sample beats its class threshold"
    margins = sel.score - sel.extra["final_threshold"]
    assert (np.diff(margins) <= 1e-12).all(), "kept samples are ranked by margin"
    with np.load(trace_out, allow_pickle=False) as trace:
        assert trace["ids"].shape == (n,) and trace["kept"].sum() == len(sel)
        assert set(trace["ids"][trace["kept"]]) == set(sel.ids)
        assert trace["epoch_alpha"].tolist() == pytest.approx([alpha_schedule(e, 2) for e in range(2)])
        assert trace["epochs_selected"].sum() == trace["epoch_selected_count"].sum()


def test_trained_student_file_loads_and_evaluates(teacher_file, tmp_path):
    pool = load_dataset("procedural", "train")
    teacher = load_teacher(teacher_file)
    out = tmp_path / "student.safetensors"
    write_side_outputs(KD3Selector().select_with_outputs(pool, [teacher], len(pool), KD3Config(**TINY, student_out=str(out)), 0, CPU)[1])
    student = load_teacher(out)
    assert student.header.arch == "kd3-student" and student.header.train["method"] == "kd3"
    # the shared classifier is the teacher's, frozen through training
    torch.testing.assert_close(student.model.classifier.weight, teacher.model.classifier.weight)
    torch.testing.assert_close(student.model.classifier.bias, teacher.model.classifier.bias)
    result = evaluate_teacher(out, "procedural", "test")
    assert result["arch"] == "kd3-student" and result["samples"] == 200 and 0.0 <= result["accuracy"] <= 1.0
    student.check_fits(pool.info)


def test_ablations_from_the_same_code(teacher_file):
    images = load_dataset("procedural", "train").normalized()
    teacher = load_teacher(teacher_file)
    small = dict(TINY, epochs=2)
    _, hist, stats = train_kd3(images, teacher, KD3Config(**small, selection="none"), 0, CPU)
    assert stats["kept"].all() and [h["selected"] for h in hist] == [len(images)] * 2
    _, hist, stats = train_kd3(images, teacher, KD3Config(**small, selection="teacher"), 0, CPU)
    expected = select_instances(*(2 * [teacher.model(images).detach()]), 1.0, 0.1)["keep"]
    assert [h["selected"] for h in hist] == [int(expected.sum())] * 2 and [h["alpha"] for h in hist] == [1.0, 1.0]
    student, _, _ = train_kd3(images, teacher, KD3Config(**small, share_classifier=False, kl_weight=1.0, feature_alignment=False,
                                                          mix_distribution=False, selection="none"), 0, CPU)
    assert student.classifier.weight.requires_grad and not torch.equal(student.classifier.weight, teacher.model.classifier.weight)
    with pytest.raises(InvalidInput, match="untrained"):
        KD3Config(share_classifier=False).check()
    with pytest.raises(InvalidInput, match="switched off"):
        KD3Config(feature_alignment=False, mix_distribution=False).check()
    with pytest.raises(InvalidInput, match="selection"):
        KD3Config(selection="sometimes").check()


def test_seeded_runs_repeat(teacher_file):
    images = load_dataset("procedural", "train").normalized()
    teacher = load_teacher(teacher_file)
    cfg = KD3Config(**dict(TINY, epochs=1))
    a, _, sa = train_kd3(images, teacher, cfg, 3, CPU)
    b, _, sb = train_kd3(images, teacher, cfg, 3, CPU)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(pa, pb)
    np.testing.assert_array_equal(sa["final_confidence"], sb["final_confidence"])


def test_flatten_teacher_is_refused(tmp_path):
    data = load_dataset("procedural", "train")
    model = create_model("convnet-bn", 1, 16, 10, seed=0, width=4, depth=2, pooling="flatten")
    save_teacher(tmp_path / "t.safetensors", model, data.info)
    from ddkit.errors import IncompatibleError

    with pytest.raises(IncompatibleError, match="average pooling"):
        KD3Selector().select(data, [load_teacher(tmp_path / "t.safetensors")], 10, KD3Config(**TINY), 0, CPU)


def test_run_selector_checks_options_and_side_files_before_loading_anything(tmp_path):
    """A bad option, or a side file that exists, fails before the pool or any teacher is read (the
    teacher path here does not even exist)."""
    no_teacher = [str(tmp_path / "missing.safetensors")]
    with pytest.raises(InvalidInput, match="tau"):
        run_selector("kd3", "procedural", no_teacher, 10, {"tau": "-1"}, out=tmp_path / "s.sel.h5")
    student = tmp_path / "student.safetensors"
    student.write_bytes(b"not a teacher")
    with pytest.raises(OutputExists):
        run_selector("kd3", "procedural", no_teacher, 10, {"student_out": str(student)}, out=tmp_path / "s.sel.h5")
    assert student.read_bytes() == b"not a teacher"
