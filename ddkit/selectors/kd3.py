"""KD³ (Tang et al., ICCV 2023): distill a teacher into a student on a distribution-shifted,
unlabeled pool, selecting the pool samples to train on every epoch.

Per epoch e of E: score every pool image on its clean, deterministic view (the pool is normalized
once and cached as one tensor, or streamed batch by batch when it does not fit in memory; the
teacher's logits are computed once, the student's every epoch),
combine the logits `α(e)·z_T + (1−α(e))·z_S`, and keep x iff its confidence beats the
class-adaptive threshold of its predicted class (`kd3_losses.select_instances`). Then train one
epoch on the kept samples with `L = L_FA + m·L_MD`: the projector + frozen, reused teacher
classifier (the `kd3-student` model), the logit-distance-weighted feature MSE, and NT-Xent between
clean and MixDistribution views on both embedding heads. Every part can be switched off
(`selection`, `share_classifier`, `feature_alignment`, `weighted_alignment`, `mix_distribution`),
and `kl_weight` adds a plain KD term, so the baselines (plain KD on the whole pool, KD on a
teacher-confidence-filtered pool) come from this same code.

Output: the samples kept at the end (a final scoring pass with the trained student, α(E)), with
per-sample `epochs_selected`, final confidence (`score`), threshold and class in the selection;
optionally the trained student as a teacher file (`student_out`) and a per-pool-sample trace
(`trace_out`, .npz: every sample's epochs selected, final score and whether it was kept).
Pool labels are never read: only pixels, ids and the task description.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ddkit.augment import build_augmentation
from ddkit.data.base import DatasetInfo
from ddkit.data.stream import batches_at, normalized_source
from ddkit.errors import IncompatibleError, InvalidInput
from ddkit.fileio import atomic_output
from ddkit.models import create_model
from ddkit.models.teacher import save_teacher
from ddkit.progress import progress
from ddkit.seeding import derive_seed, generator
from ddkit.selectors.base import Selector, SideOutput, register_selector
from ddkit.selectors.kd3_losses import (
    alignment_weights,
    alpha_schedule,
    mix_distribution,
    nt_xent,
    sample_mix,
    select_instances,
    step_lr_factor,
    weighted_feature_alignment,
)
from ddkit.store import Selection, pool_record
from ddkit.training import optimizer_step

SELECTION_MODES = ("dynamic", "teacher", "none")
ALPHA_SCHEDULE = "paper-scaled"  # α(e) = 1 − exp(−5((e+1)/E_r − 1)²) for e < 0.75·E_r, E_r = 2E/3; exact at E = 240


@dataclass
class KD3Config:
    """Defaults follow the paper (E = 240, SGD 0.05, τ = 0.95, m = 0.001, NT-Xent T = 0.3)."""

    epochs: int = 240
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    student: str = "resnet8"  # registered backbone of the kd3-student model
    student_width: int = 16
    bottleneck: int = 2  # projector bottleneck factor
    tau: float = 0.95
    selection: str = "dynamic"  # dynamic: α(e) schedule | teacher: α ≡ 1 (teacher-confidence filter) | none: whole pool
    alpha_schedule: str = ALPHA_SCHEDULE  # recorded choice (the only one implemented)
    share_classifier: bool = True  # frozen teacher classifier on the projected features
    feature_alignment: bool = True  # L_FA
    weighted_alignment: bool = True  # w_b = sigmoid(‖z_S − z_T‖); False: w_b = 1
    mix_distribution: bool = True  # L_MD (MixDistribution view + NT-Xent on both heads)
    mix_weight: float = 0.001  # m
    mix_beta: float = 0.1  # λ ~ Beta(β, β)
    temperature: float = 0.3  # NT-Xent
    embed_dim: int = 128
    kl_weight: float = 0.0  # plain KD term β·T²·KL(p_T ‖ p_S) (0 in KD³; for baselines/ablations)
    kd_temperature: float = 4.0
    augmentation: str = "crop-flip"  # training views (scoring always uses the clean view)
    score_batch_size: int = 512
    student_out: str = ""  # write the trained student here (a teacher file; `ddkit teacher eval` reads it)
    trace_out: str = ""  # write the per-pool-sample trace here (.npz)

    def check(self) -> None:
        if self.selection not in SELECTION_MODES:
            raise InvalidInput(f"selection={self.selection!r} is unknown", f"use one of {', '.join(SELECTION_MODES)}")
        if self.alpha_schedule != ALPHA_SCHEDULE:
            raise InvalidInput(f"alpha_schedule={self.alpha_schedule!r} is unknown", f"use {ALPHA_SCHEDULE}")
        if self.epochs < 1 or self.batch_size < 2:
            raise InvalidInput("KD³ needs epochs ≥ 1 and batch_size ≥ 2")
        if not 0.0 < self.tau <= 1.0:
            raise InvalidInput(f"tau must be in (0, 1], got {self.tau}")
        if not (self.feature_alignment or self.kl_weight > 0 or self.mix_distribution):
            raise InvalidInput("every loss term is switched off", "keep feature_alignment, mix_distribution or kl_weight > 0")
        if not self.share_classifier and self.kl_weight <= 0:
            raise InvalidInput("share_classifier=false leaves the student's own classifier untrained",
                               "add kl_weight=1 (plain KD trains the head)")
        for path in (self.student_out, self.trace_out):
            if path and not isinstance(path, str):
                raise InvalidInput(f"output path {path!r} must be a string")


def task_info(teacher) -> DatasetInfo:
    """The label space the teacher (and so the student) predicts."""
    h = teacher.header
    from ddkit.data.base import Normalization

    return DatasetInfo(h.dataset, tuple(h.class_names) or tuple(str(i) for i in range(h.num_classes)),
                       tuple(h.input_shape), Normalization.from_dict(h.normalization))


class Embedding(nn.Module):
    """Linear(feat → d) + L2 normalize: the contrastive head E_S / E_T."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.fc = nn.Linear(dim_in, dim_out)

    def forward(self, x):
        return F.normalize(self.fc(x), dim=1)


@torch.no_grad()
def _logits(model: nn.Module, images, batch_size: int) -> torch.Tensor:
    """Logits of every pool image on its clean view, in one pass (prefetched when streamed)."""
    was = model.training
    model.eval()
    chunks = [torch.arange(i, min(i + batch_size, len(images))) for i in range(0, len(images), batch_size)]
    out = torch.cat([model(x).float() for x in batches_at(images, chunks)])
    model.train(was)
    return out


@register_selector
class KD3Selector(Selector):
    """KD³: dynamic instance selection + shared-classifier feature alignment + MixDistribution on a pool."""

    name = "kd3"
    version = "1"
    Config = KD3Config
    min_teachers = 1

    def side_paths(self, config: KD3Config) -> list[str]:
        return [path for path in (config.student_out, config.trace_out) if path]

    def select(self, pool, teachers, budget, config: KD3Config, seed, device, inputs=None) -> Selection:
        return self.select_with_outputs(pool, teachers, budget, config, seed, device, inputs)[0]

    def select_with_outputs(self, pool, teachers, budget, config: KD3Config, seed, device, inputs=None
                            ) -> tuple[Selection, list[SideOutput]]:
        """The selection and, as the config asks, the trained student (`student_out`, a teacher file)
        and the per-sample trace (`trace_out`, .npz), for `run_selector` to write."""
        config.check()
        n = int(pool.images.shape[0])  # never len(pool): that counts labels
        if budget < 1 or budget > n:
            raise InvalidInput(f"budget {budget} is not in [1, {n}] (the pool size)", "the budget caps how many samples are kept")
        if len(teachers) != 1:
            raise InvalidInput(f"KD³ distills one teacher, got {len(teachers)}", "pass exactly one --teacher")
        teacher = teachers[0]
        if teacher.model.pooling != "avg":
            raise IncompatibleError(f"teacher {teacher.path or teacher.header.arch} classifies flattened features, "
                                    "so its classifier cannot be reused on projected student features",
                                    "use a teacher with global average pooling (convnet-bn, resnet8/20/18, mobilenet)")
        student, history, stats = train_kd3(normalized_source(pool, device), teacher, config, seed, device)
        keep, margin = stats["kept"], stats["final_confidence"] - stats["final_threshold"]
        kept = np.flatnonzero(keep)
        kept = kept[np.argsort(-margin[kept], kind="stable")][:budget]
        if len(kept) == 0:
            raise InvalidInput("KD³ kept no pool sample at the end (no prediction beat its class threshold)",
                               "lower tau, train longer, or check that the teacher fits the pool's task")
        ids = pool.ids.numpy()
        outputs = []
        if config.trace_out:
            def write_trace(path: str, overwrite: bool) -> None:
                with atomic_output(path, overwrite) as tmp:
                    with open(tmp, "wb") as fh:
                        np.savez(fh, ids=ids, kept=np.isin(np.arange(n), kept),
                                 **{k: v for k, v in stats.items() if k != "kept"},
                                 epoch_selected_count=np.array([h["selected"] for h in history]),
                                 epoch_alpha=np.array([h["alpha"] for h in history]),
                                 epoch_loss=np.array([h["loss"] for h in history]))

            outputs.append(SideOutput(config.trace_out, write_trace))
        if config.student_out:
            student = student.cpu()
            train = {"method": "kd3", "config": asdict(config), "seed": seed, "pool": pool.info.name,
                     "teacher": teacher.header.summary(), "history": history}

            def write_student(path: str, overwrite: bool) -> None:
                save_teacher(path, student, task_info(teacher), overwrite=overwrite, train=train)

            outputs.append(SideOutput(config.student_out, write_student))
        selection = Selection(
            method=self.name, method_version=self.version, config=config, seed=seed, pool=pool_record(pool),
            ids=ids[kept], score=stats["final_confidence"][kept], rank=np.arange(len(kept)),
            extra={"epochs_selected": stats["epochs_selected"][kept], "final_threshold": stats["final_threshold"][kept],
                   "final_class": stats["final_class"][kept]},
            teachers=[teacher.header.summary()],
        )
        return selection, outputs


def build_student(teacher, config: KD3Config, seed: int, device) -> nn.Module:
    h = teacher.header
    student = create_model("kd3-student", h.in_channels, h.image_size, h.num_classes, seed=derive_seed(seed, "kd3-student"),
                           student=config.student, width=config.student_width,
                           teacher_channels=teacher.model.feature_dim, bottleneck=config.bottleneck)
    if config.share_classifier:
        student.classifier.load_state_dict(teacher.model.classifier.state_dict())
        student.classifier.requires_grad_(False)
    return student.to(device)


def _alpha(config: KD3Config, epoch: int) -> float:
    return 1.0 if config.selection == "teacher" else alpha_schedule(epoch, config.epochs)


def train_kd3(images, teacher, config: KD3Config, seed: int, device) -> tuple[nn.Module, list[dict], dict]:
    """Train a KD³ student on normalized pool `images` (no labels); returns (student, per-epoch
    history, per-sample stats: epochs_selected, final_confidence, final_threshold, final_class, kept).

    `images`: the normalized tensor, or `StreamedViews` of a streamed pool (`normalized_source`):
    every pass and every epoch's batches are then read ahead from the pool, never held whole."""
    config.check()
    images = images.to(device)
    n = len(images)
    tmodel = teacher.model.to(device).eval()
    student = build_student(teacher, config, seed, device)
    with torch.random.fork_rng(devices=[]):  # the heads' initial weights depend only on the seed
        torch.manual_seed(derive_seed(seed, "kd3-heads"))
        head_s = Embedding(student.feature_dim, config.embed_dim).to(device)
        head_t = Embedding(tmodel.feature_dim, config.embed_dim).to(device)
    params = [p for p in student.parameters() if p.requires_grad]
    if config.mix_distribution:
        params += list(head_s.parameters()) + list(head_t.parameters())
    opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    augment = build_augmentation(config.augmentation)
    aug_gen = generator(seed, "kd3-augment", device=device)
    mix_gen = generator(seed, "kd3-mix", device="cpu")
    order_gen = generator(seed, "kd3-batches", device="cpu")
    teacher_logits = _logits(tmodel, images, config.score_batch_size)  # frozen teacher, clean view: once
    epochs_selected = np.zeros(n, np.int64)
    history = []
    bar = progress(total=config.epochs, desc="kd3")
    for epoch in range(config.epochs):
        alpha = _alpha(config, epoch)
        if config.selection == "none":
            keep = torch.ones(n, dtype=torch.bool)
        else:
            student_logits = teacher_logits if alpha == 1.0 else _logits(student, images, config.score_batch_size)
            keep = select_instances(teacher_logits, student_logits, alpha, config.tau)["keep"].cpu()
        epochs_selected += keep.numpy()
        for group in opt.param_groups:
            group["lr"] = config.lr * step_lr_factor(epoch / config.epochs)
        chosen = torch.nonzero(keep).flatten()
        chosen = chosen[torch.randperm(len(chosen), generator=order_gen)]
        total, count = 0.0, 0
        student.train()
        batches = [chosen[start : start + config.batch_size] for start in range(0, len(chosen), config.batch_size)]
        batches = [idx for idx in batches if len(idx) >= 2]  # BatchNorm and NT-Xent need two samples
        for idx, views in zip(batches, batches_at(images, batches)):
            x = augment(views, aug_gen)
            loss = kd3_loss(student, tmodel, head_s, head_t, x, config, mix_gen)
            optimizer_step(opt, loss)
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        record = {"epoch": epoch + 1, "alpha": alpha, "selected": int(keep.sum()), "loss": total / count if count else float("nan")}
        history.append(record)
        bar.set_postfix({"sel": record["selected"], "loss": round(record["loss"], 4)})
        bar.update(1)
    bar.close()
    student.eval()
    final_alpha = _alpha(config, config.epochs)
    student_logits = teacher_logits if final_alpha == 1.0 else _logits(student, images, config.score_batch_size)
    final = select_instances(teacher_logits, student_logits, final_alpha, config.tau)
    stats = {
        "epochs_selected": epochs_selected,
        "final_confidence": final["confidence"].cpu().double().numpy(),
        "final_threshold": final["threshold"].cpu().double().numpy(),
        "final_class": final["predicted"].cpu().numpy().astype(np.int64),
        "kept": (torch.ones(n, dtype=torch.bool) if config.selection == "none" else final["keep"].cpu()).numpy(),
    }
    return student, history, stats


def kd3_loss(student, tmodel, head_s, head_t, x: torch.Tensor, config: KD3Config, mix_gen: torch.Generator) -> torch.Tensor:
    """L = L_FA + m·L_MD (+ kl_weight·KD) on one batch of normalized training views `x`."""
    with torch.no_grad():
        t = tmodel.forward_all(x)
    s_map = student.features(x)
    s_pooled = student.pool(s_map)
    s_logits = student.classifier(s_pooled)
    loss = x.new_zeros(())
    if config.feature_alignment:
        weights = alignment_weights(s_logits, t.logits) if config.weighted_alignment else None
        loss = loss + weighted_feature_alignment(s_map, t.feature_map, weights)
    if config.kl_weight > 0:
        temp = config.kd_temperature
        kl = F.kl_div(F.log_softmax(s_logits / temp, 1), F.log_softmax(t.logits / temp, 1), log_target=True, reduction="batchmean")
        loss = loss + config.kl_weight * temp * temp * kl
    if config.mix_distribution:
        lam, perm = sample_mix(len(x), config.mix_beta, mix_gen)
        x_aug = mix_distribution(x, lam, perm.to(x.device))
        s_aug = student.pool(student.features(x_aug))
        with torch.no_grad():
            t_aug = tmodel.forward_all(x_aug).pooled
        l_md = nt_xent(head_s(s_pooled), head_s(s_aug), config.temperature) + \
            nt_xent(head_t(t.pooled), head_t(t_aug), config.temperature)
        loss = loss + config.mix_weight * l_md
    if not math.isfinite(float(loss.detach())):
        raise InvalidInput("the KD³ loss became NaN or inf", "lower lr")
    return loss
