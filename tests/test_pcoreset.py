"""PCoreSet / ActiveKD: the dual-head math against hand computations, the acquisition rules, the
teacher-logit file checks, one round through `run_selector` / the CLI for every active-learning
selector with and without distillation, and the loop never reading a label the oracle has not given."""

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ddkit.data import load_dataset
from ddkit.errors import FileFormatError, IncompatibleError, InvalidInput
from ddkit.pools.logits import load_teacher_logits, save_teacher_logits
from ddkit.selectors import SELECTORS, run_selector
from ddkit.selectors.acquisition import RULES, RoundState, Rule, get_rule
from ddkit.selectors.active import ActiveSelector, Oracle, PoolView, run_loop, seed_set
from ddkit.selectors.activekd import ActiveKDConfig, activekd_loss, build_student, combine_heads, warmup_linear
from ddkit.store import read_selection

TINY = dict(width=4, depth=2, steps_per_label=0.5, min_steps=3, batch_size=16)
AL_SELECTORS = [n for n in SELECTORS.names() if issubclass(SELECTORS.get(n), ActiveSelector)]


@pytest.fixture(scope="module")
def pool():
    return load_dataset("procedural", "train")


@pytest.fixture(scope="module")
def logits_file(pool, tmp_path_factory):
    """Weak but informative 'teacher' logits: the true class plus noise (computed outside ddkit)."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1, (len(pool), pool.num_classes)).astype(np.float32)
    logits[np.arange(len(pool)), pool.labels.numpy()] += 2.0
    path = tmp_path_factory.mktemp("logits") / "pool.logits.h5"
    save_teacher_logits(path, logits, pool)
    return path, logits


# -- the math -------------------------------------------------------------------------------------
def test_dual_head_combination_by_hand():
    z_ce = torch.tensor([[2.0, 0.0, 0.0]])
    z_kd = torch.tensor([[0.0, 4.0, 0.0]])
    e = np.exp
    p_ce = np.array([e(2), 1, 1]) / (e(2) + 2)
    p_kd_b2 = np.array([1, e(2), 1]) / (e(2) + 2)  # softmax(z_kd / β) with β = 2
    got = combine_heads(z_ce, z_kd, alpha=0.25, beta=2.0)
    np.testing.assert_allclose(got[0].numpy(), 0.75 * p_ce + 0.25 * p_kd_b2, rtol=1e-6)
    np.testing.assert_allclose(got.sum().item(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(combine_heads(z_ce, z_kd, 0.0, 1.0)[0].numpy(), p_ce, rtol=1e-6)
    np.testing.assert_allclose(combine_heads(z_ce, None, 0.5, 1.0)[0].numpy(), p_ce, rtol=1e-6)


def test_activekd_loss_by_hand():
    torch.manual_seed(0)
    z_ce, z_kd_l, t_l = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    z_kd_u, t_u = torch.randn(5, 4), torch.randn(5, 4)
    y = torch.tensor([0, 3, 1])
    T = 2.0

    def kl(s, t):  # KL(σ(t/T) ‖ σ(s/T)), batch mean, by the definition
        pt, ps = torch.softmax(t / T, -1), torch.softmax(s / T, -1)
        return (pt * (pt.log() - ps.log())).sum(1).mean()

    expected = 0.5 * F.cross_entropy(z_ce, y) + 0.5 * T * T * (kl(z_kd_l, t_l) + kl(z_kd_u, t_u))
    torch.testing.assert_close(activekd_loss(z_ce, y, z_kd_l, t_l, z_kd_u, t_u, T), expected)
    # Nothing labeled: only the KD terms remain.
    none = activekd_loss(z_ce[:0], y[:0], z_kd_l[:0], t_l[:0], z_kd_u, t_u, T)
    torch.testing.assert_close(none, 0.5 * T * T * kl(z_kd_u, t_u))


def test_warmup_then_linear_decay():
    factors = [warmup_linear(s, 100, 10) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[55] == pytest.approx(0.5) and factors[99] == pytest.approx(1 / 90)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))


def test_student_restarts_from_the_same_weights():
    cfg = ActiveKDConfig(**TINY)
    a, b = build_student(cfg, (1, 16, 16), 10, seed=3), build_student(cfg, (1, 16, 16), 10, seed=3)
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(p, q, msg=name)
    c = build_student(cfg, (1, 16, 16), 10, seed=4)
    assert not torch.equal(a.kd_head.weight, c.kd_head.weight)


# -- acquisition rules ----------------------------------------------------------------------------
def _state(n=60, c=4, seed=0, labeled=(0, 1)):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(c), n).astype(np.float32)
    feats = rng.normal(size=(n, 8)).astype(np.float32)
    labeled = np.array(labeled, np.int64)
    return RoundState(n, c, labeled, np.zeros(len(labeled), np.int64), 1, probs=probs, features=feats, teacher_probs=probs[::-1].copy())


@pytest.mark.parametrize("name", sorted(RULES))
def test_every_rule_picks_new_unique_samples(name):
    state = _state()
    got = get_rule(name).acquire(state, 7, seed=0)
    assert len(got.positions) == 7 == len(np.unique(got.positions))
    assert not np.isin(got.positions, state.labeled).any()
    again = get_rule(name).acquire(state, 7, seed=0)
    np.testing.assert_array_equal(got.positions, again.positions)  # seeded


@pytest.mark.parametrize("name", AL_SELECTORS)
def test_each_active_selector_owns_its_registered_rule(name):
    rule = SELECTORS.get(name).rule
    assert isinstance(rule, Rule) and rule is RULES.get(rule.name) and rule.name == name


def test_pcoreset_is_farthest_first_in_probability_space():
    # Labeled: a confident class-0 sample. The first query is the most distant probability vector
    # (confident class 1, √2 away), the second the one farthest from both (mostly class 2, √1.62).
    probs = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0.5, 0.5, 0], [0.1, 0, 0.9], [0.4, 0.3, 0.3]], np.float32)
    state = RoundState(6, 3, np.array([0]), np.array([0]), 1, probs=probs)
    got = get_rule("pcoreset").acquire(state, 2, seed=0)
    assert got.positions.tolist() == [2, 4]
    np.testing.assert_allclose(got.min_distance, [np.sqrt(2), np.sqrt(1.62)], rtol=1e-5)
    # The teacher variant looks at the teacher's probabilities only (here rows 2 and 4 swapped).
    teacher = RoundState(6, 3, np.array([0]), np.array([0]), 1, probs=probs, teacher_probs=probs[[0, 1, 4, 3, 2, 5]])
    assert get_rule("pcoreset-teacher").acquire(teacher, 2, seed=0).positions.tolist() == [4, 2]


def test_entropy_and_class_balanced_rules():
    probs = np.array([[0.98, 0.01, 0.01], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1]], np.float32)
    state = RoundState(5, 3, np.array([0]), np.array([0]), 1, probs=probs)
    assert get_rule("entropy").acquire(state, 2, seed=0).positions.tolist() == [1, 2]
    # Labeled: one sample of class 0. Classes 1 and 2 are rarest; predicted class 1: {2?, 4}, class 2: {3}.
    got = get_rule("class-balanced").acquire(state, 2, seed=0)
    assert sorted(probs[got.positions].argmax(1).tolist()) == [1, 2]


# -- teacher-logit files ---------------------------------------------------------------------------
def test_teacher_logits_round_trip_and_reorder(pool, logits_file, tmp_path):
    path, logits = logits_file
    loaded, record = load_teacher_logits(path, pool)
    np.testing.assert_array_equal(loaded.numpy(), logits)
    assert record["arch"] == "precomputed-logits" and len(record["sha256"]) == 64
    # Rows stored in another order (with their ids) come back in pool order.
    perm = np.random.default_rng(1).permutation(len(pool))
    with h5py.File(tmp_path / "perm.h5", "w") as f:
        f["logits"], f["ids"] = logits[perm], pool.ids.numpy()[perm]
    np.testing.assert_array_equal(load_teacher_logits(tmp_path / "perm.h5", pool)[0].numpy(), logits)
    np.save(tmp_path / "plain.npy", logits)
    np.testing.assert_array_equal(load_teacher_logits(tmp_path / "plain.npy", pool)[0].numpy(), logits)


@pytest.mark.parametrize("case, error, message", [
    ("rows", IncompatibleError, "rows but the pool"),
    ("classes", IncompatibleError, "classes but the pool has 10"),
    ("nan", InvalidInput, "NaN"),
    ("ints", InvalidInput, "dtype"),
    ("1d", InvalidInput, "N×C"),
    ("pickle", FileFormatError, "plain numpy array"),
    ("suffix", FileFormatError, ".npy or .h5"),
    ("missing", FileFormatError, "does not exist"),
    ("ids", IncompatibleError, "do not cover the pool"),
    ("no-logits", FileFormatError, "no `logits` dataset"),
    ("other-pool", IncompatibleError, "different pool"),
])
def test_teacher_logit_files_are_checked(pool, logits_file, tmp_path, case, error, message):
    _, good = logits_file
    path = tmp_path / "bad.npy"
    if case == "rows":
        np.save(path, good[:-1])
    elif case == "classes":
        np.save(path, good[:, :9])
    elif case == "nan":
        bad = good.copy()
        bad[3, 2] = np.nan
        np.save(path, bad)
    elif case == "ints":
        np.save(path, good.astype(np.int64))
    elif case == "1d":
        np.save(path, good[:, 0])
    elif case == "pickle":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif case == "suffix":
        path = tmp_path / "bad.csv"
        path.write_text("1,2\n")
    elif case == "missing":
        path = tmp_path / "absent.npy"
    elif case == "ids":
        path = tmp_path / "bad.h5"
        with h5py.File(path, "w") as f:
            f["logits"], f["ids"] = good, pool.ids.numpy() + 10_000
    elif case == "no-logits":
        path = tmp_path / "bad.h5"
        with h5py.File(path, "w") as f:
            f["scores"] = good
    elif case == "other-pool":
        path = tmp_path / "bad.h5"
        with h5py.File(path, "w") as f:
            f["logits"], f["ids"] = good, pool.ids.numpy()
            f.attrs["pool_fingerprint"] = "0" * 64
    with pytest.raises(error, match=message):
        load_teacher_logits(path, pool)


# -- one round through the registry and the CLI ------------------------------------------------------
@pytest.mark.parametrize("distill", [True, False])
@pytest.mark.parametrize("method", AL_SELECTORS + ["random"])
def test_one_round_with_and_without_distillation(method, distill, pool, logits_file, tmp_path):
    labeled = tmp_path / "seed.sel.h5"
    run_selector("random", "procedural", [], 10, {}, seed=0, out=labeled)
    config = {**TINY, "distill": distill} if method != "random" else {"balanced": False}
    out = tmp_path / "round.sel.h5"
    run_selector(method, "procedural", [], 5, config, seed=1, out=out, labeled=labeled, teacher_logits=str(logits_file[0]))
    sel, prior = read_selection(out), read_selection(labeled)
    assert len(sel) == 15 and sel.ids[:10].tolist() == prior.ids.tolist()
    assert sel.round.tolist() == [0] * 10 + [1] * 5
    assert sel.pool["fingerprint"] == pool.fingerprint()
    assert "min_distance" in sel.extra
    if method in ("pcoreset", "pcoreset-teacher", "coreset-features"):
        md = sel.extra["min_distance"][10:]
        assert np.isfinite(md).all() and (md > 0).all() and (np.diff(md) <= 1e-6).all()
        np.testing.assert_array_equal(sel.score[10:], md)
    if method != "random":
        assert sel.config["distill"] is distill and sel.config["rule"] == method
        assert sel.teachers[0]["arch"] == "precomputed-logits"


def test_cli_round_chains_and_checks(pool, logits_file, tmp_path):
    from ddkit.cli import main

    args = ["select", "--method", "pcoreset", "--pool", "procedural", "--teacher-logits", str(logits_file[0]),
            "--budget", "10", *sum((["--config", f"{k}={v}"] for k, v in TINY.items()), [])]
    main(args + ["--out", str(tmp_path / "r1.sel.h5")])
    main(args + ["--labeled", str(tmp_path / "r1.sel.h5"), "--out", str(tmp_path / "r2.sel.h5")])
    r1, r2 = read_selection(tmp_path / "r1.sel.h5"), read_selection(tmp_path / "r2.sel.h5")
    assert r2.round.tolist() == [1] * 10 + [2] * 10 and r2.ids[:10].tolist() == r1.ids.tolist()
    assert np.isinf(r1.extra["min_distance"][0])  # a cold start: the first pick has no center
    with pytest.raises(SystemExit) as exc:  # no teacher, distillation on: one clear error
        main(["select", "--method", "pcoreset", "--pool", "procedural", "--budget", "5", "--out", str(tmp_path / "x.sel.h5")])
    assert exc.value.code == 2


# -- the loop and its oracle ------------------------------------------------------------------------
class RecordingLabels:
    """Pool labels that remember every position read."""

    def __init__(self, labels):
        self.labels = np.asarray(labels)
        self.read: list[int] = []

    def __getitem__(self, positions):
        positions = np.atleast_1d(np.asarray(positions))
        self.read.extend(positions.tolist())
        return self.labels[positions]

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole label array was read")


@pytest.mark.parametrize("rule", ["pcoreset", "class-balanced"])
def test_loop_reads_only_labels_the_oracle_gave(pool, logits_file, rule):
    recorder = RecordingLabels(pool.labels.numpy())
    oracle = Oracle(recorder)
    view = PoolView(pool.normalized(), pool.ids.numpy(), pool.info)
    assert not hasattr(view, "labels")
    initial = seed_set(pool, 1, seed=0)  # setup step: the seed set, 1 per class
    cfg = ActiveKDConfig(**TINY)
    res = run_loop(view, oracle, initial, get_rule(rule), torch.from_numpy(logits_file[1]), cfg, rounds=2, queries=4, seed=0,
                   device=torch.device("cpu"))
    assert res.sizes == [10, 14, 18] and res.labeled_after(1).tolist() == res.labeled[:14].tolist()
    assert sorted(recorder.read) == sorted(res.labeled.tolist())  # each queried label read once, nothing else
    assert oracle.order == res.labeled.tolist()
    assert res.rounds.tolist() == [0] * 10 + [1] * 4 + [2] * 4
    with pytest.raises(AssertionError, match="unqueried"):
        oracle.labels_of([int(np.setdiff1d(np.arange(len(pool)), res.labeled)[0])])
