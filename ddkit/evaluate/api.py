"""`evaluate(train_set, protocol, seeds)`: train students, then — and only then — read the test
split, and report final-step accuracy beside the random real subset at the same budget and the
full-data reference under the same protocol (both cached per seed)."""

from __future__ import annotations

import time

import torch

from ddkit import distributed
from ddkit.data import load_dataset
from ddkit.errors import IncompatibleError, InvalidInput
from ddkit.evaluate.cache import load_reference, reference_key, store_reference
from ddkit.evaluate.card import Arm, ResultCard
from ddkit.evaluate.protocols import Protocol, get_protocol
from ddkit.evaluate.sources import TrainSource, full_data_source, real_subset_source, resolve_train_set
from ddkit.evaluate.trainer import Students, train_students
from ddkit.fileio import check_writable
from ddkit.models.teacher import Teacher, load_teacher
from ddkit.training import pick_device


def _check_teachers(protocol: Protocol, source: TrainSource, teachers: list[Teacher]) -> None:
    if protocol.label_source == "hard":
        return
    if protocol.label_source == "teacher" and not teachers:
        raise InvalidInput(f"protocol {protocol.id} relabels every view with a teacher", "pass --teacher T (repeat for an ensemble)")
    if protocol.label_source == "stored" and source.file_teachers and teachers:
        recorded = sorted(t.get("sha256", "") for t in source.file_teachers)
        given = sorted(t.header.tensors_sha256 for t in teachers)
        if recorded != given:
            raise IncompatibleError(
                "the teachers given are not the ones that made this file's stored labels",
                "pass exactly the file's teachers (`ddkit info` lists their sha256), so the random baseline gets the same labels",
            )


def _gather(accs: dict[str, dict[int, float]], names: list[str], seeds: list[int], w) -> dict[str, dict[int, float]]:
    """Every rank's accuracies, on every rank: a (arm × seed) table summed over ranks, NaN = none."""
    if w.size == 1:
        return accs
    table = torch.zeros(len(names), len(seeds), dtype=torch.float64)
    owned = torch.zeros_like(table)
    for i, name in enumerate(names):
        for j, s in enumerate(seeds):
            if s in accs.get(name, {}):
                table[i, j], owned[i, j] = accs[name][s], 1.0
    distributed.all_reduce_sum(table)
    distributed.all_reduce_sum(owned)
    return {name: {s: float(table[i, j]) for j, s in enumerate(seeds) if owned[i, j] > 0} for i, name in enumerate(names)}


def _train(protocol, source: TrainSource, seeds, info, device, teachers, batched, desc) -> Students:
    data = [source.student_data(s, device) for s in seeds]
    return train_students(protocol, data, seeds, info, device, [t.model for t in teachers], batched=batched, desc=desc)


def evaluate(
    train_set: str,
    protocol: str | Protocol,
    seeds: list[int] = (0, 1, 2),
    teachers: list[str] | list[Teacher] = (),
    device: str | None = None,
    baseline: bool = True,
    full_reference: bool = True,
    steps: int | None = None,
    batched: bool | None = None,
    write_card: bool = True,
    dataset: str | None = None,
) -> ResultCard:
    """`dataset`: the source a file was made from, when the file names it by a path (see
    `resolve_train_set`). With `write_card`, the file must be writable, checked before training."""
    start = time.perf_counter()
    seeds = list(seeds)
    if not seeds:
        raise InvalidInput("evaluate needs at least one seed")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise InvalidInput(f"steps must be a positive integer, got {steps!r}", "e.g. --steps 300, or leave the protocol's")
    proto = get_protocol(protocol) if isinstance(protocol, str) else protocol
    if steps is not None:
        proto = proto.with_overrides(steps=steps, epochs=0)
    dev = pick_device(device)
    loaded = [t if isinstance(t, Teacher) else load_teacher(t, dev) for t in teachers]
    source = resolve_train_set(train_set, proto, loaded, dataset)
    if write_card and source.path:
        check_writable(source.path, "the result card", "pass --no-write, or copy the file to a folder you can write")
    if proto.label_source == "stored" and source.scheme is None:
        raise IncompatibleError(f"{train_set} has no stored label payload for protocol {proto.id}",
                                "use a hard-label or teacher protocol (hard-cpu, teacher-cpu)")
    _check_teachers(proto, source, loaded)
    info = load_dataset(source.dataset, "train").info
    for t in loaded:
        t.check_fits(info)
    uses_teachers = proto.label_source != "hard"
    teacher_ids = sorted(t.header.tensors_sha256 for t in loaded) if uses_teachers else []

    # Under torchrun each rank trains its share of the seeds (one seed per rank when there are as
    # many ranks as seeds); a student is never split across ranks, so results do not depend on it.
    w = distributed.init(dev)

    # Phase 1: train every student that has no cached accuracy. The test split is not touched.
    trained: dict[str, tuple[Students, list[int]]] = {}
    if distributed.shard(seeds, w):
        local = distributed.shard(seeds, w)
        trained["result"] = (_train(proto, source, local, info, dev, loaded, batched, "students"), local)
    references: dict[str, tuple[TrainSource, str, dict[int, float], dict]] = {}
    wanted = []
    if baseline and source.ipc is not None:
        wanted.append(("random_baseline", real_subset_source(source.dataset, source.ipc, proto, source.scheme, loaded)))
    if full_reference:
        wanted.append(("full_data", full_data_source(source.dataset, proto, source.scheme, loaded)))
    for name, ref in wanted:
        describe = {"kind": name, "dataset": source.dataset, "ipc": ref.ipc, "protocol": proto.to_dict(),
                    "teachers": teacher_ids, "scheme": source.scheme}
        key = reference_key(**describe)
        cached = {s: a for s in seeds if (a := load_reference(key, s)) is not None}
        missing = distributed.shard([s for s in seeds if s not in cached], w)
        if missing:
            trained[name] = (_train(proto, ref, missing, info, dev, loaded, batched, name.replace("_", " ")), missing)
        references[name] = (ref, key, cached, describe)

    # Phase 2: the final evaluation, the only place the test split is read.
    test = load_dataset(source.dataset, "test")
    test_images, test_labels = test.normalized().to(dev), test.labels.to(dev)
    accs = {name: dict(zip(s, students.accuracies(test_images, test_labels))) for name, (students, s) in trained.items()}
    accs = _gather(accs, ["result", *references], seeds, w)

    arms = {"result": Arm(source.label, [accs["result"][s] for s in seeds], source.ipc)}
    for name, (ref, key, cached, describe) in references.items():
        for s, a in accs.get(name, {}).items():
            if w.is_main and s not in cached:
                store_reference(key, s, a, describe)
        merged = {**cached, **accs.get(name, {})}
        label = "random real" if name == "random_baseline" else "full data"
        arms[name] = Arm(label, [merged[s] for s in seeds], ref.ipc, cached_seeds=sorted(cached))

    card = ResultCard(
        protocol=proto.to_dict(), train_set=train_set, content_sha256=source.content_sha256,
        budget_bytes=source.budget_bytes, ipc=source.ipc, instances=source.instances, seeds=seeds,
        result=arms["result"], random_baseline=arms.get("random_baseline"), full_data=arms.get("full_data"),
        teachers=[t.header.summary() for t in loaded] if uses_teachers else [],
        device=str(dev), world_size=w.size, batched=any(st._stacked is not None for st, _ in trained.values()),
        wall_seconds=time.perf_counter() - start,
    )
    if write_card and source.path and w.is_main:
        from ddkit.store import add_result

        add_result(source.path, proto.id if steps is None else proto.name, card.to_dict())
    return card
