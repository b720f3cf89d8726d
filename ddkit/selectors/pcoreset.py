"""PCoreSet (arXiv 2506.00910): greedy k-center coverage in the student's probability space.

Each round the ActiveKD student (trained with distillation from the teacher on the labeled set
plus the whole pool, `ddkit.selectors.activekd`) predicts p(x) = (1−α)·softmax(z_ce) +
α·softmax(z_kd/β) for every pool sample; the labeled samples' p's are the initial centers, and
each query is the unlabeled sample whose p is farthest (L2) from its nearest center
(`ddkit.index.kcenter`, O(|U|·C) per pick, never a |S|×|U| matrix).

`pcoreset-teacher` applies the same rule to the teacher's probabilities — a different method,
offered under its own name.
"""

from __future__ import annotations

from ddkit.selectors.acquisition import pcoreset_rule, pcoreset_teacher_rule
from ddkit.selectors.active import ActiveSelector
from ddkit.selectors.base import register_selector


@register_selector
class PCoreSetSelector(ActiveSelector):
    """PCoreSet: k-center on the ActiveKD student's combined probabilities (one AL round)."""

    name = "pcoreset"
    version = "1"
    rule = pcoreset_rule


@register_selector
class PCoreSetTeacherSelector(ActiveSelector):
    """k-center on the teacher's probabilities, labeled samples as initial centers (one AL round)."""

    name = "pcoreset-teacher"
    version = "1"
    rule = pcoreset_teacher_rule
