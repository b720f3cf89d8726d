"""Label sources of the evaluator: how a student's loss is computed on one augmented, mixed batch.

- `hard`: cross-entropy to the one-hot labels, mixed with the batch's λ;
- `teacher`: KL to the teacher ensemble's softened prediction on exactly this view (relabel on the fly);
- `stored`: the train set's own label payload; the payload's scheme decides the loss
  (`logits`: static logits interpolated with the same λ and partner as the images, then KL at T;
  `dbr`: NRR-DD's two teacher distances per replayed view, see `ddkit.dbr`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ddkit.dbr import dbr_loss
from ddkit.errors import IncompatibleError
from ddkit.registry import Registry


@dataclass
class MixInfo:
    """How a batch was mixed: x̃ = λ·x + (1−λ)·x[perm] (CutMix: λ is the kept area).

    Replayed DBR views are mixed per chunk, not per batch: there `lam` is a per-view tensor and
    `partner_labels` holds each view's second label (its partner may lie outside the batch).
    """

    lam: float | torch.Tensor = 1.0
    perm: torch.Tensor | None = None
    partner_labels: torch.Tensor | None = None


def kl_at_temperature(student_logits: torch.Tensor, target_logits: torch.Tensor, temperature: float, t_squared: bool) -> torch.Tensor:
    """KL(softmax(target/T) ‖ softmax(student/T)), batch mean; × T² only when asked."""
    t = temperature
    loss = F.kl_div(F.log_softmax(student_logits / t, -1), F.log_softmax(target_logits / t, -1),
                    reduction="batchmean", log_target=True)
    return loss * (t * t) if t_squared else loss


def hard_loss(student_logits, labels, mix: MixInfo) -> torch.Tensor:
    loss = F.cross_entropy(student_logits, labels)
    if mix.perm is None or mix.lam >= 1.0:
        return loss
    return mix.lam * loss + (1 - mix.lam) * F.cross_entropy(student_logits, labels[mix.perm])


def mix_targets(targets: torch.Tensor, mix: MixInfo) -> torch.Tensor:
    """Interpolate per-sample target vectors with the batch's λ and partner permutation."""
    if mix.perm is None or mix.lam >= 1.0:
        return targets
    return mix.lam * targets + (1 - mix.lam) * targets[mix.perm]


# Losses for stored payloads, by scheme. Each takes (student_logits, payload rows of the batch,
# labels of the batch, mix, protocol) and returns a scalar.
STORED_LOSSES = Registry("stored-label loss")


def stored_loss(scheme: str, summary: str):
    return STORED_LOSSES.register(scheme, summary=summary)


@stored_loss("logits", summary="KL at the protocol's temperature to the stored logits (mixed like the views)")
def _logits_loss(student_logits, rows, labels, mix: MixInfo, protocol) -> torch.Tensor:
    return kl_at_temperature(student_logits, mix_targets(rows.float(), mix), protocol.temperature, protocol.t_squared)


@stored_loss("dbr", summary="CE to both mixed labels plus the gaps to the stored teacher distances (NRR-DD's DBR)")
def _dbr_loss(student_logits, rows, labels, mix: MixInfo, protocol) -> torch.Tensor:
    return dbr_loss(student_logits, labels, mix.partner_labels, mix.lam, rows, protocol.extra.get("alpha_dbr", 1.0))


def require_stored_scheme(scheme: str | None) -> Callable:
    if scheme is None:
        raise IncompatibleError(
            "this protocol trains on the file's stored labels, but the train set has no label payload",
            "use a hard-label or teacher protocol (e.g. --protocol hard-cpu or teacher-cpu)",
        )
    if scheme not in STORED_LOSSES:
        raise IncompatibleError(
            f"this ddkit cannot train with stored labels of scheme {scheme!r}",
            f"known schemes: {', '.join(STORED_LOSSES.names())}; upgrade ddkit or use a teacher protocol",
        )
    return STORED_LOSSES.get(scheme)
