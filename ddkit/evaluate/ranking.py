"""DD-Ranking's scores for a distilled set (Li et al., 2025, "DD-Ranking: Rethinking the Evaluation
of Dataset Distillation", arXiv:2505.13300; the `ddranking` package).

DD-Ranking separates what the images carry from what the labels and the training recipe add:

- **HLR** (hard label recovery) = acc_hard(full real data) − acc_hard(set): how far the images alone,
  trained with hard labels, stay from the whole real training set. Lower is better.
- **IOR** (improvement over random) = acc_P(set) − acc_P(random real at the same budget), both under
  the set's own protocol P (its labels, augmentation and schedule). Higher is better.
- **LRS** (label-robust score) = (exp(w·IOR − (1 − w)·HLR) − e⁻¹) / (e − e⁻¹), with accuracies as
  fractions and w = 0.5 (DD-Ranking's default): the exponent lies in [−1, 1], so LRS lies in [0, 1]
  (0 for IOR = −1, HLR = 1; 1 for IOR = 1, HLR = −1); reported in percent like DD-Ranking does.

Units: the paper's formula takes IOR and HLR as fractions (the exponent then lies in [−1, 1]); the
`ddranking` 0.2.0 code passes percent accuracies into the same exponent, so its LRS is 100× steeper,
bottoms out at −0.157 and exceeds 1 once IOR − HLR > 2 points. ddkit follows the paper; the
cross-check (BENCHMARKS.md `ddranking-crosscheck`, `scripts/crosscheck_ddranking.py`) shows both.

The scores are computed per seed (the set's i-th student against the i-th random-subset and
full-data student) and reported as mean ± sample std, like DD-Ranking's `num_eval` rounds. Unlike
DD-Ranking, ddkit reports final-step accuracy under a fixed, versioned protocol: it neither takes the
best test accuracy over epochs nor searches the learning rate on the test split, so its numbers are
lower than DD-Ranking's for the same images and never comparable across protocol versions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ddkit.errors import InvalidInput
from ddkit.evaluate.card import mean_std

LRS_WEIGHT = 0.5  # DD-Ranking's default λ between IOR and HLR


def label_robust_score(ior: float, hlr: float, weight: float = LRS_WEIGHT) -> float:
    """LRS in [0, 1] (for IOR, HLR in [−1, 1]) from IOR and HLR given as fractions."""
    if not 0.0 <= weight <= 1.0:
        raise InvalidInput(f"the LRS weight must lie in [0, 1], got {weight}")
    alpha = weight * ior - (1.0 - weight) * hlr
    return (math.exp(alpha) - math.exp(-1.0)) / (math.e - math.exp(-1.0))


@dataclass
class RankingScores:
    """HLR, IOR and LRS per seed (fractions), with the protocols they were measured under."""

    protocol: str  # the set's own protocol (IOR)
    hard_protocol: str  # the hard-label protocol (HLR)
    hlr: list[float]
    ior: list[float]
    lrs: list[float]
    hard_set: list[float]  # the set's hard-label accuracies behind HLR
    hard_full: list[float]  # full data's, under the same hard-label protocol
    weight: float = LRS_WEIGHT

    def to_dict(self) -> dict:
        out = {"protocol": self.protocol, "hard_protocol": self.hard_protocol, "weight": self.weight,
               "source": "DD-Ranking (arXiv:2505.13300), final-step accuracies, per seed"}
        for name in ("hlr", "ior", "lrs", "hard_set", "hard_full"):
            values = getattr(self, name)
            mean, std = mean_std(values)
            out[name] = {"per_seed": values, "mean": mean, "std": std}
        return out


def ranking_scores(protocol: str, own: list[float], random: list[float], hard_protocol: str,
                   hard_own: list[float], hard_full: list[float], weight: float = LRS_WEIGHT) -> RankingScores:
    """The three scores from per-seed accuracies (fractions) of the set and its references."""
    lengths = {len(own), len(random), len(hard_own), len(hard_full)}
    if len(lengths) != 1 or not own:
        raise InvalidInput("DD-Ranking's scores need one accuracy per seed for the set, random real and both hard arms")
    hlr = [f - s for f, s in zip(hard_full, hard_own)]
    ior = [s - r for s, r in zip(own, random)]
    lrs = [label_robust_score(i, h, weight) for i, h in zip(ior, hlr)]
    return RankingScores(protocol, hard_protocol, hlr, ior, lrs, list(hard_own), list(hard_full), weight)
