"""Active learning with a teacher (ActiveKD): one acquisition round, the oracle, and the R-round loop.

A round: train the ActiveKD student on the labeled set L plus the whole pool (`activekd`), compute
what the acquisition rule looks at (the student's p(x) and features, or the teacher's
probabilities), pick Q samples (`acquisition`), ask the oracle for their labels, L ← L ∪ S.

The pool's labels live only in the `Oracle`; the loop sees the pool as a `PoolView` (pixels, ids,
class list — no labels) and can read a label only by querying it, so a benchmark cannot leak the
labels of samples that were never queried. `ActiveSelector` is the registry face of one round
(`ddkit select --method pcoreset --labeled L.sel.h5 ...`); `run_loop` / `active_learn` run R
rounds (`ddkit active-learn`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ddkit import index
from ddkit.data.base import DatasetInfo, ImageDataset, class_balanced_indices
from ddkit.errors import IncompatibleError, InvalidInput
from ddkit.fileio import atomic_output, check_output
from ddkit.pools.logits import load_teacher_logits, teacher_pool_logits
from ddkit.selectors.acquisition import Acquired, RoundState, acquire, get_rule
from ddkit.selectors.activekd import ActiveKDConfig, student_accuracy, student_outputs, train_student
from ddkit.selectors.base import SelectionInputs, Selector
from ddkit.store import Selection, pool_record, write_selection
from ddkit.store.selection import ids_to_positions


# -- the oracle and the label-free view of the pool -------------------------------------------------
class Oracle:
    """The only holder of the pool's labels: reveals a label when (and only when) it is queried.

    `labels` may be anything indexable by an int64 position array (a numpy array, or in tests a
    wrapper that records every access).
    """

    def __init__(self, labels):
        self._labels = labels
        self._revealed: dict[int, int] = {}
        self.order: list[int] = []

    def query(self, positions) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        new = np.array([p for p in positions.tolist() if p not in self._revealed], dtype=np.int64)
        if len(new):
            values = np.asarray(self._labels[new]).astype(np.int64)
            for p, y in zip(new.tolist(), values.tolist()):
                self._revealed[p] = y
                self.order.append(p)
        return self.labels_of(positions)

    def labels_of(self, positions) -> np.ndarray:
        """Labels already revealed; asking for any other is a bug in the caller."""
        missing = [p for p in np.asarray(positions, dtype=np.int64).tolist() if p not in self._revealed]
        if missing:
            raise AssertionError(f"labels of {len(missing)} unqueried samples were asked for (e.g. {missing[:5]})")
        return np.array([self._revealed[p] for p in np.asarray(positions, dtype=np.int64).tolist()], dtype=np.int64)

    @property
    def num_queried(self) -> int:
        return len(self.order)


@dataclass
class PoolView:
    """What acquisition may see of the pool: normalized pixels, sample ids, class list. No labels."""

    images: torch.Tensor
    ids: np.ndarray
    info: DatasetInfo

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int:
        return self.info.num_classes


def split_pool(pool: ImageDataset) -> tuple[PoolView, Oracle]:
    return PoolView(pool.normalized(), pool.ids.numpy(), pool.info), Oracle(pool.labels.numpy())


# -- one round ------------------------------------------------------------------------------------
def prepare_round(view: PoolView, labeled: np.ndarray, labels: np.ndarray, teacher_logits: torch.Tensor | None,
                  needs: frozenset, cfg: ActiveKDConfig, seed: int, round_index: int, device: torch.device,
                  test: ImageDataset | None = None) -> tuple[RoundState, float | None]:
    """Train the round's student when the rule (or an evaluation on `test`) needs one; return the
    rule's `RoundState` and the student's test accuracy (None without `test`)."""
    state = RoundState(len(view), view.num_classes, np.asarray(labeled, np.int64), np.asarray(labels, np.int64), round_index)
    if "teacher" in needs:
        if teacher_logits is None:
            raise InvalidInput("this selector needs the teacher's probabilities", "pass --teacher or --teacher-logits")
        state.teacher_probs = torch.softmax(teacher_logits.float(), -1).numpy()
    accuracy = None
    if needs & {"probs", "features"} or test is not None:
        student = train_student(view.images, state.labeled, state.labels, teacher_logits, cfg, view.num_classes, seed,
                                round_index, device)
        if needs & {"probs", "features"}:
            probs, feats = student_outputs(student, view.images, cfg, features="features" in needs)
            state.probs = probs.numpy()
            state.features = feats.numpy() if feats is not None else None
        if test is not None:
            accuracy = student_accuracy(student, test, cfg)
    return state, accuracy


def resolve_teacher(pool: ImageDataset, teachers: list, logits_path: str | None, device) -> tuple[torch.Tensor | None, list]:
    """Pool logits from one teacher model (clean views) or a precomputed file; plus provenance records."""
    if teachers and logits_path:
        raise InvalidInput("both --teacher and --teacher-logits were given", "pass one teacher source")
    if len(teachers) > 1:
        raise InvalidInput(f"{len(teachers)} teachers were given; active-learning selectors use one", "pass one --teacher")
    if logits_path:
        logits, record = load_teacher_logits(logits_path, pool)
        return logits, [record]
    if teachers:
        return teacher_pool_logits(teachers[0], pool, device), [teachers[0].header.summary()]
    return None, []


def _labeled_positions(pool: ImageDataset, labeled: Selection | None) -> np.ndarray:
    if labeled is None:
        return np.empty(0, np.int64)
    if labeled.pool.get("fingerprint") != pool.fingerprint():
        raise IncompatibleError(
            f"the labeled set was selected from another pool ({labeled.pool.get('name')}, {labeled.pool.get('size')} samples, "
            f"fingerprint {str(labeled.pool.get('fingerprint'))[:12]}…)",
            "pass a --labeled selection made on this exact pool",
        )
    return ids_to_positions(pool.ids.numpy(), labeled.ids)


def round_selection(name: str, version: str, config: dict, seed: int, pool: ImageDataset, labeled: np.ndarray,
                    rounds: np.ndarray, scores: np.ndarray, min_distance: np.ndarray, teachers: list) -> Selection:
    """The labeled set after acquisition (earlier picks first) as a `Selection`."""
    return Selection(method=name, method_version=version, config=config, seed=seed, pool=pool_record(pool),
                     ids=pool.ids.numpy()[labeled], score=scores, round=rounds, extra={"min_distance": min_distance},
                     teachers=teachers)


def _resolved_config(cfg, rule_name: str) -> dict:
    return {**dataclasses.asdict(cfg), "rule": rule_name, "index_backend": index.backend().to_dict()}


class ActiveSelector(Selector):
    """One active-learning round: train the ActiveKD student (when the rule looks at it), acquire
    `budget` new samples with the rule, and keep L ∪ S (earlier picks keep their rounds)."""

    rule: ClassVar[str] = ""
    Config = ActiveKDConfig
    uses_inputs = True

    def select(self, pool, teachers, budget, config: ActiveKDConfig, seed, device, inputs: SelectionInputs | None = None):
        inputs = inputs or SelectionInputs()
        rule = get_rule(self.rule)
        view, oracle = split_pool(pool)
        labeled = _labeled_positions(pool, inputs.labeled)
        self.check_budget_left(pool, labeled, budget)
        labels = oracle.query(labeled)
        needs_student = bool(rule.needs & {"probs", "features"})
        logits, records = resolve_teacher(pool, teachers, inputs.teacher_logits, device)
        if needs_student and config.distill and logits is None:
            raise InvalidInput(f"{self.name} trains its student with distillation, which needs a teacher",
                               "pass --teacher T or --teacher-logits FILE, or --config distill=false")
        prior = inputs.labeled
        round_index = int(prior.round.max()) + 1 if prior is not None and len(prior) else 1
        state, _ = prepare_round(view, labeled, labels, logits, rule.needs, config, seed, round_index, device)
        got = acquire(self.rule, state, budget, seed)
        old_md = prior.extra.get("min_distance") if prior is not None else None
        return round_selection(
            self.name, self.version, _resolved_config(config, self.rule), seed, pool,
            np.concatenate([labeled, got.positions]),
            np.concatenate([prior.round if prior is not None else np.empty(0, np.int64), np.full(budget, round_index)]),
            np.concatenate([prior.score if prior is not None else np.empty(0), got.score]),
            np.concatenate([np.asarray(old_md, np.float64) if old_md is not None else np.full(len(labeled), np.nan),
                            got.min_distance if got.min_distance is not None else np.full(budget, np.nan)]),
            records,
        )

    def check_budget_left(self, pool, labeled, budget) -> None:
        left = len(pool) - len(labeled)
        if budget < 1 or budget > left:
            raise InvalidInput(f"budget {budget} is not in [1, {left}] (the pool's unlabeled samples)", "choose a smaller budget")


# -- the loop -------------------------------------------------------------------------------------
@dataclass
class LoopResult:
    """One run of the loop: accuracy per round and the final labeled set with pick rounds."""

    rule: str
    distill: bool
    seed: int
    sizes: list[int]  # |L| at each evaluation (round 0 = the seed set)
    accuracies: list[float]
    seconds: list[float]
    labeled: np.ndarray
    rounds: np.ndarray
    scores: np.ndarray
    min_distance: np.ndarray


def run_loop(view: PoolView, oracle: Oracle, initial: np.ndarray, rule_name: str, teacher_logits: torch.Tensor | None,
             test: ImageDataset, cfg: ActiveKDConfig, rounds: int, queries: int, seed: int, device: torch.device,
             cache: dict | None = None) -> LoopResult:
    """R rounds of: train + evaluate the student on L, acquire `queries` samples, query the oracle.

    The student is evaluated after every round (R + 1 points: |L| = seed set, +Q, ..., +R·Q).
    `cache` shares the round-0 student's outputs between rules (same seed set, seed and config).
    """
    rule = get_rule(rule_name)
    labeled = np.asarray(initial, np.int64)
    labels = oracle.query(labeled)
    picked_round = np.zeros(len(labeled), np.int64)
    scores = np.full(len(labeled), np.nan)
    min_distance = np.full(len(labeled), np.nan)
    sizes, accuracies, seconds = [], [], []
    for r in range(rounds + 1):
        start = time.perf_counter()
        needs = rule.needs if r < rounds else frozenset()
        key = (cfg.distill, seed, tuple(labeled.tolist()), json.dumps(dataclasses.asdict(cfg), sort_keys=True))
        if r == 0 and cache is not None and key in cache:
            state, accuracy = _from_cache(cache[key], view, labeled, labels, teacher_logits, needs)
        else:
            all_needs = needs | {"probs", "features"} if r == 0 and cache is not None else needs
            state, accuracy = prepare_round(view, labeled, labels, teacher_logits, all_needs, cfg, seed, r + 1, device, test)
            if r == 0 and cache is not None:
                cache[key] = (state.probs, state.features, accuracy)
        sizes.append(len(labeled))
        accuracies.append(float(accuracy))
        if r < rounds:
            got: Acquired = acquire(rule_name, state, queries, seed)
            labels = np.concatenate([labels, oracle.query(got.positions)])
            labeled = np.concatenate([labeled, got.positions])
            picked_round = np.concatenate([picked_round, np.full(queries, r + 1)])
            scores = np.concatenate([scores, got.score])
            md = got.min_distance if got.min_distance is not None else np.full(queries, np.nan)
            min_distance = np.concatenate([min_distance, md])
        seconds.append(time.perf_counter() - start)
    return LoopResult(rule_name, cfg.distill, seed, sizes, accuracies, seconds, labeled, picked_round, scores, min_distance)


def _from_cache(entry, view, labeled, labels, teacher_logits, needs):
    probs, features, accuracy = entry
    state = RoundState(len(view), view.num_classes, labeled, labels, 1, probs=probs, features=features)
    if "teacher" in needs:
        state.teacher_probs = torch.softmax(teacher_logits.float(), -1).numpy()
    return state, accuracy


@dataclass
class ActiveLearnResult:
    runs: list[LoopResult] = field(default_factory=list)
    files: dict = field(default_factory=dict)


def seed_set(pool: ImageDataset, per_class: int, seed: int) -> np.ndarray:
    """The initial labeled set: `per_class` random samples of each class (the benchmark's setup step,
    done before the loop; the loop then queries these labels from the oracle like any other)."""
    return class_balanced_indices(pool, per_class, seed, salt="active-learning-seed-set")


def active_learn(pool: ImageDataset, test: ImageDataset, rules: list[str], teacher_logits: torch.Tensor | None,
                 teacher_records: list, cfg: ActiveKDConfig, rounds: int = 10, queries: int | None = None,
                 seeds: tuple = (0, 1, 2), distill: tuple = (True, False), seed_per_class: int = 1,
                 out_dir: str | os.PathLike | None = None, device: torch.device | None = None, overwrite: bool = False,
                 log=None) -> ActiveLearnResult:
    """Every rule × distillation on/off × seed for `rounds` rounds of `queries` picks (default: the
    number of classes). Writes, under `out_dir`: results.json, results.md (per-round table),
    accuracy.png (accuracy vs |L|) and one `.sel.h5` per run (the final labeled set, with rounds)."""
    device = device or torch.device("cpu")
    queries = queries or pool.num_classes
    for name in rules:
        get_rule(name)
    if rounds < 1 or queries < 1:
        raise InvalidInput("rounds and queries must be ≥ 1")
    need = seed_per_class * pool.num_classes + rounds * queries
    if need > len(pool):
        raise InvalidInput(f"{rounds} rounds of {queries} queries plus the seed set need {need} samples; the pool has {len(pool)}")
    if any(distill) and teacher_logits is None:
        raise InvalidInput("distillation needs a teacher", "pass --teacher or --teacher-logits, or --distill off")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        for name in ("results.json", "results.md", "accuracy.png"):
            check_output(out / name, overwrite)
    result = ActiveLearnResult()
    cache: dict = {}
    for seed in seeds:
        initial = seed_set(pool, seed_per_class, seed)
        for kd in distill:
            run_cfg = dataclasses.replace(cfg, distill=kd)
            for name in rules:
                view, oracle = split_pool(pool)
                run = run_loop(view, oracle, initial, name, teacher_logits if kd or "teacher" in get_rule(name).needs else None,
                               test, run_cfg, rounds, queries, seed, device, cache)
                result.runs.append(run)
                if log:
                    log(f"{name:<17} distill={'on ' if kd else 'off'} seed={seed}: "
                        + " ".join(f"{100 * a:.1f}" for a in run.accuracies) + f"  ({sum(run.seconds):.0f}s)")
                if out is not None:
                    sel = round_selection(name, "1", {**_resolved_config(run_cfg, name), "queries": queries, "rounds": rounds},
                                          seed, pool, run.labeled, run.rounds, run.scores, run.min_distance, teacher_records)
                    path = out / "selections" / f"{name}-{'kd' if kd else 'nokd'}-seed{seed}.sel.h5"
                    write_selection(path, sel, overwrite=overwrite)
                    result.files.setdefault("selections", []).append(str(path))
    if out is not None:
        from ddkit.selectors.active_report import plot_curves, results_table

        records = [dataclasses.asdict(r) | {"labeled": r.labeled.tolist(), "rounds": r.rounds.tolist(),
                                            "scores": r.scores.tolist(), "min_distance": r.min_distance.tolist()}
                   for r in result.runs]
        summary = {"pool": pool_record(pool), "test": {"name": test.info.name, "split": test.split, "size": len(test)},
                   "config": dataclasses.asdict(cfg), "rounds": rounds, "queries": queries, "seeds": list(seeds),
                   "seed_per_class": seed_per_class, "teachers": teacher_records, "runs": records}
        with atomic_output(out / "results.json", overwrite) as tmp:
            tmp.write_text(json.dumps(summary, indent=1, default=float, allow_nan=True))
        with atomic_output(out / "results.md", overwrite) as tmp:
            tmp.write_text(results_table(result.runs) + "\n")
        plot_curves(result.runs, out / "accuracy.png", overwrite=overwrite,
                    title=f"{pool.info.name}: accuracy vs labeled-set size ({len(seeds)} seeds)")
        result.files.update({"json": str(out / "results.json"), "table": str(out / "results.md"), "plot": str(out / "accuracy.png")})
    return result


DEFAULT_RULES = ("pcoreset", "random", "entropy", "coreset-features", "pcoreset-teacher", "class-balanced")


def run_active_learning(pool_name: str, out_dir: str | os.PathLike, rules=DEFAULT_RULES, teacher_path: str | None = None,
                        teacher_logits_path: str | None = None, rounds: int = 10, queries: int | None = None, seeds: int = 3,
                        distill: str = "both", pool_size: int | None = None, config_overrides: dict | None = None,
                        device: str | None = None, overwrite: bool = False, log=None) -> ActiveLearnResult:
    """`ddkit active-learn`: load the pool (the train split, or a seeded random `pool_size` subset of
    it) and the test split, the teacher (model or precomputed logits), then `active_learn`."""
    from ddkit.config import build_config
    from ddkit.data import load_dataset
    from ddkit.models.teacher import load_teacher
    from ddkit.seeding import numpy_rng
    from ddkit.training import pick_device

    modes = {"both": (True, False), "on": (True,), "off": (False,)}
    if distill not in modes:
        raise InvalidInput(f"distill must be both, on or off, got {distill!r}")
    cfg = build_config(ActiveKDConfig, config_overrides, owner="ActiveKD")
    dev = pick_device(device)
    pool = load_dataset(pool_name, "train")
    if pool_size:
        if not 0 < pool_size <= len(pool):
            raise InvalidInput(f"pool_size {pool_size} is not in [1, {len(pool)}]")
        pool = pool.subset(np.sort(numpy_rng(0, "active-learning-pool", pool_name).choice(len(pool), pool_size, replace=False)))
    test = load_dataset(pool_name, "test")
    teachers = [load_teacher(teacher_path, dev)] if teacher_path else []
    for t in teachers:
        t.check_fits(pool.info)
    logits, records = resolve_teacher(pool, teachers, teacher_logits_path, dev)
    if log:
        log(index.backend().describe())
    return active_learn(pool, test, list(rules), logits, records, cfg, rounds, queries, tuple(range(seeds)), modes[distill],
                        out_dir=out_dir, device=dev, overwrite=overwrite, log=log)
