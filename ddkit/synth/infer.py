"""INFER (ICLR 2025): K real images per class plus Universal Feature Compensators, stored as parts.

For every group of C real images (one per class) and every BN teacher m, one image-sized additive
tensor u is learned so that teacher m classifies all C images of the group + u correctly while the
batch statistics at its BatchNorm layers match the running ones (`ddkit.synth.bn_stats`). One UFC
buys C new training instances, so a budget of `ipc` stored image-equivalents per class keeps
`K = int(ipc / (M/C + 1))` real images per class and K·M UFCs, which expand to K·(M+1) instances
per class. The file stores the real images, the UFCs (float32, lossless) and which group each UFC
belongs to in `/composite`; the reader composes `clamp(image + u, 0, 1)` when asked.

Where u lives. The teachers see normalized images; the file stores pixels in [0, 1]. The optimized
variable v lives in the teachers' normalized space, as in the official code, so Adam's lr 0.25 means
the same step there (a step of 0.25 in normalized units is 0.25·std in pixels). The stored
compensator is `u = v·std` (per channel) in pixel units, and the forward pass feeds the teacher
`normalize(base + u)`, which equals `normalize(base) + v` exactly; so the reader's
`clamp(base + u, 0, 1)` is the official clamp of the composite to the valid normalized range.

Labels: `labels=static` stores the teacher ensemble's mean logits on every un-augmented instance (as
the reader composes it) in float16 (`/soft/logits`); train under `stored-cpu`. `labels=dynamic`
stores no labels: train under a teacher protocol (`dynamic-cpu@1`; under @2, `teacher-cpu`) with the same teachers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ddkit.data.base import Normalization, class_balanced_indices
from ddkit.errors import InvalidInput
from ddkit.seeding import generator
from ddkit.store import AdditiveComposite, DistilledSet, LogitsLabels
from ddkit.store.reader import to_unit_float
from ddkit.synth.base import Synthesizer, pick_real, register_synthesizer, say as _say, static_labels
from ddkit.synth.bn_stats import BNStatisticsLoss
from ddkit.training import optimizer_step
from ddkit.workitems import WorkItemStore

LABEL_MODES = ("static", "dynamic")


@dataclass
class InferConfig:
    """The spec's CIFAR defaults (T=1000, r_bn=1, jitter 4, Adam 0.25 with betas (0.5, 0.9))."""

    iterations: int = 1000  # T: Adam steps per UFC, cosine LR decay to 0 over them, no warm-up
    lr: float = 0.25
    beta1: float = 0.5
    beta2: float = 0.9
    r_bn: float = 1.0  # weight of the BN-statistics loss
    first_bn_weight: float = 10.0  # the first BN layer counts 10× in L_BN
    jitter: int = 4  # random roll of 0..jitter pixels in H and in W each step (as the official code)
    labels: str = "static"  # static: stored ensemble logits; dynamic: no stored labels (teacher protocol)
    clamp_in_loop: bool = False  # feed the teacher clamp(base + u) while optimizing (official: unclamped)
    flip: bool = False  # also a random horizontal flip each step (the spec's ImageNet recipe; CIFAR: off)

    def check(self, image_hw: tuple[int, int]) -> None:
        if self.labels not in LABEL_MODES:
            raise InvalidInput(f"infer option labels={self.labels!r} is unknown", f"use one of {', '.join(LABEL_MODES)}")
        if self.iterations < 1:
            raise InvalidInput(f"infer option iterations={self.iterations} must be at least 1")
        if self.lr <= 0 or not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise InvalidInput(f"infer needs lr > 0 and betas in [0, 1), got lr={self.lr}, betas=({self.beta1}, {self.beta2})")
        if self.r_bn < 0 or self.first_bn_weight < 0:
            raise InvalidInput(f"infer needs r_bn ≥ 0 and first_bn_weight ≥ 0, got {self.r_bn}, {self.first_bn_weight}")
        if not 0 <= self.jitter < min(image_hw):
            raise InvalidInput(f"infer option jitter={self.jitter} must be in [0, {min(image_hw)}) for {image_hw} images")


# -- the budget ----------------------------------------------------------------------------------


def real_per_class(ipc: int, num_classes: int, num_teachers: int) -> int:
    """K = int(ipc / (M/C + 1)), computed exactly as floor(ipc·C / (M + C)).

    Integer arithmetic gives the formula's exact value; the floating-point expression of the
    official code falls one short where ipc·C/(M+C) is a whole number that 1 + M/C cannot represent
    (e.g. ipc 33, M 1, C 10: exactly 30, in floats 29.999…, so 29).
    """
    if ipc < 1 or num_classes < 1 or num_teachers < 0:
        raise InvalidInput(f"bad budget: ipc {ipc}, {num_classes} classes, {num_teachers} teachers")
    return (ipc * num_classes) // (num_teachers + num_classes)


def check_budget(ipc: int, num_classes: int, num_teachers: int) -> int:
    """K for this budget, or a refusal (K = 0) that says which budget or teacher count would work."""
    k = real_per_class(ipc, num_classes, num_teachers)
    if k >= 1:
        return k
    c, m = num_classes, num_teachers
    min_ipc = -(-(m + c) // c)  # smallest ipc with ipc·C ≥ M + C
    max_teachers = c * (ipc - 1)  # most teachers with ipc·C ≥ M + C
    fix = f"use --ipc {min_ipc} or more"
    if max_teachers >= 1:
        fix += f", or at most {max_teachers} teacher(s) at ipc {ipc}"
    raise InvalidInput(
        f"INFER keeps K = int(ipc/(M/C + 1)) = int({ipc}/({m}/{c} + 1)) = 0 real images per class "
        f"with ipc {ipc}, {c} classes and {m} teacher(s): nothing to compensate",
        fix,
    )


# -- one work item: the UFC of one (group, teacher) ----------------------------------------------


def optimize_ufc(model: torch.nn.Module, group: torch.Tensor, normalization: Normalization, cfg: InferConfig,
                 gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    """The compensator u (1×C_in×H×W, pixel units, float32 on the group's device) for one group.

    `group` holds C pixel images in [0, 1], row i of class i. Each of `cfg.iterations` Adam steps
    rolls `group + u` by a random offset (and mirrors it half the time with `cfg.flip`), and
    minimizes CE(f(x), [0..C−1]) + r_bn·L_BN(x) over the shared u; the LR follows a cosine from
    `lr` to 0. `gen` (CPU) draws the roll offsets and the flips.
    Returns u and the last step's loss terms.
    """
    device = group.device
    c_in = group.shape[1]
    std = torch.tensor(normalization.std, dtype=torch.float32, device=device).view(1, c_in, 1, 1)
    v = torch.zeros((1, *group.shape[1:]), device=device, requires_grad=True)  # normalized units
    targets = torch.arange(len(group), device=device)
    opt = torch.optim.Adam([v], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.iterations, eta_min=0.0)
    last = {}
    with BNStatisticsLoss(model, first_layer_weight=cfg.first_bn_weight) as bn:
        for _ in range(cfg.iterations):
            x = group + v * std
            if cfg.clamp_in_loop:
                x = x.clamp(0.0, 1.0)
            dy, dx = (int(s) for s in torch.randint(0, cfg.jitter + 1, (2,), generator=gen))
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            if cfg.flip and bool(torch.rand(1, generator=gen) < 0.5):
                x = x.flip(3)
            ce = F.cross_entropy(model(normalization.apply(x)), targets)
            bn_loss = bn.loss()
            loss = ce + cfg.r_bn * bn_loss
            optimizer_step(opt, loss, sched)
            last = {"ce": ce.detach().item(), "bn": bn_loss.detach().item()}
    return (v.detach() * std), last


# -- the synthesizer -----------------------------------------------------------------------------


@register_synthesizer
class Infer(Synthesizer):
    """INFER: K real images per class + universal feature compensators (UFCs), composed on read."""

    name = "infer"
    version = "1"
    Config = InferConfig
    min_teachers = 1

    def check_teachers(self, teachers) -> None:
        super().check_teachers(teachers)
        for t in teachers:
            t.require_batchnorm()

    @staticmethod
    def item_key(group: int, teacher: int) -> str:
        return f"g{group:05d}-t{teacher:02d}"

    def synthesize(self, source, teachers, ipc, config: InferConfig, seed, device, workdir=None):
        self.check_teachers(teachers)  # also when called as a library, not only via run_synthesizer
        info = source.info
        num_classes, m = info.num_classes, len(teachers)
        config.check(tuple(info.image_shape[1:]))
        k = check_budget(ipc, num_classes, m)
        _say(f"infer: ipc {ipc}, {num_classes} classes, M = {m} teacher(s) -> K = int({ipc}/({m}/{num_classes} + 1)) = {k} "
             f"real images per class + {k * m} UFCs = {k * num_classes + k * m} stored image-equivalents "
             f"(≤ {ipc * num_classes}), {k * (m + 1)} training instances per class")

        # The K·C real images, class-major (row c·K + k is class c's image of group k).
        picked = pick_real(source, class_balanced_indices(source, k, seed, salt="infer-groups"))
        derived = {"k_per_class": k, "num_teachers": m, "instances_per_class": k * (m + 1),
                   "ufcs": k * m, "ufc_space": "pixel units (optimized in normalized units: u = v·std)",
                   "source_ids": picked.ids.tolist()}
        dset = DistilledSet.from_source(
            source, method=self.name, method_version=self.version,
            config={**dataclasses.asdict(config), **derived}, seed=seed,
            images=picked.images, labels=picked.labels, ipc=ipc, teachers=[t.header.summary() for t in teachers],
        )
        # The base pixels exactly as the reader will see them (after the stored dtype's rounding).
        base = to_unit_float(dset.stored_images()).to(device)
        members = np.arange(num_classes)[None, :] * k + np.arange(k)[:, None]  # members[g] = rows of group g

        # What a UFC depends on; the label mode does not change any work item.
        ufc_settings = {k: v for k, v in dataclasses.asdict(config).items() if k != "labels"}
        store = WorkItemStore(workdir, {
            "method": self.name, "method_version": self.version, "config": ufc_settings, "seed": seed,
            "ipc": ipc, "dataset": info.name, "source_ids_sha256": source.ids_sha256(),
            "teachers": [t.header.tensors_sha256 for t in teachers],
        })
        keys = [(g, t, self.item_key(g, t)) for g in range(k) for t in range(m)]
        done = store.done(key for _, _, key in keys)
        if done:
            _say(f"infer: resuming, {len(done)} of {len(keys)} (group, teacher) work items already finished")
        by_key = {key: (g, t) for g, t, key in keys}

        def compute(key: str) -> dict[str, np.ndarray]:
            g, t = by_key[key]
            gen = generator(seed, "infer-ufc", g, t)
            u, last = optimize_ufc(teachers[t].model, base[torch.from_numpy(members[g])], info.normalization, config, gen)
            return {"u": u[0].cpu().numpy(), "loss": np.array([last["ce"], last["bn"]], np.float32)}

        results = store.run([key for _, _, key in keys], compute, desc="infer UFCs (group, teacher)")

        rows = np.array([[g, t] for g, t, _ in keys], dtype=np.int64).reshape(-1, 2)
        dset.composite = AdditiveComposite(
            compensators=np.stack([results[key]["u"] for _, _, key in keys]),
            members=members[rows[:, 0]],
            extra={"group_of": rows[:, 0], "teacher_of": rows[:, 1],
                   "final_loss": np.stack([results[key]["loss"] for _, _, key in keys])},
        )
        if config.labels == "static":
            pixels = self.instance_pixels(base.cpu(), dset.composite)
            logits = static_labels(teachers, pixels, info.normalization, device)
            dset.soft["logits"] = LogitsLabels(logits, meta={
                "recipe": "mean of the teachers' logits on the un-augmented instances (INFER static labels)",
                "teachers": [t.header.tensors_sha256 for t in teachers],
                "train_with": "stored-cpu (logits mixed with mixup's λ, KL at T=30)",
            })
        return dset

    @staticmethod
    def instance_pixels(base: torch.Tensor, composite: AdditiveComposite) -> torch.Tensor:
        """Every instance's pixels in the reader's order, composed exactly as the reader composes them."""
        offsets = np.arange(composite.num_instances)
        rows, compensator_rows = composite.split(offsets)
        return torch.cat([base, composite.compose(base[torch.from_numpy(rows)], compensator_rows)])
