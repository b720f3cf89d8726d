"""The trained model pool for matching (IDM; `ddkit.synth.pools`): seeding, the queue's schedule,
training, checkpoint/restore, DM runs that are reproducible and resume to the uninterrupted result,
the class-aware regularizer, and the paper presets."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ddkit.config import build_config
from ddkit.errors import InvalidInput
from ddkit.models import create_model
from ddkit.store import DistilledDataset
from ddkit.synth import run_synthesizer
from ddkit.synth.dm import DM_PRESETS, DMConfig
from ddkit.synth.mtt import MTTConfig
from ddkit.synth.pools import ModelPool, PoolSettings, class_regularizer, sgd_step
from ddkit.workitems import WorkItemStore

pytestmark = pytest.mark.usefixtures("quiet")  # no progress lines; a cache of each test's own

TINY = {"iterations": 6, "batch_real": 8, "net_options": "depth=2,width=8,norm=instance", "checkpoint_every": 2}
POOL = {"pool_size": 3, "pool_warmup_steps": 2, "pool_batch": 16, "pool_refresh_every": 3, "class_reg": 0.5}


def make_pool(source, seed=0, **settings) -> ModelPool:
    def make_net(net_seed):
        return create_model("convnet", 1, 16, 10, seed=net_seed, depth=2, width=8, norm="instance")

    s = PoolSettings(**{"size": 3, "warmup_steps": 2, "batch": 16, "refresh_every": 2, **settings})
    return ModelPool(s, make_net, source.normalized(), source.labels, seed, "cpu")


def run(pool: ModelPool, iterations) -> list:
    """What DM does with a pool, without the images: fill, refresh, pick, train; the picks' serials."""
    picks = []
    for it in iterations:
        pool.fill()
        pool.refresh(it)
        slot = pool.pick(it)
        picks.append(None if slot is None else slot.serial)
        if slot is not None:
            pool.train(slot, it)
    return picks


def weights(pool: ModelPool) -> list[torch.Tensor]:
    return [t.clone() for s in pool.slots for t in [*s.net.state_dict().values(), *s.momentum]]


def test_the_same_seed_gives_the_same_pool_and_another_seed_another(source):
    a, b, c = make_pool(source), make_pool(source), make_pool(source, seed=1)
    picks = run(a, range(5))
    assert run(b, range(5)) == picks
    assert all(torch.equal(x, y) for x, y in zip(weights(a), weights(b)))
    run(c, range(5))
    assert not torch.equal(weights(a)[0], weights(c)[0])


def test_the_queue_warms_up_refreshes_the_oldest_and_trains_what_it_uses(source):
    pool = make_pool(source, refresh_every=2)
    pool.fill()
    assert [s.serial for s in pool.slots] == [0, 1, 2] and all(s.steps == 2 for s in pool.slots)
    picks = run(pool, range(1, 5))  # refreshes at 2 and 4 replace serials 0 then 1
    assert sorted(s.serial for s in pool.slots) == [2, 3, 4] and pool.next_serial == 5
    assert all(s.steps == 2 + picks.count(s.serial) for s in pool.slots)  # warm-up + one step per use
    assert all(0.0 <= s.accuracy <= 1.0 for s in pool.slots)
    assert all(not p.requires_grad for s in pool.slots for p in s.net.parameters())  # frozen between uses


def test_fresh_fraction_decides_between_pool_and_fresh_networks(source):
    untrained = {"warmup_steps": 0, "train_steps": 0, "refresh_every": 0}  # only the picks matter here
    assert None not in run(make_pool(source, fresh_fraction=0.0, **untrained), range(8))
    assert run(make_pool(source, fresh_fraction=1.0, **untrained), range(8)) == [None] * 8
    mixed = run(make_pool(source, fresh_fraction=0.5, **untrained), range(40))
    assert 5 < mixed.count(None) < 35


def test_restored_pool_continues_exactly_as_the_uninterrupted_one(source):
    whole = make_pool(source)
    picks = run(whole, range(7))
    first = make_pool(source)
    head = run(first, range(3))
    resumed = make_pool(source)
    resumed.restore({k: v.copy() for k, v in first.arrays().items()})
    assert head + run(resumed, range(3, 7)) == picks
    assert all(torch.equal(x, y) for x, y in zip(weights(whole), weights(resumed)))
    assert [s.accuracy for s in whole.slots] == [s.accuracy for s in resumed.slots]


def test_sgd_step_by_hand():
    """torch.optim.SGD's rule (dampening 0): d = g + wd·p, b ← μ·b + d, p ← p − lr·b; lr 0.1, μ 0.9, wd 0.01.
    p = 1, g = 0.5: d = 0.51, b = 0.51, p = 0.949; then g = −1: d = −0.99051, b = −0.53151, p = 1.002151."""
    p, buf = torch.tensor([1.0], dtype=torch.float64), [torch.zeros(1, dtype=torch.float64)]
    for g, expected in ((0.5, 0.949), (-1.0, 1.002151)):
        p.grad = torch.tensor([g], dtype=torch.float64)
        sgd_step([p], buf, 0.1, 0.9, 0.01)
        assert float(p) == pytest.approx(expected, abs=1e-12)


def test_class_regularizer_by_hand():
    net = create_model("convnet", 1, 16, 10, seed=0, depth=2, width=8)
    emb, labels = torch.randn(6, net.feature_dim), torch.tensor([0, 1, 2, 3, 4, 5])
    expected = 0.3 * 0.5 * F.cross_entropy(net.classifier(emb), labels)
    assert torch.allclose(class_regularizer(net, emb, labels, 0.3, 0.5), expected)


# -- DM with a pool ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("pool") / "dm.ddk.h5"
    run_synthesizer("dm", "procedural", [], 2, {**TINY, **POOL}, seed=0, out=out)
    return out


def _images(path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["images"][()]


def test_dm_with_a_pool_is_reproducible_and_differs_from_dm(tmp_path, pool_file):
    again = tmp_path / "again.ddk.h5"
    run_synthesizer("dm", "procedural", [], 2, {**TINY, **POOL}, seed=0, out=again)
    assert np.array_equal(_images(again), _images(pool_file))
    plain = tmp_path / "plain.ddk.h5"
    run_synthesizer("dm", "procedural", [], 2, TINY, seed=0, out=plain)
    assert not np.array_equal(_images(plain), _images(pool_file))
    with DistilledDataset(pool_file) as ds:
        assert ds.header.config["pool_size"] == 3 and ds.header.config["class_reg"] == 0.5


def test_a_pool_of_only_fresh_networks_is_plain_dm(tmp_path):
    """fresh_fraction 1: every iteration embeds with DM's own fresh network, so the images are DM's."""
    a, b = tmp_path / "a.ddk.h5", tmp_path / "b.ddk.h5"
    run_synthesizer("dm", "procedural", [], 2, TINY, seed=0, out=a)
    run_synthesizer("dm", "procedural", [], 2, {**TINY, "pool_size": 2, "pool_warmup_steps": 1, "pool_batch": 8,
                                                "pool_fresh_fraction": 1.0}, seed=0, out=b)
    assert np.array_equal(_images(a), _images(b))


def test_resumed_run_with_a_pool_equals_the_uninterrupted_one(tmp_path, monkeypatch, pool_file):
    out = tmp_path / "r.ddk.h5"
    real_save = WorkItemStore.save
    saved = []

    def dying_save(self, key, arrays):
        real_save(self, key, arrays)
        saved.append(arrays)
        if len(saved) == 3:
            raise KeyboardInterrupt("simulated kill right after the third checkpoint")

    monkeypatch.setattr(WorkItemStore, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        run_synthesizer("dm", "procedural", [], 2, {**TINY, **POOL}, seed=0, out=out)
    work = tmp_path / "r.ddk.h5.work"
    # iteration 2's checkpoint was discarded when 4's was written; the kill came before 4's turn
    assert sorted(p.name for p in work.glob("*.npz")) == ["iter-0000004.npz", "iter-0000006.npz"]
    assert any(k.startswith("pool.") for k in saved[1]) and len(saved[1]["pool.meta"]) == 3
    (work / "iter-0000006.npz").unlink()  # as if the kill had come before the last checkpoint: resume from 4
    monkeypatch.setattr(WorkItemStore, "save", real_save)
    run_synthesizer("dm", "procedural", [], 2, {**TINY, **POOL}, seed=0, out=out, resume=True)
    assert np.array_equal(_images(out), _images(pool_file))


# -- presets -------------------------------------------------------------------------------------------


def test_dm_paper_preset_fills_the_published_recipe_and_explicit_options_win():
    c = build_config(DMConfig, {"preset": "paper", "iterations": "7"})
    assert (c.iterations, c.batch_real, c.lr_img, c.momentum, c.net_options) == (
        7, 256, 1.0, 0.5, "depth=3,width=128,norm=instance")
    assert DM_PRESETS["paper"]["iterations"] == 20000 and build_config(DMConfig, {"preset": "paper"}).iterations == 20000
    with pytest.raises(InvalidInput, match="no preset"):
        build_config(DMConfig, {"preset": "fast"})


@pytest.mark.parametrize("ipc, row", [(1, (50, 2, 2, 1e-7)), (10, (30, 2, 20, 1e-5)), (5, (30, 2, 20, 1e-5)),
                                      (50, (30, 2, 40, 1e-5)), (100, (30, 2, 40, 1e-5))])
def test_mtt_paper_preset_takes_the_row_of_the_ipc(ipc, row):
    c = build_config(MTTConfig, {"preset": "paper", "experts": "x.experts.h5"}, context={"ipc": ipc})
    assert (c.syn_steps, c.expert_epochs, c.max_start_epoch, c.lr_lr) == row
    assert (c.iterations, c.lr_init, c.batch_syn, c.model) == (5000, 0.01, 0, "convnet")
    assert build_config(MTTConfig, {"preset": "paper", "experts": "x", "syn_steps": 3}, context={"ipc": ipc}).syn_steps == 3
    with pytest.raises(InvalidInput, match="depends on the IPC"):
        build_config(MTTConfig, {"preset": "paper", "experts": "x"})


def test_the_file_records_the_preset_and_its_resolved_values(tmp_path):
    out = tmp_path / "p.ddk.h5"
    run_synthesizer("dm", "procedural", [], 1, {"preset": "paper", "iterations": 1, "batch_real": 4,
                                                "net_options": "depth=2,width=8,norm=instance"}, seed=0, out=out)
    with DistilledDataset(out) as ds:
        config = ds.header.config
    assert config["preset"] == "paper" and config["iterations"] == 1 and config["momentum"] == 0.5
    assert config["dsa"] == DM_PRESETS["paper"]["dsa"]
