"""INFER: budget formula and refusals, the UFC objective against a hand computation, one UFC per
(group, teacher) shared by all classes, composite storage round trip, resume equals uninterrupted,
static labels interpolated by the evaluator, and the command line end to end on `procedural`."""

from __future__ import annotations

import math
from fractions import Fraction

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import run_cli as _cli
from torch import nn

import ddkit.synth.infer as infer_mod
from ddkit.data import load_dataset
from ddkit.errors import IncompatibleError, InvalidInput
from ddkit.evaluate.labels import STORED_LOSSES, MixInfo
from ddkit.models import create_model
from ddkit.models.teacher import save_teacher
from ddkit.store import DistilledDataset
from ddkit.synth import SYNTHESIZERS, run_synthesizer
from ddkit.synth.infer import InferConfig, check_budget, optimize_ufc, real_per_class
from ddkit.workitems import WorkItemStore

pytestmark = pytest.mark.usefixtures("quiet")  # no progress lines; a cache of each test's own

TINY = {"iterations": 3}


def _teacher(folder, arch, seed, **kwargs):
    """A small teacher on `procedural` (untrained weights, but BN running stats made non-trivial)."""
    info = load_dataset("procedural", "train").info
    model = create_model(arch, 1, 16, 10, seed=seed, **kwargs)
    with torch.no_grad():
        for i, bn in enumerate(m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.2, 0.2, generator=torch.Generator().manual_seed(seed + i))
            bn.running_var.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(seed + i + 100))
    path = folder / f"{arch}-{seed}.safetensors"
    save_teacher(path, model.eval(), info)
    return str(path)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("infer-teachers")
    return [_teacher(folder, "convnet-bn", 1, width=8, depth=2), _teacher(folder, "resnet8", 2, width=4)]


@pytest.fixture(scope="module")
def synthesized(teachers, tmp_path_factory):
    """ipc 3, 10 classes, 2 teachers -> K = 2 real images per class, 4 UFCs."""
    out = tmp_path_factory.mktemp("infer") / "i.ddk.h5"
    run_synthesizer("infer", "procedural", teachers, 3, TINY, seed=0, out=out)
    return out


# -- budget ---------------------------------------------------------------------------------------


def test_budget_formula_is_exact():
    assert real_per_class(10, 10, 3) == 7  # the spec's example: 70 real + 21 UFCs, 28 instances per class
    assert real_per_class(50, 10, 3) == 38
    assert real_per_class(10, 100, 4) == 9
    assert real_per_class(33, 10, 1) == 30  # the float expression gives 29 here; the formula's value is 30
    for ipc in range(1, 60):
        for c in (2, 10, 100):
            for m in range(0, 6):
                k = real_per_class(ipc, c, m)
                assert k == math.floor(Fraction(ipc) / (Fraction(m, c) + 1))
                assert k * c + k * m <= ipc * c  # stored image-equivalents fit the budget


def test_impossible_budget_is_refused_with_what_would_work():
    with pytest.raises(InvalidInput) as err:
        check_budget(1, 10, 3)
    assert "K = int(ipc/(M/C + 1))" in str(err.value) and "--ipc 2" in err.value.fix
    with pytest.raises(InvalidInput) as err:
        check_budget(1, 2, 3)  # ipc 1 can never work, whatever the teacher count
    assert "--ipc 3" in err.value.fix and "teacher" not in err.value.fix
    with pytest.raises(InvalidInput) as err:
        check_budget(2, 2, 3)  # ipc 2 works with at most 2 teachers
    assert "at most 2 teacher(s)" in err.value.fix
    assert check_budget(2, 10, 3) == 1


def test_refusals_through_run_synthesizer(teachers, tmp_path):
    out = tmp_path / "x.ddk.h5"
    with pytest.raises(InvalidInput, match="0 real images per class"):
        run_synthesizer("infer", "procedural", teachers + teachers[:1], 1, TINY, out=out)
    with pytest.raises(InvalidInput, match="at least 1 teacher"):
        run_synthesizer("infer", "procedural", [], 10, TINY, out=out)
    plain = _teacher(tmp_path, "convnet", 3, width=8, depth=2)  # instance norm: no BatchNorm
    with pytest.raises(IncompatibleError, match="no BatchNorm") as err:
        run_synthesizer("infer", "procedural", [teachers[0], plain], 10, TINY, out=out)
    assert "convnet-bn" in err.value.fix
    with pytest.raises(InvalidInput, match="labels"):
        run_synthesizer("infer", "procedural", teachers, 10, {"labels": "sometimes", **TINY}, out=out)
    assert not out.exists() and not (tmp_path / "x.ddk.h5.work").exists()


# -- the UFC objective ----------------------------------------------------------------------------


def test_one_step_against_hand_computation():
    """Step 1 of Adam from u = 0 moves by −lr·g/(|g|+eps) in normalized units, g = ∇[CE + r_bn(10·R_1 + Σ R_l)]."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 4, 3, padding=1),
                          nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4)).eval()
    for bn in (model[1], model[4]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    group = torch.rand(4, 1, 6, 6)
    norm = load_dataset("procedural", "train").info.normalization
    cfg = InferConfig(iterations=1, jitter=0, r_bn=0.7)
    u, _ = optimize_ufc(model, group, norm, cfg, torch.Generator().manual_seed(0))

    v = torch.zeros(1, 1, 6, 6, requires_grad=True)
    x = (group - norm.mean[0]) / norm.std[0] + v
    a1 = model[0](x)
    a2 = model[3](model[2](model[1](a1)))

    def r(a, bn):
        flat = a.transpose(0, 1).reshape(a.shape[1], -1)
        mean, var = flat.mean(1), ((flat - flat.mean(1, keepdim=True)) ** 2).mean(1)
        return ((bn.running_var - var) ** 2).sum().sqrt() + ((bn.running_mean - mean) ** 2).sum().sqrt()

    loss = F.cross_entropy(model(x), torch.arange(4)) + 0.7 * (10 * r(a1, model[1]) + r(a2, model[4]))
    (g,) = torch.autograd.grad(loss, v)
    expected = -0.25 * g / (g.abs() + 1e-8) * norm.std[0]  # back to pixel units
    torch.testing.assert_close(u, expected, rtol=1e-4, atol=1e-6)



def test_flip_option_flips_the_composite_on_the_drawn_steps():
    """With flip=True a step whose draw says "flip" takes the gradient through the mirrored composite."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                          nn.Flatten(), nn.Linear(12, 4)).eval()
    group = torch.rand(4, 1, 6, 6)
    norm = load_dataset("procedural", "train").info.normalization

    def by_hand(mirror: bool) -> torch.Tensor:  # one Adam step on CE alone (r_bn = 0)
        v = torch.zeros(1, 1, 6, 6, requires_grad=True)
        x = (group - norm.mean[0]) / norm.std[0] + v
        x = x.flip(3) if mirror else x
        (g,) = torch.autograd.grad(F.cross_entropy(model(x), torch.arange(4)), v)
        return -0.25 * g / (g.abs() + 1e-8) * norm.std[0]

    def drawn_flip(seed: int) -> bool:
        gen = torch.Generator().manual_seed(seed)
        torch.randint(0, 1, (2,), generator=gen)  # the roll offsets come first
        return bool(torch.rand(1, generator=gen) < 0.5)

    draws = {seed: drawn_flip(seed) for seed in range(8)}
    assert set(draws.values()) == {True, False}
    for seed, mirrored in draws.items():
        cfg = InferConfig(iterations=1, jitter=0, flip=True, r_bn=0.0)
        got = optimize_ufc(model, group, norm, cfg, torch.Generator().manual_seed(seed))[0]
        torch.testing.assert_close(got, by_hand(mirror=mirrored), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(by_hand(mirror=True), by_hand(mirror=False))
    unflipped = optimize_ufc(model, group, norm, InferConfig(iterations=1, jitter=0, r_bn=0.0), torch.Generator().manual_seed(0))[0]
    torch.testing.assert_close(unflipped, by_hand(mirror=False), rtol=1e-4, atol=1e-6)

def test_ufc_is_shared_by_all_classes_of_a_group(synthesized):
    with DistilledDataset(synthesized) as ds:
        comp = ds.composite
        stored_labels = ds.labels[: ds.num_stored]
        assert comp.compensators.shape == (4, 1, 16, 16)  # one tensor per (group, teacher): K·M = 2·2
        assert comp.members.shape == (4, 10)
        for row in range(4):
            assert stored_labels[comp.members[row]].tolist() == list(range(10))  # every class once
        pairs = sorted(zip(comp.extra["group_of"].tolist(), comp.extra["teacher_of"].tolist()))
        assert pairs == [(0, 0), (0, 1), (1, 0), (1, 1)]
        # the two UFCs of a group share its members; the two groups are disjoint
        assert (comp.members[0] == comp.members[1]).all() and not set(comp.members[0]) & set(comp.members[2])
        assert np.abs(comp.compensators).max() > 0
        assert len(ds) == 20 + 40 and ds.header.config["k_per_class"] == 2
        assert ds.budget.instances_per_class == 6 and ds.budget.ipc_stored == 3


def test_composite_round_trip_and_static_labels(synthesized, teachers):
    """Composed instances equal clamp(base + u) from the stored parts, and the stored labels are the
    teachers' mean logits on exactly those instances."""
    with h5py.File(synthesized, "r") as h5:
        base = torch.from_numpy(h5["images"][()]).float() / 255.0  # procedural is uint8: stored losslessly
        assert h5["images"].dtype == np.uint8
        comps = torch.from_numpy(h5["composite/compensators"][()])
        members = h5["composite/members"][()]
        logits = h5["soft/logits/values"][()]
    expected = torch.cat([base] + [(base[members[r]] + comps[r]).clamp(0, 1) for r in range(len(comps))])
    with DistilledDataset(synthesized) as ds:
        got = ds.pixels()
        assert torch.equal(got, expected)
        assert (got[20:] != base[members.reshape(-1)]).any()  # the UFCs changed the instances
        from ddkit.models.teacher import load_teacher

        ens = torch.stack([load_teacher(t).model(ds.info.normalization.apply(got)) for t in teachers]).mean(0)
    assert logits.dtype == np.float16 and logits.shape == (60, 10)
    torch.testing.assert_close(torch.from_numpy(logits).float(), ens.detach(), rtol=2e-3, atol=2e-3)


def test_dynamic_labels_store_none_and_the_same_instances(teachers, tmp_path, synthesized):
    out = tmp_path / "dyn.ddk.h5"
    run_synthesizer("infer", "procedural", teachers, 3, {"labels": "dynamic", **TINY}, seed=0, out=out)
    with DistilledDataset(out) as dyn, DistilledDataset(synthesized) as static:
        assert dyn.soft_schemes == [] and dyn.header.config["labels"] == "dynamic" and len(dyn) == 60
        assert torch.equal(dyn.pixels(), static.pixels())  # the label mode does not change the UFCs


# -- resume ---------------------------------------------------------------------------------------


def test_resume_equals_uninterrupted(teachers, tmp_path, monkeypatch, synthesized):
    out = tmp_path / "r.ddk.h5"
    real_save, calls = WorkItemStore.save, {"save": 0, "optimize": 0}

    def dying_save(self, key, arrays):
        real_save(self, key, arrays)
        calls["save"] += 1
        if calls["save"] == 2:
            raise KeyboardInterrupt("simulated kill after 2 work items")

    monkeypatch.setattr(WorkItemStore, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        run_synthesizer("infer", "procedural", teachers, 3, TINY, seed=0, out=out)
    assert not out.exists() and len(list((tmp_path / "r.ddk.h5.work").glob("*.npz"))) == 2
    monkeypatch.setattr(WorkItemStore, "save", real_save)

    with pytest.raises(InvalidInput, match="different run"):  # other settings never mix with saved items
        run_synthesizer("infer", "procedural", teachers, 3, {"iterations": 4}, seed=0, out=out, resume=True)
    real_optimize = infer_mod.optimize_ufc

    def counting(*args, **kwargs):
        calls["optimize"] += 1
        return real_optimize(*args, **kwargs)

    monkeypatch.setattr(infer_mod, "optimize_ufc", counting)
    run_synthesizer("infer", "procedural", teachers, 3, TINY, seed=0, out=out, resume=True)
    assert calls["optimize"] == 2  # only the 2 unfinished of 4 items were computed
    assert not (tmp_path / "r.ddk.h5.work").exists()
    with h5py.File(out, "r") as a, h5py.File(synthesized, "r") as b:  # `synthesized`: same seed, never killed
        for name in ("images", "labels", "composite/compensators", "composite/members", "soft/logits/values"):
            assert np.array_equal(a[name][()], b[name][()]), name
        assert a.attrs["content_sha256"] == b.attrs["content_sha256"]


def test_other_seed_gives_other_ufcs(teachers, tmp_path, synthesized):
    out = tmp_path / "s1.ddk.h5"
    run_synthesizer("infer", "procedural", teachers, 3, TINY, seed=1, out=out)
    with h5py.File(out, "r") as a, h5py.File(synthesized, "r") as b:
        assert not np.array_equal(a["composite/compensators"][()], b["composite/compensators"][()])


# -- the evaluator's stored labels ----------------------------------------------------------------


def test_stored_logits_are_mixed_with_mixups_lambda_then_kl_at_t():
    g = torch.Generator().manual_seed(0)
    student, rows = torch.randn(5, 4, generator=g), 10 * torch.randn(5, 4, generator=g)
    perm, lam, t = torch.tensor([2, 0, 1, 4, 3]), 0.3, 30.0

    class P:
        temperature, t_squared = t, False

    got = STORED_LOSSES.get("logits")(student, rows.half(), torch.zeros(5, dtype=torch.long), MixInfo(lam, perm), P)
    mixed = lam * rows.half().float() + (1 - lam) * rows.half().float()[perm]
    p = torch.softmax(mixed / t, 1)
    q = torch.softmax(student / t, 1)
    expected = (p * (p.log() - q.log())).sum() / 5  # batch mean, no T² factor
    torch.testing.assert_close(got, expected)


def test_trainer_mixes_stored_logits_with_the_images_lambda_and_partner(monkeypatch, synthesized, teachers):
    """Under stored-cpu, the λ and partner given to the label loss are the ones mixup applied to the images."""
    from ddkit.augment import MixUp
    from ddkit.evaluate import evaluate, trainer as trainer_module

    applied, used = [], []
    real_apply, real_loss = MixUp.apply, STORED_LOSSES.get("logits")

    def spy_apply(self, x, params):
        applied.append((float(params["lam"]), params["perm"].clone()))
        return real_apply(self, x, params)

    def spy_loss(student, rows, labels, mix, protocol):
        used.append((mix.lam, mix.perm.clone()))
        return real_loss(student, rows, labels, mix, protocol)

    monkeypatch.setattr(MixUp, "apply", spy_apply)
    monkeypatch.setattr(trainer_module, "require_stored_scheme", lambda scheme: spy_loss)
    card = evaluate(str(synthesized), "stored-cpu", seeds=[0], teachers=teachers, steps=3, full_reference=False,
                    write_card=False)
    assert card.random_baseline is not None and len(applied) == len(used) == 6  # 3 steps × (result + baseline)
    for (lam_a, perm_a), (lam_u, perm_u) in zip(applied, used):
        assert lam_a == lam_u and torch.equal(perm_a, perm_u)


# -- the command line -----------------------------------------------------------------------------


def test_cli_end_to_end(capsys, tmp_path, teachers):
    out = tmp_path / "c.ddk.h5"
    t_args = [a for t in teachers for a in ("--teacher", t)]
    code, _, err = _cli(capsys, "synthesize", "--method", "infer", "--dataset", "procedural", *t_args, "--ipc", "3",
                        "--config", "iterations=2", "--out", str(out))
    assert code == 0, err
    assert "K = int(3/(2/10 + 1)) = 2" in err  # the log line reports K
    code, text, _ = _cli(capsys, "info", str(out))
    assert code == 0 and "4 compensators" in text and "equivalent ipc 2.4" in text and "soft/logits" in text
    for what in ("instances", "compensators"):
        code, _, err = _cli(capsys, "show", str(out), "--what", what, "--out", str(tmp_path / f"{what}.png"))
        assert code == 0, err
    code, text, err = _cli(capsys, "evaluate", str(out), "--protocol", "stored-cpu", "--seeds", "1", "--steps", "3",
                           "--no-full", *t_args)
    assert code == 0, err
    assert "random real" in text
    code, _, err = _cli(capsys, "synthesize", "--method", "infer", "--dataset", "procedural", *t_args, "--ipc", "1",
                        "--out", str(tmp_path / "k0.ddk.h5"))
    assert code == 2 and "--ipc 2" in err and "Traceback" not in err


def test_registered():
    assert "infer" in SYNTHESIZERS
