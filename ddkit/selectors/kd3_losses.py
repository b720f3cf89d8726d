"""The pure math of KD³ (ICCV 2023, "Knowledge Distillation between Different Distributions").

Small functions, each testable against a hand computation: the teacher-weight schedule α(e), the
class-adaptive thresholds, the dynamic instance selection rule, the logit-distance-weighted feature
alignment, the MixDistribution view and NT-Xent. `ddkit.selectors.kd3` wires them into training.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def alpha_schedule(epoch: int, epochs: int) -> float:
    """Teacher weight α(e) of the combined logits `α·z_T + (1−α)·z_S`.

    The paper (E = 240): α(e) = 1 − exp(−5·((e+1)/160 − 1)²) for e < 120, else 0. For other run
    lengths the same curve is scaled with E_r = 2E/3: α(e) = 1 − exp(−5·((e+1)/E_r − 1)²) for
    e < 0.75·E_r (= E/2), else 0. At E = 240 this is the paper's formula exactly (a scale-down
    choice, recorded in the KD³ config as `alpha_schedule`). The abrupt drop to 0 is the method.
    """
    if epochs < 1 or epoch < 0:
        raise ValueError(f"need 0 ≤ epoch and epochs ≥ 1, got epoch {epoch} of {epochs}")
    e_r = 2.0 * epochs / 3.0
    if epoch >= 0.75 * e_r:
        return 0.0
    return 1.0 - math.exp(-5.0 * ((epoch + 1) / e_r - 1.0) ** 2)


def class_thresholds(predicted: torch.Tensor, num_classes: int, tau: float) -> torch.Tensor:
    """τ_c = τ·σ_c/(2 − σ_c) with σ_c = N_c / max_c' N_c' (N_c: samples predicted as c, all counted).

    A class the pool rarely predicts gets a lower bar, so selection does not collapse onto the
    classes the (shifted) pool happens to resemble most. Classes never predicted get τ_c = 0.
    """
    counts = torch.bincount(predicted.flatten().long().cpu(), minlength=num_classes).double()
    sigma = counts / counts.max().clamp_min(1.0)
    return (tau * sigma / (2.0 - sigma)).float()


def combined_confidence(teacher_logits: torch.Tensor, student_logits: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(ŷ, q): argmax and max of softmax(α·z_T + (1−α)·z_S)."""
    z = alpha * teacher_logits.float() + (1.0 - alpha) * student_logits.float()
    q, y = F.softmax(z, dim=1).max(1)
    return y, q


def select_instances(teacher_logits: torch.Tensor, student_logits: torch.Tensor, alpha: float, tau: float) -> dict:
    """One epoch of dynamic instance selection: keep x iff q(x) > τ_ŷ(x).

    Returns `keep` (bool N), `predicted` (ŷ), `confidence` (q), `threshold` (τ_ŷ per sample) and
    `class_thresholds` (τ_c). Nothing here sees a label: only the two models' logits.
    """
    y, q = combined_confidence(teacher_logits, student_logits, alpha)
    tau_c = class_thresholds(y, teacher_logits.shape[1], tau)
    threshold = tau_c[y.cpu()].to(q.device)
    return {"keep": q > threshold, "predicted": y, "confidence": q, "threshold": threshold, "class_thresholds": tau_c}


def match_spatial(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the larger of two feature maps to the other's spatial size."""
    if a.shape[2:] == b.shape[2:]:
        return a, b
    if a.shape[2] * a.shape[3] > b.shape[2] * b.shape[3]:
        return F.adaptive_avg_pool2d(a, b.shape[2:]), b
    return a, F.adaptive_avg_pool2d(b, a.shape[2:])


def alignment_weights(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """w_b = sigmoid(‖z_S,b − z_T,b‖₂), detached: samples the student still gets wrong weigh more."""
    return torch.sigmoid((student_logits.detach() - teacher_logits.detach()).norm(dim=1))


def weighted_feature_alignment(student_map: torch.Tensor, teacher_map: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """L_FA = mean(w_b·(P(F_S)_b − F_T,b)²) over every element (w_b = 1 when `weights` is None)."""
    s, t = match_spatial(student_map, teacher_map)
    per_sample = ((s - t.detach()) ** 2).flatten(1).mean(1)
    if weights is not None:
        per_sample = weights * per_sample
    return per_sample.mean()


def channel_stats(x: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel mean μ and σ = sqrt(var + eps), detached (B×C×1×1 each)."""
    mu = x.mean(dim=(2, 3), keepdim=True)
    sigma = (x.var(dim=(2, 3), keepdim=True, unbiased=False) + eps).sqrt()
    return mu.detach(), sigma.detach()


def mix_distribution(x: torch.Tensor, lam: torch.Tensor, perm: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """MixDistribution view (MixStyle on input pixels):
    x_aug = (x − μ)/σ · (λσ + (1−λ)σ_π) + (λμ + (1−λ)μ_π), λ per sample, π a batch permutation.

    Each image keeps its content but takes a mix of its own and another image's channel statistics
    (on grayscale: brightness and contrast).
    """
    mu, sigma = channel_stats(x, eps)
    lam = lam.to(x).view(-1, 1, 1, 1)
    x_hat = (x - mu) / sigma
    return x_hat * (lam * sigma + (1 - lam) * sigma[perm]) + (lam * mu + (1 - lam) * mu[perm])


def sample_mix(batch: int, beta: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """λ ~ Beta(β, β) per sample and a batch permutation π, from `generator` only (replayable)."""
    from ddkit.augment import _beta  # the one seeded Beta sampler of ddkit

    lam = torch.stack([_beta(beta, generator) for _ in range(batch)]).float()
    perm = torch.randperm(batch, generator=generator, device=generator.device)
    return lam, perm.cpu()


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (SimCLR) between two views: rows i of `a` and `b` are positives, the other 2B − 2
    embeddings negatives; cosine similarity / temperature, cross-entropy averaged over all 2B rows."""
    z = F.normalize(torch.cat([a, b]), dim=1)
    n = a.shape[0]
    sim = z @ z.t() / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def step_lr_factor(progress: float, milestones=(0.625, 0.75, 0.875), gamma: float = 0.1) -> float:
    """The paper's step schedule: ×0.1 at 62.5% / 75% / 87.5% of training (150/180/210 of 240)."""
    return gamma ** sum(progress >= m for m in milestones)
