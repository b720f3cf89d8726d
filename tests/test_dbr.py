"""DBR label transfer: views defined independently of batch size, the loss against a hand computation,
the stored distances matching the teacher on the views the evaluator replays, batched = sequential
training on replayed views, the end-to-end flow (synthesize → info → evaluate), and the refusals."""

import dataclasses

import pytest
import torch

from ddkit.data import load_dataset
from ddkit.dbr import (
    VIEW_RECIPES,
    DBRTargets,
    ViewRecipe,
    ViewSchedule,
    ViewStream,
    dbr_distances,
    dbr_loss,
    dbr_payload,
    get_recipe,
    register_recipe,
    targets_from_payload,
)
from ddkit.errors import IncompatibleError, InvalidInput
from ddkit.evaluate import evaluate, get_protocol
from ddkit.evaluate.trainer import StudentData, train_students
from ddkit.models import create_model
from ddkit.models.teacher import load_teacher, save_teacher

RECIPE = ViewRecipe("test-views@1", steps=20, batch_size=16, chunk=8, augmentation="resized-crop-flip", mix="cutmix",
                    summary="20 steps × 16 views for the DBR tests")
if RECIPE.name not in VIEW_RECIPES:
    register_recipe(RECIPE)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DDKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DDKIT_PROGRESS", "0")


@pytest.fixture(scope="module")
def data():
    train = load_dataset("procedural", "train")
    idx = torch.cat([i[:3] for i in train.class_indices()])  # 30 instances, 3 per class
    return train.subset(idx)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, data):
    model = create_model("convnet-bn", 1, 16, 10, seed=0, width=8).eval()
    path = tmp_path_factory.mktemp("dbr-teacher") / "t.safetensors"
    save_teacher(path, model, data.info)
    return load_teacher(path)


def _read(stream: ViewStream, batch: int, total: int):
    parts = [stream.next(batch) for _ in range(-(-total // batch))]
    return {f.name: torch.cat([getattr(p, f.name) for p in parts])[:total] for f in dataclasses.fields(parts[0])}


def test_replay_gives_identical_views_at_different_batch_sizes(data):
    schedule = ViewSchedule(RECIPE, seed=3, instances=len(data))
    x, y = data.normalized(), data.labels
    total = 2 * len(data) + 7  # across epoch and chunk boundaries
    runs = [_read(ViewStream(schedule, x, y), b, total) for b in (1, 5, 16, 64)]
    for other in runs[1:]:
        for key, value in runs[0].items():
            assert torch.equal(value, other[key]), key
    ids = runs[0]["ids"]
    assert ids.tolist() == list(range(total))
    first_epoch = runs[0]["y_org"][: len(data)]
    assert torch.bincount(first_epoch, minlength=10).tolist() == [3] * 10  # every instance once per epoch
    # random access to one chunk gives the same tensors as the stream
    chunk = schedule.render(x, y, epoch=1, chunk=2)
    start = len(data) + 2 * RECIPE.chunk
    assert torch.equal(chunk.x, runs[0]["x"][start: start + RECIPE.chunk])
    # one λ per chunk; a different seed gives different views
    assert runs[0]["lam"][:RECIPE.chunk].unique().numel() == 1
    other_seed = _read(ViewStream(ViewSchedule(RECIPE, 4, len(data)), x, y), 16, total)
    assert not torch.equal(other_seed["x"], runs[0]["x"])


def test_dbr_loss_against_hand_computation():
    s = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]])
    y_org, y_aug = torch.tensor([0, 2]), torch.tensor([1, 2])
    lam = torch.tensor([0.75, 0.4])
    teacher = torch.tensor([[0.2, 2.5], [1.0, 0.1]])
    ce = lambda z, k: float(torch.logsumexp(z, 0) - z[k])  # noqa: E731
    expected = 0.0
    for i in range(2):
        d_org, d_aug = ce(s[i], y_org[i]), ce(s[i], y_aug[i])
        expected += lam[i] * d_org + (1 - lam[i]) * d_aug + 0.5 * (abs(d_org - teacher[i, 0]) + abs(d_aug - teacher[i, 1]))
    got = dbr_loss(s, y_org, y_aug, lam, teacher, alpha=0.5)
    torch.testing.assert_close(got, torch.tensor(float(expected) / 2))
    torch.testing.assert_close(dbr_distances(s, y_org, y_aug)[0, 0], torch.tensor(ce(s[0], 0)))


def test_stored_distances_are_the_teachers_on_the_replayed_views(teacher, data):
    x, y = data.normalized(), data.labels
    payload = dbr_payload([teacher.model], x, y, RECIPE, seed=11)
    epochs = RECIPE.epochs(len(data))
    assert payload.d_org.shape == (epochs, len(data)) and payload.d_org.dtype.name == "float16"
    targets = targets_from_payload(payload, len(data))
    views = targets.stream(x, y).next(23)  # the evaluator's batch size differs from the synthesizer's
    with torch.no_grad():
        expected = dbr_distances(teacher.model(views.x), views.y_org, views.y_aug)
    torch.testing.assert_close(targets.rows(views), expected, rtol=2e-3, atol=2e-3)  # fp16 storage
    lazy = DBRTargets(targets.schedule, None, (teacher.model,))  # the random baseline's form
    torch.testing.assert_close(lazy.rows(views), targets.rows(views), rtol=2e-3, atol=2e-3)
    with pytest.raises(Exception, match="damaged"):
        targets_from_payload(payload, len(data) + 1)


def test_batched_seeds_equal_independent_runs_on_replayed_views(teacher, data):
    # No norm layer: a conv bias before instance norm has a structurally zero gradient, whose float
    # noise Adam turns into ±lr steps that differ between the two paths for no real reason.
    protocol = get_protocol("dbr-cpu").with_overrides(steps=4, student_kwargs={"depth": 2, "width": 8, "norm": "none"})
    x, y = data.normalized(), data.labels
    seeds = [0, 1]
    payloads = [DBRTargets(ViewSchedule(get_recipe("dbr-cpu@1"), s, len(data)), None, (teacher.model,)) for s in seeds]
    sets = [StudentData(x, y, p, "dbr") for p in payloads]
    batched = train_students(protocol, sets, seeds, data.info, torch.device("cpu"), batched=True)
    assert batched._stacked is not None
    states = batched.state_dicts()
    for i, seed in enumerate(seeds):
        single = train_students(protocol, [sets[i]], [seed], data.info, torch.device("cpu"), batched=False)
        for key, value in single.state_dicts()[0].items():
            torch.testing.assert_close(states[i][key], value, rtol=1e-4, atol=1e-5)
    too_long = protocol.with_overrides(steps=10 ** 6)
    with pytest.raises(InvalidInput, match="views"):
        train_students(too_long, sets[:1], seeds[:1], data.info, torch.device("cpu"))


def test_dbr_cpu_protocol_matches_its_view_recipe():
    protocol = get_protocol("dbr-cpu")
    recipe = get_recipe(protocol.extra["views"])
    assert (protocol.steps, protocol.batch_size, protocol.augmentation, protocol.mix) == (
        recipe.steps, recipe.batch_size, recipe.augmentation, recipe.mix)
    assert protocol.extra["scheme"] == "dbr" and protocol.label_source == "stored"
    # the same regime as on-the-fly relabeling, so the two transfers are compared on equal views
    teacher_cpu = get_protocol("teacher-cpu@1")  # dbr-cpu has no @2: its views are @1's
    assert (teacher_cpu.steps, teacher_cpu.batch_size, teacher_cpu.augmentation, teacher_cpu.mix) == (
        protocol.steps, protocol.batch_size, protocol.augmentation, protocol.mix)


def test_synthesize_info_evaluate_end_to_end(tmp_path, teacher):
    from ddkit.store import DistilledDataset, describe, info_dict
    from ddkit.synth import run_synthesizer

    assert get_recipe("dbr-cpu@1").epochs(10) == 1000  # dbr-cpu at IPC 1 on 10 classes: 1000 steps × 10 views
    out = tmp_path / "dbr.ddk.h5"
    run_synthesizer("nrr-dd", "procedural", [teacher.path], 1, {"transfer": "dbr", "dbr_views": RECIPE.name,
                    "refine": False, "mipc": 10, "num_crop": 2}, seed=0, out=out)
    epochs = RECIPE.epochs(10)
    with DistilledDataset(out) as ds:
        payload = ds.soft["dbr"]
        assert payload.protocol == RECIPE.name and payload.d_org.shape == (epochs, 10)
    d = info_dict(out)["dbr"]
    assert d["views"] == epochs * 10 and d["full_soft_label_bytes"] == epochs * 10 * 10 * 2
    assert "full fp16 soft labels for the same views" in describe(out)
    dbr_cpu = get_protocol("dbr-cpu")
    protocol = dbr_cpu.with_overrides(steps=4, extra={**dbr_cpu.extra, "views": RECIPE.name})
    card = evaluate(str(out), protocol, seeds=[0, 1], teachers=[teacher.path], full_reference=False, write_card=False)
    assert len(card.result.accuracies) == 2 and card.random_baseline is not None
    with pytest.raises(IncompatibleError, match=RECIPE.name):  # the real dbr-cpu replays other views
        evaluate(str(out), dbr_cpu.with_overrides(steps=2), seeds=[0], teachers=[teacher.path],
                 baseline=False, full_reference=False, write_card=False)
    with pytest.raises(IncompatibleError, match="not a DBR protocol"):
        evaluate(str(out), get_protocol("stored-cpu").with_overrides(steps=2), seeds=[0], teachers=[teacher.path],
                 baseline=False, full_reference=False, write_card=False)
