"""The evaluator: protocol registry, batched multi-seed training equal to independent runs, the
reference cache, the result card, and that the test split is read only after all training."""

import math

import pytest
import torch

import ddkit.data as data_module
from ddkit.data.base import DatasetInfo, Normalization
from ddkit.errors import DdkitError, IncompatibleError, InvalidInput
from ddkit.evaluate import PROTOCOLS, evaluate, get_protocol, trainer as trainer_module
from ddkit.evaluate.card import mean_std
from ddkit.evaluate.labels import MixInfo, hard_loss, kl_at_temperature, mix_targets
from ddkit.evaluate.protocols import require_same_protocol, versions
from ddkit.evaluate.ranking import label_robust_score, ranking_scores
from ddkit.evaluate.trainer import EpochSampler, StudentData, train_students


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DDKIT_CACHE", str(tmp_path / "cache"))


def tiny(protocol_name, **changes):
    """A registered protocol shrunk for tests (its derived name says so)."""
    changes.setdefault("steps", 15)
    changes.setdefault("student_kwargs", {"depth": 2, "width": 8, "norm": "instance"})
    return get_protocol(protocol_name).with_overrides(**changes)


@pytest.mark.parametrize("name", PROTOCOLS.names())
def test_protocols_are_complete_records(name):
    p = get_protocol(name)
    d = p.to_dict()
    assert d["id"] == name == f"{p.name}@{p.version}" and p.version >= 1
    assert p.label_source in ("hard", "teacher", "stored")
    assert (p.steps > 0) != (p.epochs > 0)
    assert p.total_steps(500) > 0
    assert p.summary


def test_protocol_versions_resolve_and_unknown_ones_name_the_registered():
    assert get_protocol("hard-cpu@1").id == "hard-cpu@1"
    newest = max(versions("teacher-cpu"))
    assert get_protocol("teacher-cpu").id == f"teacher-cpu@{newest}"
    with pytest.raises(InvalidInput, match="no version '7'") as err:
        get_protocol("hard-cpu@7")
    assert "hard-cpu@1" in err.value.fix
    with pytest.raises(DdkitError, match="unknown protocol"):
        get_protocol("hard-gpu")


def test_recipes_added_later_leave_version_one_records_unchanged():
    """@1 cards and cached references were keyed on these dicts: new fields must not appear in them."""
    d = get_protocol("teacher-cpu@1").to_dict()
    assert "min_steps" not in d and "hard_pair" not in d
    assert get_protocol("teacher-cpu@1").total_steps(60000) == 1000


def test_version_two_budget_is_epochs_with_a_step_floor():
    p = get_protocol("teacher-cpu@2")
    assert p.total_steps(10) == p.total_steps(500) == p.min_steps  # small sets get the floor
    assert p.total_steps(60000) == p.epochs * (60000 // p.batch_size) > p.min_steps
    assert p.to_dict()["min_steps"] == p.min_steps and p.to_dict()["hard_pair"] == "hard-cpu@2"


@pytest.mark.parametrize("name", ["teacher-cpu", "stored-cpu"])
def test_version_three_only_lengthens_the_budget_of_large_sets(name):
    """@3 changes @2's epochs and nothing else, so sets up to 6 400 images train exactly as under @2."""
    v2, v3 = get_protocol(f"{name}@2"), get_protocol(f"{name}@3")
    d2, d3 = v2.to_dict(), v3.to_dict()
    changed = {k for k in d2 if d2[k] != d3[k]}
    assert changed == {"version", "id", "epochs", "summary"} and v3.epochs > v2.epochs
    assert all(v3.total_steps(n) == v2.total_steps(n) == 1000 for n in (10, 100, 500, 6400))
    assert v3.total_steps(60000) > v2.total_steps(60000)


def test_hard_paper_two_is_the_published_evaluation_and_one_keeps_its_record():
    """@2 differs from @1 in exactly the four ways its comment names; @1's record (its cache key) is untouched."""
    v1, v2 = get_protocol("hard-paper@1"), get_protocol("hard-paper@2")
    d1, d2 = v1.to_dict(), v2.to_dict()
    assert "drop_last" not in d1 and "nesterov" not in d1["optim"]
    assert {k for k in d2 if d1.get(k) != d2[k]} == {"version", "id", "student_kwargs", "optim", "drop_last", "summary"}
    assert d2["student_kwargs"] == {**d1["student_kwargs"], "stem_padding": 3}
    assert d2["optim"] == {**d1["optim"], "schedule": "step-half", "nesterov": False}
    # 1000 epochs of ⌈n / 256⌉ batches, as a shuffled DataLoader without drop_last gives
    assert [v2.total_steps(n) for n in (10, 100, 500, 6000)] == [1000, 1000, 2000, 24000]
    assert [v1.total_steps(n) for n in (10, 100, 500)] == [1000, 1000, 1000]


def test_stored_convnet_paper_is_hard_paper_two_with_stored_labels():
    """The learned-label table's protocol differs from the hard-label one in its labels alone."""
    from ddkit.evaluate.protocols import hard_protocol_for

    hard, soft = get_protocol("hard-paper@2").to_dict(), get_protocol("stored-convnet-paper@1").to_dict()
    assert {k for k in soft if hard.get(k) != soft[k]} == {"name", "version", "id", "label_source", "hard_pair", "summary"}
    assert soft["label_source"] == "stored" and soft["temperature"] == 1.0
    assert hard_protocol_for(get_protocol("stored-convnet-paper")) == "hard-paper@2"


def test_epoch_sampler_without_drop_last_serves_every_row_once_per_epoch():
    sampler = EpochSampler(10, 4, torch.Generator().manual_seed(0), drop_last=False)
    for _ in range(3):
        epoch = [sampler.next() for _ in range(3)]
        assert [len(b) for b in epoch] == [4, 4, 2]
        assert sorted(torch.cat(epoch).tolist()) == list(range(10))
    dropping = EpochSampler(10, 4, torch.Generator().manual_seed(0))
    assert {len(dropping.next()) for _ in range(6)} == {4}


def test_step_half_schedule_divides_the_rate_once_at_half():
    from ddkit.training import OptimConfig, build_optimizer

    w = torch.nn.Parameter(torch.zeros(1))
    opt, sched = build_optimizer([w], OptimConfig(lr=1.0, schedule="step-half", nesterov=False), 10)
    rates = []
    for _ in range(10):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates == [1.0] * 5 + [pytest.approx(0.1)] * 5
    assert opt.param_groups[0]["nesterov"] is False
    with pytest.raises(InvalidInput, match="unknown schedule"):
        build_optimizer([w], OptimConfig(schedule="linear"), 10)


@pytest.mark.parametrize("soft", ["teacher-imagenet@1", "stored-imagenet@1"])
def test_imagenet_protocols_have_a_hard_label_partner_and_unchanged_records(soft):
    """hard-imagenet@1 is teacher-imagenet@1 with hard labels and no mixing; both soft protocols find
    it by the family rule, so their records (and cache keys) keep no `hard_pair` field."""
    from ddkit.evaluate.protocols import hard_protocol_for

    hard, teacher = get_protocol("hard-imagenet"), get_protocol("teacher-imagenet@1")
    assert hard.id == "hard-imagenet@1" and hard_protocol_for(get_protocol(soft)) == hard.id
    assert (hard.label_source, hard.mix) == ("hard", "none")
    for same in ("student", "student_kwargs", "augmentation", "epochs", "steps", "batch_size", "optim", "family"):
        assert getattr(hard, same) == getattr(teacher, same), same
    paper = get_protocol(soft.replace("imagenet", "paper")).to_dict()
    record = get_protocol(soft).to_dict()
    assert "hard_pair" not in record
    changed = {k for k in record if record[k] != paper[k]}
    assert changed <= {"name", "id", "student", "augmentation", "family", "summary"}  # the replace() fields only


def test_a_teacher_imagenet_card_asks_for_its_hard_pair(monkeypatch):
    """DD-Ranking's scores of a teacher-imagenet card train the set under hard-imagenet@1."""
    from types import SimpleNamespace

    from ddkit.evaluate import api

    asked = []

    def fake_evaluate(train_set, protocol, seeds, **kwargs):
        asked.append(protocol)
        arm = SimpleNamespace(accuracies=[0.5 for _ in seeds])
        return SimpleNamespace(result=arm, full_data=SimpleNamespace(accuracies=[0.9 for _ in seeds]),
                               protocol={"id": protocol})

    monkeypatch.setattr(api, "evaluate", fake_evaluate)
    proto = get_protocol("teacher-imagenet@1")
    card = SimpleNamespace(protocol=proto.to_dict(), result=SimpleNamespace(accuracies=[0.7]),
                           random_baseline=SimpleNamespace(accuracies=[0.6]))
    scores = api._ranking(card, proto, "random:x:1", SimpleNamespace(path=None), [0], None, "cpu", False, False)
    assert asked == ["hard-imagenet@1"] and scores["hard_protocol"] == "hard-imagenet@1"
    assert scores["hlr"]["mean"] == pytest.approx(0.4)


def test_results_under_different_versions_are_never_compared():
    require_same_protocol({"id": "hard-cpu@1"}, {"id": "hard-cpu@1"}, "gain")
    with pytest.raises(IncompatibleError, match="hard-cpu@1.*hard-cpu@2"):
        require_same_protocol({"id": "hard-cpu@1"}, {"id": "hard-cpu@2"}, "gain")


def test_label_robust_score_matches_dd_ranking_formula():
    assert label_robust_score(0.0, 0.0) == pytest.approx((1 - math.exp(-1)) / (math.e - math.exp(-1)))
    assert label_robust_score(1.0, -1.0) == pytest.approx(1.0)
    assert label_robust_score(-1.0, 1.0) == pytest.approx(0.0)
    scores = ranking_scores("p@2", [0.8, 0.7], [0.75, 0.72], "hard-cpu@2", [0.6, 0.5], [0.9, 0.9])
    assert scores.hlr == pytest.approx([0.3, 0.4]) and scores.ior == pytest.approx([0.05, -0.02])
    alpha = 0.5 * 0.05 - 0.5 * 0.3
    assert scores.lrs[0] == pytest.approx((math.exp(alpha) - math.exp(-1)) / (math.e - math.exp(-1)))
    with pytest.raises(InvalidInput):
        ranking_scores("p@2", [0.8], [0.7, 0.7], "hard-cpu@2", [0.6], [0.9])


def test_overridden_protocol_is_renamed():
    p = get_protocol("hard-cpu").with_overrides(steps=3)
    assert p.name != "hard-cpu" and "steps=3" in p.name


def test_loss_functions_against_hand_computation():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 2])
    mix = MixInfo(0.25, torch.tensor([1, 0]))
    ce = lambda z, y: -torch.log_softmax(z, -1)[torch.arange(len(y)), y].mean()  # noqa: E731
    expected = 0.25 * ce(logits, labels) + 0.75 * ce(logits, labels[[1, 0]])
    torch.testing.assert_close(hard_loss(logits, labels, mix), expected)
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    torch.testing.assert_close(mix_targets(targets, mix), 0.25 * targets + 0.75 * targets[[1, 0]])
    t = 4.0
    p = torch.softmax(targets / t, -1)
    q = torch.log_softmax(logits / t, -1)
    kl = (p * (p.log() - q)).sum(-1).mean()
    torch.testing.assert_close(kl_at_temperature(logits, targets, t, False), kl)
    torch.testing.assert_close(kl_at_temperature(logits, targets, t, True), kl * t * t)


def test_epoch_sampler_covers_every_sample_each_epoch():
    s = EpochSampler(10, 3, torch.Generator().manual_seed(0))
    seen = torch.cat([s.next() for _ in range(3)])
    assert len(set(seen.tolist())) == 9  # 3 full batches of a 10-permutation, last one dropped
    small = EpochSampler(4, 64, torch.Generator().manual_seed(0))
    assert sorted(small.next().tolist()) == [0, 1, 2, 3]


def _toy_data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 16, 16, generator=g)
    y = torch.arange(n) % 10
    return StudentData(x, y, torch.randn(n, 10, generator=g), "logits")


INFO = DatasetInfo("toy", tuple(str(i) for i in range(10)), (1, 16, 16), Normalization((0.5,), (0.5,)))


@pytest.mark.parametrize("protocol_name", ["hard-cpu@1", "stored-cpu@1", "teacher-cpu@1"])
def test_batched_seeds_equal_independent_runs(protocol_name):
    """`--seeds N` as one vmapped model is the same computation as N separate runs."""
    protocol = tiny(protocol_name)
    seeds = [0, 1, 2]
    data = [_toy_data(seed=s) for s in seeds]
    torch.manual_seed(0)  # the toy teacher and eval batch do not depend on which tests ran before
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10))
    teachers = [teacher] if protocol.label_source == "teacher" else []
    batched = train_students(protocol, data, seeds, INFO, torch.device("cpu"), teachers, batched=True)
    assert batched._stacked is not None
    x_eval = torch.randn(30, 1, 16, 16)
    y_eval = torch.arange(30) % 10
    batched_states = batched.state_dicts()
    for i, seed in enumerate(seeds):
        single = train_students(protocol, [data[i]], [seed], INFO, torch.device("cpu"), teachers, batched=False)
        for key, value in single.state_dicts()[0].items():
            torch.testing.assert_close(batched_states[i][key], value, rtol=1e-4, atol=1e-5)
        b_logits, s_logits = batched.predict(x_eval)[i], single.predict(x_eval)[0]
        torch.testing.assert_close(b_logits, s_logits, rtol=1e-3, atol=1e-4)
        # Same predictions wherever the top two logits are not a float-rounding tie.
        top2 = s_logits.topk(2, dim=1).values
        clear = (top2[:, 0] - top2[:, 1]) > 1e-3
        assert torch.equal(b_logits.argmax(1)[clear], s_logits.argmax(1)[clear])
        if clear.all():
            assert batched.accuracies(x_eval, y_eval)[i] == single.accuracies(x_eval, y_eval)[0]


def test_compiled_students_follow_the_same_recipe():
    """`compile=True` trains the same students (hard-paper@2's DSA views, partial batches) up to float rounding,
    and refuses the vmapped path it does not serve."""
    protocol = get_protocol("hard-paper@2").with_overrides(steps=3, epochs=0, student_kwargs={"depth": 2, "width": 4})
    data, seeds = [_toy_data(n=12)], [0]
    eager = train_students(protocol, data, seeds, INFO, torch.device("cpu"), batched=False)
    compiled = train_students(protocol, data, seeds, INFO, torch.device("cpu"), batched=False, compile=True)
    for key, value in eager.state_dicts()[0].items():
        torch.testing.assert_close(compiled.state_dicts()[0][key], value, rtol=1e-4, atol=1e-5)
    with pytest.raises(InvalidInput, match="one at a time"):
        train_students(protocol, data * 2, [0, 1], INFO, torch.device("cpu"), batched=True, compile=True)


def test_batchnorm_students_fall_back_to_one_at_a_time():
    protocol = tiny("hard-cpu", student="convnet-bn", student_kwargs={"depth": 2, "width": 8})
    students = train_students(protocol, [_toy_data()] * 2, [0, 1], INFO, torch.device("cpu"))
    assert students._stacked is None and len(students.models) == 2


def test_mean_std_is_sample_std():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([0.5]) == (0.5, 0.0)


def test_random_subset_evaluation_card_cache_and_test_split_order(monkeypatch):
    """Evaluate random:procedural:5; the card is complete; references come from the cache the
    second time; the test split is loaded only after every student has been trained."""
    events = []
    real_train = trainer_module.train_students

    def spy_train(*args, **kwargs):
        events.append("train")
        return real_train(*args, **kwargs)

    monkeypatch.setattr("ddkit.evaluate.api.train_students", spy_train)
    monkeypatch.setattr(data_module, "_test_split_listeners", [lambda name: events.append("test")])
    protocol = tiny("hard-cpu")
    card = evaluate("random:procedural:5", protocol, seeds=[0, 1], full_reference=True)
    assert events == ["train", "train", "test"]  # random:… is its own random baseline: trained once
    d = card.to_dict()
    assert d["result"]["accuracies"] == d["random_baseline"]["accuracies"]
    assert d["protocol"]["id"] == protocol.id and d["seeds"] == [0, 1]
    assert len(d["result"]["accuracies"]) == 2 and 0 <= d["result"]["mean"] <= 1
    assert d["random_baseline"]["ipc"] == 5 and d["gain_over_random"] == pytest.approx(
        d["result"]["mean"] - d["random_baseline"]["mean"])
    assert d["full_data"]["accuracies"] and d["budget_bytes"] == 5 * 10 * 16 * 16
    for key in ("device", "world_size", "wall_seconds", "ddkit_version", "content_sha256", "batched"):
        assert key in d
    # Second run: both references come from the cache, only the evaluated set is trained.
    events.clear()
    again = evaluate("random:procedural:5", protocol, seeds=[0, 1], full_reference=True)
    assert events == ["test"]
    assert again.random_baseline.cached_seeds == [0, 1]
    assert again.random_baseline.accuracies == card.random_baseline.accuracies
    assert "gain over random" in again.table()


def test_teacher_protocol_requires_a_teacher():
    with pytest.raises(InvalidInput, match="--teacher"):
        evaluate("random:procedural:2", tiny("teacher-cpu"), seeds=[0], baseline=False, full_reference=False)


def test_bad_train_set_spec():
    with pytest.raises(InvalidInput, match="random:DATASET:IPC"):
        evaluate("random:procedural:many", tiny("hard-cpu"), seeds=[0])
