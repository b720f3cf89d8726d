"""ActiveKD (arXiv 2506.00910): the dual-head student trained each active-learning round.

Every round the student is re-initialized to the same initial weights and trained on the few
labeled samples (cross-entropy on `ce_head`) and, with distillation on, by KD from the teacher on
labeled *and* unlabeled pool samples (`kd_head`):

    loss = 0.5·CE(z_ce(x_l), y) + 0.5·T²·[KL_l + KL_u],  KL = KL(σ(t/T) ‖ σ(z_kd/T)), batch mean,

written in the spec as KL(σ(z_kd/T) ‖ σ(t/T)) in `F.kl_div(input, target)` argument order. The
prediction used for evaluation and for selection combines both heads:
p(x) = (1−α)·softmax(z_ce) + α·softmax(z_kd/β). Without distillation only the CE term is trained
and p(x) = softmax(z_ce) (the KD head is untrained, so α is taken as 0).

Teacher logits are computed once per pool on clean views (or read from a file of precomputed
logits, the realistic path for a VLM teacher run elsewhere) and used as targets for augmented
views; the teacher is never run per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ddkit.augment import build_augmentation
from ddkit.data.base import ImageDataset
from ddkit.data.stream import StreamedViews, batches_at, normalized_source
from ddkit.errors import InvalidInput
from ddkit.models import ImageClassifier, create_model
from ddkit.progress import progress
from ddkit.seeding import derive_seed, generator
from ddkit.training import optimizer_step


@dataclass
class ActiveKDConfig:
    """The ActiveKD student and its per-round training (spec defaults; scaled-down student)."""

    distill: bool = True  # train with the KD terms on labeled + unlabeled pool samples
    student: str = "convnet"  # registered model; ImageNet ResNet-18 in the paper, a small net here
    width: int = 32
    depth: int = 3
    norm: str = "instance"
    alpha: float = 0.5  # weight of the KD head in p(x)
    beta: float = 1.0  # temperature of the KD head in p(x)
    temperature: float = 2.0  # KD temperature T
    steps_per_label: float = 200 / 64  # steps per round ≈ steps_per_label · |L| ...
    min_steps: int = 0  # ... but at least this many
    batch_size: int = 64  # labeled images per step (and as many unlabeled ones)
    lr: float = 1e-3  # AdamW
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1  # linear warm-up, then linear decay to 0
    augmentation: str = "resized-crop-flip"  # random resized crop (scale 0.5-1) + horizontal flip

    def check(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise InvalidInput(f"alpha must be in [0, 1], got {self.alpha}")
        if self.beta <= 0 or self.temperature <= 0:
            raise InvalidInput("beta and temperature must be > 0")
        if self.batch_size < 1 or self.steps_per_label < 0 or self.min_steps < 0:
            raise InvalidInput("batch_size must be ≥ 1 and steps_per_label, min_steps ≥ 0")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise InvalidInput(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")

    def steps(self, num_labeled: int) -> int:
        return max(self.min_steps, int(math.ceil(self.steps_per_label * num_labeled)), 1)


# -- the math -------------------------------------------------------------------------------------
def combine_heads(z_ce: torch.Tensor, z_kd: torch.Tensor | None, alpha: float, beta: float) -> torch.Tensor:
    """p(x) = (1−α)·softmax(z_ce) + α·softmax(z_kd/β); with no KD head (or α = 0), softmax(z_ce)."""
    p = torch.softmax(z_ce, -1)
    if z_kd is None or alpha == 0.0:
        return p
    return (1.0 - alpha) * p + alpha * torch.softmax(z_kd / beta, -1)


def kd_term(z_kd: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(σ(t/T) ‖ σ(z_kd/T)), batch mean (0 for an empty batch)."""
    if len(z_kd) == 0:
        return z_kd.sum() * 0.0
    t = temperature
    return F.kl_div(F.log_softmax(z_kd / t, -1), F.log_softmax(teacher_logits / t, -1), reduction="batchmean", log_target=True)


def activekd_loss(z_ce_l, labels, z_kd_l, t_l, z_kd_u, t_u, temperature: float) -> torch.Tensor:
    """0.5·CE(z_ce(x_l), y) + 0.5·T²·[KL_l + KL_u] (the CE term is dropped when nothing is labeled)."""
    ce = F.cross_entropy(z_ce_l, labels) if len(labels) else z_ce_l.sum() * 0.0
    kd = kd_term(z_kd_l, t_l, temperature) + kd_term(z_kd_u, t_u, temperature)
    return 0.5 * ce + 0.5 * temperature**2 * kd


def warmup_linear(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up over `warmup` steps, then linear decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


# -- the student ----------------------------------------------------------------------------------
class DualHeadStudent(nn.Module):
    """A registered backbone with two linear heads on its pooled feature: `ce_head`, `kd_head`."""

    def __init__(self, backbone: ImageClassifier, seed: int):
        super().__init__()
        self.backbone = backbone
        self.ce_head = backbone.classifier
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "kd-head"))
            self.kd_head = nn.Linear(backbone.feature_dim, backbone.classifier.out_features)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pooled = self.backbone.pool(self.backbone.features(x))
        return self.ce_head(pooled), self.kd_head(pooled), pooled


def build_student(cfg: ActiveKDConfig, image_shape, num_classes: int, seed: int) -> DualHeadStudent:
    """The round's student, always from the same initial weights for a given seed."""
    c, h, _ = image_shape
    backbone = create_model(cfg.student, c, h, num_classes, seed=derive_seed(seed, "activekd-student"),
                            **_student_kwargs(cfg))
    return DualHeadStudent(backbone, seed)


def _student_kwargs(cfg: ActiveKDConfig) -> dict:
    kwargs = {"width": cfg.width}
    if cfg.student.startswith("convnet"):
        kwargs["depth"] = cfg.depth
    if cfg.student == "convnet":
        kwargs["norm"] = cfg.norm
    return kwargs


class _Cycler:
    """Batches of positions from successive seeded permutations of `pool` (cycles forever)."""

    def __init__(self, pool: torch.Tensor, gen: torch.Generator):
        self.pool, self.gen, self.order, self.at = pool, gen, pool[:0], 0

    def next(self, size: int) -> torch.Tensor:
        parts = []
        while size > 0:
            if self.at >= len(self.order):
                self.order, self.at = self.pool[torch.randperm(len(self.pool), generator=self.gen)], 0
            take = self.order[self.at : self.at + size]
            parts.append(take)
            self.at += len(take)
            size -= len(take)
        return torch.cat(parts)


def train_student(images, labeled: np.ndarray, labels: np.ndarray, teacher_logits: torch.Tensor | None,
                  cfg: ActiveKDConfig, num_classes: int, seed: int, round_index: int, device: torch.device) -> DualHeadStudent:
    """Train one round's student on normalized pool `images` (all of the pool, labeled or not): the
    tensor, or `StreamedViews` of a streamed pool, whose step batches are then read ahead.

    `labeled`/`labels`: positions into `images` and their oracle labels. `teacher_logits`: N×C pool
    logits (required when `cfg.distill`). Unlabeled batches cycle over the rest of the pool.
    """
    cfg.check()
    if cfg.distill and teacher_logits is None:
        raise InvalidInput("distillation needs a teacher", "pass --teacher or --teacher-logits, or --config distill=false")
    if not cfg.distill and len(labeled) == 0:
        raise InvalidInput("without distillation the student needs labeled samples", "pass --labeled, or a teacher to distill from")
    student = build_student(cfg, _image_shape(images), num_classes, seed).to(device).train()
    images = images.to(device)
    labeled_t = torch.as_tensor(labeled, dtype=torch.long)
    labels_t = torch.as_tensor(labels, dtype=torch.long, device=device)
    mask = torch.ones(len(images), dtype=torch.bool)
    mask[labeled_t] = False
    unlabeled_t = torch.nonzero(mask).flatten()
    targets = teacher_logits.to(device).float() if cfg.distill else None
    total = cfg.steps(len(labeled))
    gen = generator(seed, "activekd-batches", round_index)
    aug_gen = generator(seed, "activekd-augment", round_index, device=device)
    augment = build_augmentation(cfg.augmentation)
    labeled_cycle = _Cycler(torch.arange(len(labeled)), gen)
    unlabeled_cycle = _Cycler(unlabeled_t, gen) if cfg.distill and len(unlabeled_t) else None
    # Every step's positions first (they depend only on the seed), so a streamed pool's batches can be read ahead.
    plan = []
    for _ in range(total):
        rows = labeled_cycle.next(cfg.batch_size) if len(labeled) else torch.empty(0, dtype=torch.long)
        pos_l = labeled_t[rows]
        pos_u = unlabeled_cycle.next(cfg.batch_size) if unlabeled_cycle is not None else pos_l[:0]
        plan.append((rows, pos_l, pos_u))
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = int(cfg.warmup_fraction * total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_linear(s, total, warmup))
    views = batches_at(images, [torch.cat([pos_l, pos_u]) for _, pos_l, pos_u in plan])
    for (rows, pos_l, pos_u), batch in progress(zip(plan, views), total=total, desc=f"ActiveKD round {round_index}"):
        pos_l, pos_u = pos_l.to(device), pos_u.to(device)
        x = augment(batch, aug_gen)
        z_ce, z_kd, _ = student(x)
        n_l = len(pos_l)
        if cfg.distill:
            loss = activekd_loss(z_ce[:n_l], labels_t[rows.to(device)], z_kd[:n_l], targets[pos_l], z_kd[n_l:], targets[pos_u],
                                 cfg.temperature)
        else:
            loss = F.cross_entropy(z_ce, labels_t[rows.to(device)])
        optimizer_step(opt, loss, sched)
    return student.eval()


def _image_shape(images) -> tuple:
    return tuple(images.dataset.info.image_shape) if isinstance(images, StreamedViews) else tuple(images.shape[1:])


@torch.no_grad()
def student_outputs(student: DualHeadStudent, images, cfg: ActiveKDConfig, batch_size: int = 1000,
                    features: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Combined probabilities p(x) (N×C) and pooled features (N×D, or None) on clean views, eval mode
    (`images`: a normalized tensor or `StreamedViews`, read in one pass)."""
    student.eval()
    device = next(student.parameters()).device
    probs, feats = [], []
    alpha = cfg.alpha if cfg.distill else 0.0
    chunks = [torch.arange(i, min(i + batch_size, len(images))) for i in range(0, len(images), batch_size)]
    for x in batches_at(images, chunks):
        z_ce, z_kd, pooled = student(x.to(device))
        probs.append(combine_heads(z_ce, z_kd, alpha, cfg.beta).float().cpu())
        if features:
            feats.append(pooled.float().cpu())
    probs_t = torch.cat(probs) if probs else torch.empty(0)
    feats_t = torch.cat(feats) if features and feats else None
    return probs_t, feats_t


def student_accuracy(student: DualHeadStudent, test: ImageDataset, cfg: ActiveKDConfig) -> float:
    probs, _ = student_outputs(student, normalized_source(test), cfg, features=False)
    return float((probs.argmax(1) == test.labels).float().mean())
