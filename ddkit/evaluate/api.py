"""`evaluate(train_set, protocol, seeds)`: train students, then — and only then — read the test
split, and report final-step accuracy beside the random real subset at the same budget and the
full-data reference under the same protocol (both cached per seed)."""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from ddkit import distributed
from ddkit.data import load_dataset
from ddkit.data.stream import normalized_source
from ddkit.errors import IncompatibleError, InvalidInput
from ddkit.evaluate.cache import load_reference, reference_key, store_reference
from ddkit.evaluate.card import Arm, ResultCard
from ddkit.evaluate.protocols import Protocol, get_protocol, hard_protocol_for
from ddkit.evaluate.ranking import ranking_scores
from ddkit.evaluate.sources import TrainSource, full_data_source, real_subset_source, resolve_train_set
from ddkit.evaluate.trainer import Students, train_students
from ddkit.fileio import check_writable
from ddkit.models.teacher import Teacher, load_teacher
from ddkit.progress import mode as progress_mode, say
from ddkit.training import pick_device

ARM_NAMES = {"result": "students on the train set", "random_baseline": "random real subset", "full_data": "full data"}


def steps_text(proto: Protocol, instances: int | None = None) -> str:
    """How long one student trains under `proto` (on `instances` training instances, when known)."""
    if proto.steps:
        return f"{proto.steps} steps × batch {proto.batch_size}"
    text = f"{proto.epochs} epochs × batch {proto.batch_size}" + (f", at least {proto.min_steps} steps" if proto.min_steps else "")
    return f"{proto.total_steps(instances)} steps ({text})" if instances else text


def plan_text(train_set: str, proto: Protocol, seeds: list[int], stages, cached: dict[str, dict], hard_id: str | None,
              world: int) -> str:
    """What `evaluate` is about to do, printed before it starts: each stage with its seeds and steps,
    what the reference cache already holds, and whether DD-Ranking's hard-label arm follows."""
    lines = [f"evaluate {train_set} under {proto.id}: {len(seeds)} seed(s) {seeds}, one student per seed"
             + (f", shared over {world} processes (this one's stages below)" if world > 1 else "")]
    for i, (name, source, mine) in enumerate(stages, 1):
        lines.append(f"  stage {i}/{len(stages)}: {ARM_NAMES[name]}, seeds {mine}, {steps_text(proto, source.instances)} each")
    for name, hits in cached.items():
        if hits:
            lines.append(f"  {ARM_NAMES[name]}: seeds {sorted(hits)} read from the reference cache")
    if not stages:
        lines.append("  nothing to train: every arm is cached")
    if hard_id and hard_id != f"{proto.name.partition('[')[0]}@{proto.version}":
        lines.append(f"  then DD-Ranking's hard-label arm under {hard_id}: from the file's card when it holds one for "
                     "these seeds, else its own evaluation (its plan follows); --no-ranking skips it")
    return "\n".join(lines)


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


def _train(protocol, source: TrainSource, seeds, info, device, teachers, batched, desc, compile=False) -> Students:
    data = [source.student_data(s, device) for s in seeds]
    return train_students(protocol, data, seeds, info, device, [t.model for t in teachers], batched=batched, desc=desc,
                          compile=compile)


def _stored_hard_arms(hard_id: str, source: TrainSource, seeds: list[int]):
    """(set, full data) hard-label accuracies per seed from the file's card under `hard_id`, or None."""
    if not source.path:
        return None
    from ddkit.store import read_results

    stored = read_results(source.path).get(hard_id)
    if (not isinstance(stored, dict) or stored.get("content_sha256") != source.content_sha256
            or not stored.get("full_data") or not set(seeds) <= set(stored.get("seeds", []))):
        return None
    at = {s: i for i, s in enumerate(stored["seeds"])}
    pick = lambda arm: [float(stored[arm]["accuracies"][at[s]]) for s in seeds]  # noqa: E731
    return pick("result"), pick("full_data")


def _ranking(card: ResultCard, proto: Protocol, train_set, source, seeds, steps, device, batched, write_card,
             dataset=None, compile=False) -> dict | None:
    """DD-Ranking's scores for this card (None when the protocol has no hard-label partner)."""
    hard_id = hard_protocol_for(proto)
    if hard_id is None:
        return None
    arms, measured_under = None, hard_id
    if f"{proto.name.partition('[')[0]}@{proto.version}" == hard_id:  # a hard-label card ranks itself
        if card.full_data is None:
            return None  # HLR needs the full-data arm (not asked for: --no-full)
        arms, measured_under = (card.result.accuracies, card.full_data.accuracies), proto.id
    elif steps is None:  # a derived (shortened) protocol never reuses a full card
        arms = _stored_hard_arms(hard_id, source, seeds)
    if arms is None:
        hard = evaluate(train_set, hard_id, seeds, device=device, steps=steps, batched=batched, dataset=dataset,
                        write_card=write_card, ranking=False, compile=compile)  # with its random baseline: a whole hard-label card
        arms, measured_under = (hard.result.accuracies, hard.full_data.accuracies), hard.protocol["id"]
    scores = ranking_scores(card.protocol["id"], card.result.accuracies, card.random_baseline.accuracies,
                            measured_under, *arms)
    return scores.to_dict()


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
    ranking: bool = True,
    dataset: str | None = None,
    compile: bool = False,
) -> ResultCard:
    """Train students on `train_set` under `protocol`, one per seed, and report their test accuracy
    beside random real at the same budget and full data; with `ranking`, also DD-Ranking's HLR, IOR
    and LRS (which need the set's hard-label arm: read from the file's card under the hard protocol
    when it holds one for these seeds, else trained and written like any other card).
    `dataset`: the source a file was made from, when the file names it by a path (see
    `resolve_train_set`). With `write_card`, the file must be writable, checked before training.
    `compile`: students' forward passes through `torch.compile` (same recipe, fused kernels)."""
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
    # Under torchrun each rank trains its share of the seeds (one seed per rank when there are as
    # many ranks as seeds); a student is never split across ranks, so results do not depend on it.
    # Joined before any tensor is placed: on CUDA, joining selects this rank's GPU, and a teacher
    # loaded before that would sit on GPU 0 beside students on GPU r.
    w = distributed.init(dev)
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

    # Phase 1: train every student that has no cached accuracy. The test split is not touched.
    trained: dict[str, tuple[Students, list[int]]] = {}
    # `random:DATASET:IPC` is the random baseline itself (the same seeded subsets): it is trained once,
    # through the reference cache, and reported as both arms.
    is_baseline = baseline and train_set.startswith("random:") and source.ipc is not None
    stages: list[tuple[str, TrainSource, list[int]]] = []  # (arm, what it trains on, this rank's seeds)
    if distributed.shard(seeds, w) and not is_baseline:
        stages.append(("result", source, distributed.shard(seeds, w)))
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
            stages.append((name, ref, missing))
        references[name] = (ref, key, cached, describe)
    hard_id = hard_protocol_for(proto) if ranking and (baseline and source.ipc is not None) else None
    if progress_mode() != "off":
        say(plan_text(train_set, proto, seeds, stages, {n: r[2] for n, r in references.items()}, hard_id, w.size))
    for i, (name, ref, mine) in enumerate(stages, 1):
        desc = f"stage {i}/{len(stages)}: {ARM_NAMES[name]} ({len(mine)} seed{'s' * (len(mine) != 1)})"
        trained[name] = (_train(proto, ref, mine, info, dev, loaded, batched, desc, compile), mine)

    # Phase 2: the final evaluation, the only place the test split is read.
    test = load_dataset(source.dataset, "test")
    test_images, test_labels = normalized_source(test, dev), test.labels.to(dev)
    accs = {name: dict(zip(s, students.accuracies(test_images, test_labels))) for name, (students, s) in trained.items()}
    accs = _gather(accs, ["result", *references], seeds, w)

    arms = {} if is_baseline else {"result": Arm(source.label, [accs["result"][s] for s in seeds], source.ipc)}
    for name, (ref, key, cached, describe) in references.items():
        for s, a in accs.get(name, {}).items():
            if w.is_main and s not in cached:
                store_reference(key, s, a, describe)
        merged = {**cached, **accs.get(name, {})}
        label = "random real" if name == "random_baseline" else "full data"
        arms[name] = Arm(label, [merged[s] for s in seeds], ref.ipc, cached_seeds=sorted(cached))
    if is_baseline:
        arms["result"] = replace(arms["random_baseline"], label=source.label)

    card = ResultCard(
        protocol=proto.to_dict(), train_set=train_set, content_sha256=source.content_sha256,
        budget_bytes=source.budget_bytes, ipc=source.ipc, instances=source.instances, seeds=seeds,
        result=arms["result"], random_baseline=arms.get("random_baseline"), full_data=arms.get("full_data"),
        teachers=[t.header.summary() for t in loaded] if uses_teachers else [],
        device=str(dev), world_size=w.size, batched=any(st._stacked is not None for st, _ in trained.values()),
        compiled=compile,
        wall_seconds=time.perf_counter() - start,
    )
    if ranking and card.random_baseline is not None and (steps is not None or "[" not in proto.name):
        card.ranking = _ranking(card, proto, train_set, source, seeds, steps, device, batched, write_card, dataset,
                                compile)
        card.wall_seconds = time.perf_counter() - start
    if write_card and source.path and w.is_main:
        from ddkit.store import add_result

        add_result(source.path, proto.id, card.to_dict())  # a derived protocol: NAME[changes]@VERSION
    return card
