"""Acquisition rules of active learning: which unlabeled pool samples to query next.

Each rule is a small pure function of a `RoundState` (what is known this round: labeled positions
and their oracle labels, the student's combined probabilities and pooled features on the pool, the
teacher's probabilities) and returns `Acquired` positions with their score; `@rule` makes it a
registered `Rule` object, which an active-learning selector holds as its `rule`. The k-center rules
use `ddkit.index.kcenter`, with the labeled samples as initial centers.

- `random`: uniform over the unlabeled pool.
- `entropy`: highest entropy of the student's combined p(x).
- `coreset-features`: greedy k-center on L2-normalized student features (cosine geometry).
- `pcoreset`: greedy k-center on the student's combined p(x) — PCoreSet.
- `pcoreset-teacher`: greedy k-center on the teacher's probabilities (a named variant, not PCoreSet).
- `class-balanced`: fills the class that is rarest in the labeled set, using the student's predicted
  class for unlabeled samples (the true labels stay hidden), a random sample of that class each time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ddkit import index
from ddkit.errors import InvalidInput
from ddkit.registry import Registry
from ddkit.seeding import numpy_rng


@dataclass
class RoundState:
    """What an acquisition rule may look at (never the labels of unlabeled samples)."""

    n: int  # pool size
    num_classes: int
    labeled: np.ndarray  # positions into the pool
    labels: np.ndarray  # oracle labels of `labeled`
    round: int  # the round being acquired (1 = the first acquisition)
    probs: np.ndarray | None = None  # N×C student p(x)
    features: np.ndarray | None = None  # N×D student pooled features
    teacher_probs: np.ndarray | None = None  # N×C
    device: object = None  # the run's device (--device): where the k-center rules' index work runs

    def unlabeled(self) -> np.ndarray:
        mask = np.ones(self.n, bool)
        mask[self.labeled] = False
        return np.flatnonzero(mask)


@dataclass
class Acquired:
    positions: np.ndarray
    score: np.ndarray  # the rule's score at pick time (NaN for random)
    min_distance: np.ndarray | None = None  # k-center rules: L2 distance to the nearest center at pick time


@dataclass(frozen=True)
class Rule:
    """An acquisition rule: what its round state must carry (`needs`, of "probs", "features",
    "teacher") and how it picks (`pick`). Each active-learning selector holds its rule as a class
    attribute, so the selector, not a name looked up elsewhere, says how it acquires."""

    name: str
    pick: Callable[[RoundState, int, int], Acquired]
    needs: frozenset
    summary: str

    @property
    def needs_student(self) -> bool:
        return bool(self.needs & {"probs", "features"})

    def acquire(self, state: RoundState, budget: int, seed: int) -> Acquired:
        """Pick `budget` new samples; checks the budget and that the picks are new, unique positions."""
        available = state.n - len(state.labeled)
        if budget < 1 or budget > available:
            raise InvalidInput(f"budget {budget} is not in [1, {available}] (the unlabeled samples left)",
                               "lower the budget")
        out = self.pick(state, budget, seed)
        picked = np.asarray(out.positions, np.int64)
        if len(picked) != budget or len(np.unique(picked)) != budget or np.isin(picked, state.labeled).any():
            raise AssertionError(f"acquisition rule {self.name} returned invalid picks")  # a bug, not bad input
        return out


RULES = Registry("acquisition rule")


def rule(name: str, needs: tuple = (), summary: str = ""):
    """Register `fn(state, budget, seed) -> Acquired` as the `Rule` called `name` (the decorated
    name becomes the Rule object); `needs` names what its round state must carry."""

    def wrap(fn: Callable[[RoundState, int, int], Acquired]) -> Rule:
        made = Rule(name, fn, frozenset(needs), summary)
        RULES.register(name, summary=summary, needs=made.needs)(made)
        return made

    return wrap


def get_rule(name: str) -> Rule:
    """The registered rule called `name` (for rules named on the command line)."""
    if name not in RULES:
        raise InvalidInput(f"unknown acquisition rule {name!r}", f"use one of {', '.join(RULES.names())}")
    return RULES.get(name)


def _require(state: RoundState, what: str):
    value = {"probs": state.probs, "features": state.features, "teacher": state.teacher_probs}[what]
    if value is None:
        raise InvalidInput(f"this acquisition rule needs {what}, which were not computed")
    return value


def _kcenter(points: np.ndarray, state: RoundState, budget: int, seed: int) -> Acquired:
    res = index.kcenter(points, budget, center_positions=state.labeled, seed=seed, device=state.device)
    return Acquired(res.indices, res.min_distance, res.min_distance)


@rule("random", summary="uniform over the unlabeled pool")
def random_rule(state: RoundState, budget: int, seed: int) -> Acquired:
    picks = numpy_rng(seed, "acquire-random", state.round).choice(state.unlabeled(), budget, replace=False)
    return Acquired(picks.astype(np.int64), np.full(budget, np.nan))


def entropy(p: np.ndarray) -> np.ndarray:
    p = p.astype(np.float64)
    return -(p * np.log(np.clip(p, 1e-12, None))).sum(1)


@rule("entropy", needs=("probs",), summary="highest entropy of the student's combined p(x)")
def entropy_rule(state: RoundState, budget: int, seed: int) -> Acquired:
    candidates = state.unlabeled()
    h = entropy(_require(state, "probs")[candidates])
    order = np.lexsort((candidates, -h))[:budget]  # highest entropy first, ties to the lowest position
    return Acquired(candidates[order], h[order])


@rule("coreset-features", needs=("features",), summary="k-center on L2-normalized student features")
def coreset_features_rule(state: RoundState, budget: int, seed: int) -> Acquired:
    f = _require(state, "features").astype(np.float32)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    return _kcenter(f, state, budget, seed)


@rule("pcoreset", needs=("probs",), summary="k-center on the student's combined p(x) (PCoreSet)")
def pcoreset_rule(state: RoundState, budget: int, seed: int) -> Acquired:
    return _kcenter(_require(state, "probs"), state, budget, seed)


@rule("pcoreset-teacher", needs=("teacher",), summary="k-center on the teacher's probabilities")
def pcoreset_teacher_rule(state: RoundState, budget: int, seed: int) -> Acquired:
    return _kcenter(_require(state, "teacher"), state, budget, seed)


@rule("class-balanced", needs=("probs",), summary="fill the rarest labeled class, by the student's predicted class")
def class_balanced_rule(state: RoundState, budget: int, seed: int) -> Acquired:
    probs = _require(state, "probs")
    rng = numpy_rng(seed, "acquire-class-balanced", state.round)
    candidates = state.unlabeled()
    predicted = probs[candidates].argmax(1)
    pools = [list(rng.permutation(candidates[predicted == c])) for c in range(state.num_classes)]
    counts = np.bincount(state.labels, minlength=state.num_classes).astype(np.int64)
    picks, scores = [], []
    for _ in range(budget):
        open_classes = [c for c in range(state.num_classes) if pools[c]]
        if not open_classes:  # every predicted class is exhausted (cannot happen while budget ≤ |U|)
            break
        c = min(open_classes, key=lambda k: (counts[k], k))
        pick = pools[c].pop()
        picks.append(pick)
        scores.append(probs[pick, c])
        counts[c] += 1
    return Acquired(np.asarray(picks, np.int64), np.asarray(scores, np.float64))
