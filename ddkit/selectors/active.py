"""Active learning with a teacher (ActiveKD): one acquisition round, the oracle, and the R-round loop.

A round: train the ActiveKD student on the labeled set L plus the whole pool (`activekd`), compute
what the acquisition rule looks at (the student's p(x) and features, or the teacher's
probabilities), pick Q samples (`acquisition`), ask the oracle for their labels, L ← L ∪ S.

The pool's labels live only in the `Oracle`; the loop sees the pool as a `PoolView` (pixels, ids,
class list — no labels) and can read a label only by querying it, so a benchmark cannot leak the
labels of samples that were never queried. `ActiveSelector` is the registry face of one round
(`ddkit select --method pcoreset --labeled L.sel.h5 ...`), its acquisition rule a class attribute;
`run_loop` runs R rounds. The loop never sees a test split: judging each round's labeled set under
an evaluation protocol is `ddkit.workflows.active_learning` (`ddkit active-learn`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ddkit import index
from ddkit.data.base import DatasetInfo, ImageDataset, class_balanced_indices
from ddkit.data.stream import StreamedViews, normalized_source
from ddkit.errors import IncompatibleError, InvalidInput
from ddkit.pools.logits import load_teacher_logits, teacher_pool_logits
from ddkit.selectors.acquisition import Acquired, RoundState, Rule
from ddkit.selectors.activekd import ActiveKDConfig, student_outputs, train_student
from ddkit.selectors.base import SelectionInputs, Selector
from ddkit.store import Selection, pool_record
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
    """What acquisition may see of the pool: normalized pixels (the tensor, or `StreamedViews` of a
    streamed pool), sample ids, class list. No labels."""

    images: torch.Tensor | StreamedViews
    ids: np.ndarray
    info: DatasetInfo

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int:
        return self.info.num_classes


def split_pool(pool: ImageDataset) -> tuple[PoolView, Oracle]:
    return PoolView(normalized_source(pool), pool.ids.numpy(), pool.info), Oracle(pool.labels.numpy())


# -- one round ------------------------------------------------------------------------------------
def prepare_round(view: PoolView, labeled: np.ndarray, labels: np.ndarray, teacher_logits: torch.Tensor | None,
                  needs: frozenset, cfg: ActiveKDConfig, seed: int, round_index: int,
                  device: torch.device) -> RoundState:
    """The rule's `RoundState`, training the round's student only when `needs` looks at it."""
    state = RoundState(len(view), view.num_classes, np.asarray(labeled, np.int64), np.asarray(labels, np.int64),
                       round_index, device=device)
    if "teacher" in needs:
        if teacher_logits is None:
            raise InvalidInput("this selector needs the teacher's probabilities", "pass --teacher or --teacher-logits")
        state.teacher_probs = torch.softmax(teacher_logits.float(), -1).numpy()
    if needs & {"probs", "features"}:
        student = train_student(view.images, state.labeled, state.labels, teacher_logits, cfg, view.num_classes, seed,
                                round_index, device)
        probs, feats = student_outputs(student, view.images, cfg, features="features" in needs)
        state.probs = probs.numpy()
        state.features = feats.numpy() if feats is not None else None
    return state


def resolve_teacher(pool: ImageDataset, teachers: list, logits_path: str | None,
                    device) -> tuple[torch.Tensor | None, list]:
    """Pool logits from one teacher model (clean views) or a precomputed file; plus provenance records."""
    if teachers and logits_path:
        raise InvalidInput("both --teacher and --teacher-logits were given", "pass one teacher source")
    if len(teachers) > 1:
        raise InvalidInput(f"{len(teachers)} teachers were given; active-learning selectors use one",
                           "pass one --teacher")
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
            f"the labeled set was selected from another pool ({labeled.pool.get('name')}, "
            f"{labeled.pool.get('size')} samples, "
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


def resolved_config(cfg: ActiveKDConfig, rule: Rule, device=None) -> dict:
    """The config a selection records: the student's, the rule's name and the index backend of the run's device."""
    return {**dataclasses.asdict(cfg), "rule": rule.name, "index_backend": index.backend(device).to_dict()}


class ActiveSelector(Selector):
    """One active-learning round: train the ActiveKD student (when the rule looks at it), acquire
    `budget` new samples with the rule, and keep L ∪ S (earlier picks keep their rounds)."""

    rule: ClassVar[Rule]  # the acquisition rule this selector applies (a `ddkit.selectors.acquisition` Rule)
    Config = ActiveKDConfig
    uses_inputs = True

    def select(self, pool, teachers, budget, config: ActiveKDConfig, seed, device,
               inputs: SelectionInputs | None = None):
        inputs = inputs or SelectionInputs()
        rule = self.rule
        view, oracle = split_pool(pool)
        labeled = _labeled_positions(pool, inputs.labeled)
        self.check_budget_left(pool, labeled, budget)
        labels = oracle.query(labeled)
        logits, records = resolve_teacher(pool, teachers, inputs.teacher_logits, device)
        if rule.needs_student and config.distill and logits is None:
            raise InvalidInput(f"{self.name} trains its student with distillation, which needs a teacher",
                               "pass --teacher T or --teacher-logits FILE, or --config distill=false")
        prior = inputs.labeled
        round_index = int(prior.round.max()) + 1 if prior is not None and len(prior) else 1
        state = prepare_round(view, labeled, labels, logits, rule.needs, config, seed, round_index, device)
        got = rule.acquire(state, budget, seed)
        old_md = prior.extra.get("min_distance") if prior is not None else None
        return round_selection(
            self.name, self.version, resolved_config(config, rule, device), seed, pool,
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
            raise InvalidInput(f"budget {budget} is not in [1, {left}] (the pool's unlabeled samples)",
                               "choose a smaller budget")


# -- the loop -------------------------------------------------------------------------------------
STUDENT_NEEDS = frozenset({"probs", "features"})


@dataclass
class LoopResult:
    """One run of the loop: the labeled set after R rounds, each sample with the round that picked it
    (0 = the seed set), the rule's score and k-center distance at pick time."""

    rule: str
    distill: bool
    seed: int
    sizes: list[int]  # |L| after each round (round 0 = the seed set): R + 1 entries
    seconds: list[float]  # per acquisition round
    labeled: np.ndarray
    rounds: np.ndarray
    scores: np.ndarray
    min_distance: np.ndarray

    def labeled_after(self, round_index: int) -> np.ndarray:
        """Pool positions of L after `round_index` rounds (0: the seed set), in pick order."""
        return self.labeled[self.rounds <= round_index]


def run_loop(view: PoolView, oracle: Oracle, initial: np.ndarray, rule: Rule, teacher_logits: torch.Tensor | None,
             cfg: ActiveKDConfig, rounds: int, queries: int, seed: int, device: torch.device,
             cache: dict | None = None) -> LoopResult:
    """R rounds of: train the student on L when the rule looks at it, acquire `queries` samples with
    `rule`, query the oracle for their labels.

    `cache` shares the round-0 student's outputs between rules (same seed set, seed and config).
    """
    labeled = np.asarray(initial, np.int64)
    labels = oracle.query(labeled)
    picked_round = np.zeros(len(labeled), np.int64)
    scores = np.full(len(labeled), np.nan)
    min_distance = np.full(len(labeled), np.nan)
    sizes, seconds = [len(labeled)], []
    for r in range(rounds):
        start = time.perf_counter()
        key = (cfg.distill, seed, tuple(labeled.tolist()), json.dumps(dataclasses.asdict(cfg), sort_keys=True))
        shared = r == 0 and cache is not None and rule.needs_student
        if shared and key in cache:
            state = _from_cache(cache[key], view, labeled, labels, teacher_logits, rule.needs, device)
        else:  # round 0 computes everything a student-based rule can ask for, so later rules reuse it
            needs = rule.needs | STUDENT_NEEDS if shared else rule.needs
            state = prepare_round(view, labeled, labels, teacher_logits, needs, cfg, seed, r + 1, device)
            if shared:
                cache[key] = (state.probs, state.features)
        got: Acquired = rule.acquire(state, queries, seed)
        labels = np.concatenate([labels, oracle.query(got.positions)])
        labeled = np.concatenate([labeled, got.positions])
        picked_round = np.concatenate([picked_round, np.full(queries, r + 1)])
        scores = np.concatenate([scores, got.score])
        md = got.min_distance if got.min_distance is not None else np.full(queries, np.nan)
        min_distance = np.concatenate([min_distance, md])
        sizes.append(len(labeled))
        seconds.append(time.perf_counter() - start)
    return LoopResult(rule.name, cfg.distill, seed, sizes, seconds, labeled, picked_round, scores, min_distance)


def _from_cache(entry, view, labeled, labels, teacher_logits, needs, device=None) -> RoundState:
    probs, features = entry
    state = RoundState(len(view), view.num_classes, labeled, labels, 1, probs=probs, features=features, device=device)
    if "teacher" in needs:
        state.teacher_probs = torch.softmax(teacher_logits.float(), -1).numpy()
    return state


def loop_selection(run: LoopResult, pool: ImageDataset, cfg: ActiveKDConfig, rule: Rule, queries: int,
                   teachers: list, device=None) -> Selection:
    """The final labeled set of `run` as a `Selection` (what `ddkit active-learn` writes per run)."""
    config = {**resolved_config(dataclasses.replace(cfg, distill=run.distill), rule, device), "queries": queries,
              "rounds": len(run.sizes) - 1}
    return round_selection(rule.name, "1", config, run.seed, pool, run.labeled, run.rounds, run.scores,
                           run.min_distance, teachers)


def seed_set(pool: ImageDataset, per_class: int, seed: int) -> np.ndarray:
    """The initial labeled set: `per_class` random samples of each class (the benchmark's setup step,
    done before the loop; the loop then queries these labels from the oracle like any other)."""
    return class_balanced_indices(pool, per_class, seed, salt="active-learning-seed-set")
