"""`ddkit active-learn`: the active-learning loop, judged under an evaluation protocol.

Selecting and judging stay apart, as everywhere in ddkit. First every rule × distillation on/off ×
seed runs its R acquisition rounds (`ddkit.selectors.active.run_loop`: the ActiveKD student of
arXiv 2506.00910, the rule, the oracle), which never see a test split. Then the labeled set after
each round, L_r with its oracle labels, is a train set for `ddkit.evaluate`'s students under one
registered protocol (default `active-cpu@1`; any hard- or teacher-label protocol), one student per
seed; only after every student is trained is the test split read. A (seed, set) pair is trained
once: round 0 (the seed set) is shared by every rule, and a rule that ignores the student picks the
same sets with distillation on and off.

Written under the output folder after everything is measured (every path is checked before any
work): one `.sel.h5` per run with its result card under `/results/<protocol id>` (the final L,
beside random acquisition from the same seed set when `random` ran), `results.json` (the setup,
the protocol, every run's per-round accuracies and the curves), `results.md` (the table) and
`accuracy.png` (the curves with ±std bands over seeds; needs the `plot` extra).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ddkit import index
from ddkit.data.base import ImageDataset
from ddkit.errors import IncompatibleError, InvalidInput
from ddkit.evaluate import Protocol, ResultCard, get_protocol
from ddkit.evaluate.card import Arm
from ddkit.evaluate.trainer import StudentData, train_students
from ddkit.fileio import atomic_output, check_output
from ddkit.selectors.acquisition import Rule, get_rule
from ddkit.selectors.active import LoopResult, loop_selection, resolve_teacher, run_loop, seed_set, split_pool
from ddkit.selectors.activekd import ActiveKDConfig
from ddkit.store import add_result, pool_record, write_selection
from ddkit.store.selection import with_class_counts
from ddkit.workflows.curves import curves, plot_curves, require_matplotlib, results_table

DEFAULT_RULES = ("pcoreset", "random", "entropy", "coreset-features", "pcoreset-teacher", "class-balanced")
DEFAULT_PROTOCOL = "active-cpu@1"
OUTPUTS = ("results.json", "results.md", "accuracy.png")


@dataclass
class EvaluatedRun:
    """One loop run and the protocol's test accuracy of its labeled set after each round."""

    loop: LoopResult
    accuracies: list[float]  # one per round, round 0 = the seed set
    selection: str | None = None  # the .sel.h5 written for the run's final labeled set

    @property
    def rule(self) -> str:
        return self.loop.rule

    @property
    def distill(self) -> bool:
        return self.loop.distill

    @property
    def seed(self) -> int:
        return self.loop.seed

    @property
    def sizes(self) -> list[int]:
        return self.loop.sizes


@dataclass
class ActiveLearnResult:
    protocol: dict
    runs: list[EvaluatedRun] = field(default_factory=list)
    files: dict = field(default_factory=dict)


def check_protocol(protocol: Protocol, teachers: list) -> None:
    """A labeled set has hard labels only; a teacher protocol needs a teacher model to relabel views."""
    if protocol.label_source == "stored":
        raise IncompatibleError(
            f"protocol {protocol.id} trains on a file's stored labels; an active-learning labeled set has none",
            f"use a hard-label protocol ({DEFAULT_PROTOCOL}, hard-cpu) or a teacher protocol with --teacher",
        )
    if protocol.label_source == "teacher" and not teachers:
        raise InvalidInput(f"protocol {protocol.id} relabels every view with a teacher model",
                           "pass --teacher T (precomputed --teacher-logits cannot relabel new views)")


def protocol_accuracies(loops: list[LoopResult], pool: ImageDataset, test: ImageDataset, protocol: Protocol,
                        teachers: list = (), device: torch.device | None = None, batched: bool | None = None,
                        log=None) -> tuple[list[list[float]], dict]:
    """Test accuracy of a `protocol` student trained on each loop's L_r, per loop and round, and the
    wall seconds spent per (seed, set). Students of one |L| train together (one call, batched on a
    GPU); the test split is read after all of them are trained."""
    device = device or torch.device("cpu")
    labels = pool.labels  # the labeled sets' pixels are read per set: a streamed pool is never read whole
    wanted: dict[tuple, tuple[int, np.ndarray]] = {}
    for loop in loops:
        for r in range(len(loop.sizes)):
            positions = np.sort(loop.labeled_after(r))  # the set, not its pick order, decides the student
            wanted.setdefault((loop.seed, positions.tobytes()), (loop.seed, positions))
    by_size = defaultdict(list)
    for key, (seed, positions) in wanted.items():
        by_size[len(positions)].append(key)
    trained, seconds = [], {}
    for size, keys in sorted(by_size.items()):
        start = time.perf_counter()
        data = [StudentData(pool.normalized(torch.as_tensor(wanted[k][1])).to(device), labels[wanted[k][1]].to(device))
                for k in keys]
        students = train_students(protocol, data, [wanted[k][0] for k in keys], pool.info, device,
                                  [t.model for t in teachers], batched=batched, desc=f"students |L|={size}")
        trained.append((keys, students))
        seconds.update({k: (time.perf_counter() - start) / len(keys) for k in keys})
        if log:
            log(f"trained {len(keys)} students on |L|={size} under {protocol.id} ({time.perf_counter() - start:.0f}s)")
    test_images, test_labels = test.normalized().to(device), test.labels.to(device)  # the only read of the test split
    accuracy = {}
    for keys, students in trained:
        accuracy.update(zip(keys, students.accuracies(test_images, test_labels)))
    per_loop = [[accuracy[(loop.seed, np.sort(loop.labeled_after(r)).tobytes())] for r in range(len(loop.sizes))]
                for loop in loops]
    return per_loop, seconds


def selection_card(run: EvaluatedRun, baseline: EvaluatedRun | None, path: str, digest: str, pool: ImageDataset,
                   protocol: Protocol, teachers: list, device: torch.device, seconds: float) -> ResultCard:
    """The card of a run's final labeled set (one seed: the run's), beside random acquisition from
    the same seed set at the same budget when that ran."""
    n = run.sizes[-1]
    ipc = n / pool.num_classes
    rounds = len(run.sizes) - 1
    arm = Arm(f"{run.rule} ({'KD' if run.distill else 'no KD'}) after {rounds} rounds", [run.accuracies[-1]], ipc)
    base = None
    if baseline is not None:
        label = f"random acquisition, same seed set ({'KD' if baseline.distill else 'no KD'})"
        base = Arm(label, [baseline.accuracies[-1]], ipc)
    uses_teachers = protocol.label_source != "hard"
    return ResultCard(
        protocol=protocol.to_dict(), train_set=str(path), content_sha256=digest,
        budget_bytes=n * pool.images[0].numel() * pool.images[0].element_size(), ipc=ipc, instances=n, seeds=[run.seed],
        result=arm, random_baseline=base, teachers=[t.header.summary() for t in teachers] if uses_teachers else [],
        device=str(device), wall_seconds=seconds,
    )


def _check_setup(pool, rules: list[Rule], teacher_logits, rounds, queries, seed_per_class, distill) -> None:
    if rounds < 1 or queries < 1:
        raise InvalidInput("rounds and queries must be ≥ 1")
    need = seed_per_class * pool.num_classes + rounds * queries
    if need > len(pool):
        raise InvalidInput(f"{rounds} rounds of {queries} queries plus the seed set need {need} samples; "
                           f"the pool has {len(pool)}")
    if teacher_logits is None and (any(distill) or any("teacher" in r.needs for r in rules)):
        raise InvalidInput("distillation and teacher-based rules need a teacher",
                           "pass --teacher or --teacher-logits, or --distill off without teacher rules")


def active_learn(pool: ImageDataset, test: ImageDataset, rules: list[str], teacher_logits: torch.Tensor | None,
                 teacher_records: list, cfg: ActiveKDConfig, rounds: int = 10, queries: int | None = None,
                 seeds: tuple = (0, 1, 2), distill: tuple = (True, False), seed_per_class: int = 1,
                 out_dir: str | os.PathLike | None = None, device: torch.device | None = None, overwrite: bool = False,
                 log=None, protocol: str | Protocol = DEFAULT_PROTOCOL, teachers: list = (), plot: bool = True
                 ) -> ActiveLearnResult:
    """Every rule × distillation on/off × seed for `rounds` rounds of `queries` picks (default: the
    number of classes), each round's labeled set judged under `protocol` (`teachers`: the models a
    teacher protocol relabels with). Writes the files of the module doc under `out_dir` (if given)."""
    device = device or torch.device("cpu")
    queries = queries or pool.num_classes
    proto = get_protocol(protocol) if isinstance(protocol, str) else protocol
    check_protocol(proto, list(teachers))
    chosen = [get_rule(name) for name in rules]
    _check_setup(pool, chosen, teacher_logits, rounds, queries, seed_per_class, distill)
    out = Path(out_dir) if out_dir is not None else None
    paths = {}
    if out is not None:
        if plot:
            require_matplotlib()
        for name in OUTPUTS[:2] + (OUTPUTS[2:] if plot else ()):
            check_output(out / name, overwrite)
        for seed in seeds:
            for kd in distill:
                for rule in chosen:
                    path = out / "selections" / f"{rule.name}-{'kd' if kd else 'nokd'}-seed{seed}.sel.h5"
                    paths[(rule.name, kd, seed)] = check_output(path, overwrite)

    loops, cache = [], {}
    for seed in seeds:
        initial = seed_set(pool, seed_per_class, seed)
        for kd in distill:
            run_cfg = dataclasses.replace(cfg, distill=kd)
            for rule in chosen:
                view, oracle = split_pool(pool)
                logits = teacher_logits if kd or "teacher" in rule.needs else None
                loops.append(run_loop(view, oracle, initial, rule, logits, run_cfg, rounds, queries, seed, device,
                                      cache))
                if log:
                    log(f"{rule.name:<17} distill={'on ' if kd else 'off'} seed={seed}: {rounds} rounds "
                        f"({sum(loops[-1].seconds):.0f}s)")
    accuracies, seconds = protocol_accuracies(loops, pool, test, proto, list(teachers), device, log=log)
    result = ActiveLearnResult(proto.to_dict(), [EvaluatedRun(loop, acc) for loop, acc in zip(loops, accuracies)])
    if log:
        for run in result.runs:
            log(f"{run.rule:<17} distill={'on ' if run.distill else 'off'} seed={run.seed}: "
                + " ".join(f"{100 * a:.1f}" for a in run.accuracies) + f"  (under {proto.id})")
    if out is not None:
        _write_outputs(result, out, paths, pool, test, cfg, chosen, proto, list(teachers), teacher_records, rounds,
                       queries, seeds, seed_per_class, seconds, device, overwrite, plot)
    return result


def _write_outputs(result, out: Path, paths, pool, test, cfg, rules, proto, teachers, teacher_records, rounds, queries,
                   seeds, seed_per_class, seconds, device, overwrite, plot) -> None:
    by_rule = {rule.name: rule for rule in rules}
    randoms = {(run.distill, run.seed): run for run in result.runs if run.rule == "random"}
    for run in result.runs:
        path = paths[(run.rule, run.distill, run.seed)]
        selection = loop_selection(run.loop, pool, cfg, by_rule[run.rule], queries, teacher_records, device)
        digest = write_selection(path, with_class_counts(selection, pool), overwrite=overwrite)
        final = np.sort(run.loop.labeled).tobytes()
        card = selection_card(run, randoms.get((run.distill, run.seed)), str(path), digest, pool, proto, teachers,
                              device, seconds[(run.seed, final)])
        add_result(path, proto.id, card.to_dict())
        run.selection = str(path)
        result.files.setdefault("selections", []).append(str(path))
    summary = {
        "pool": pool_record(pool), "test": {"name": test.info.name, "split": test.split, "size": len(test)},
        "protocol": proto.to_dict(), "config": dataclasses.asdict(cfg),
        "index_backend": index.backend(device).to_dict(),
        "rounds": rounds, "queries": queries, "seeds": list(seeds), "seed_per_class": seed_per_class,
        "teachers": teacher_records, "curves": [s.to_dict() for s in curves(result.runs)],
        "runs": [dataclasses.asdict(run.loop) | {
            "accuracies": run.accuracies, "selection": run.selection, "labeled": run.loop.labeled.tolist(),
            "rounds": run.loop.rounds.tolist(), "scores": run.loop.scores.tolist(),
            "min_distance": run.loop.min_distance.tolist()} for run in result.runs],
    }
    with atomic_output(out / "results.json", overwrite) as tmp:
        tmp.write_text(json.dumps(summary, indent=1, default=float, allow_nan=True))
    with atomic_output(out / "results.md", overwrite) as tmp:
        tmp.write_text(f"Test accuracy (%) under {proto.id}, mean ± sample std over {len(seeds)} seeds:\n\n"
                       + results_table(result.runs) + "\n")
    result.files.update({"json": str(out / "results.json"), "table": str(out / "results.md")})
    if plot:
        plot_curves(result.runs, out / "accuracy.png", overwrite=overwrite,
                    title=f"{pool.info.name}: accuracy vs labeled budget under {proto.id} ({len(seeds)} seeds, ±std)")
        result.files["plot"] = str(out / "accuracy.png")


def run_active_learning(pool_name: str, out_dir: str | os.PathLike, rules=DEFAULT_RULES,
                        teacher_path: str | None = None, teacher_logits_path: str | None = None, rounds: int = 10,
                        queries: int | None = None, seeds: int = 3, distill: str = "both",
                        pool_size: int | None = None, config_overrides: dict | None = None, device: str | None = None,
                        overwrite: bool = False, log=None, protocol: str = DEFAULT_PROTOCOL,
                        plot: bool = True) -> ActiveLearnResult:
    """`ddkit active-learn`: check the protocol, load the pool (the train split, or a seeded random
    `pool_size` subset of it), the test split and the teacher (model or precomputed logits), then
    `active_learn`."""
    from ddkit.config import build_config
    from ddkit.data import load_dataset
    from ddkit.models.teacher import load_teacher
    from ddkit.seeding import numpy_rng
    from ddkit.training import pick_device

    modes = {"both": (True, False), "on": (True,), "off": (False,)}
    if distill not in modes:
        raise InvalidInput(f"distill must be both, on or off, got {distill!r}")
    cfg = build_config(ActiveKDConfig, config_overrides, owner="ActiveKD")
    proto = get_protocol(protocol)
    check_protocol(proto, [teacher_path] if teacher_path else [])
    if plot:
        require_matplotlib()
    dev = pick_device(device)
    pool = load_dataset(pool_name, "train")
    if pool_size:
        if not 0 < pool_size <= len(pool):
            raise InvalidInput(f"pool_size {pool_size} is not in [1, {len(pool)}]")
        rng = numpy_rng(0, "active-learning-pool", pool_name)
        pool = pool.subset(np.sort(rng.choice(len(pool), pool_size, replace=False)))
    test = load_dataset(pool_name, "test")
    teachers = [load_teacher(teacher_path, dev)] if teacher_path else []
    for t in teachers:
        t.check_fits(pool.info)
    logits, records = resolve_teacher(pool, teachers, teacher_logits_path, dev)
    if log:
        log(index.backend(dev).describe())
    return active_learn(pool, test, list(rules), logits, records, cfg, rounds, queries, tuple(range(seeds)),
                        modes[distill], out_dir=out_dir, device=dev, overwrite=overwrite, log=log, protocol=proto,
                        teachers=teachers if proto.label_source == "teacher" else [], plot=plot)
