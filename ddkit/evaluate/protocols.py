"""Evaluation protocols: named, versioned recipes for training a student on a train set.

A protocol fixes everything that decides the reported number — student, optimizer, schedule, step
count, batch size, augmentation, mixing, label source and temperature — so two results under the
same `name@version` are comparable. A protocol that has produced benchmark numbers is frozen:
changing it means registering a new version.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from ddkit.errors import InvalidInput
from ddkit.registry import Registry
from ddkit.training import OptimConfig

PROTOCOLS = Registry("protocol")

LABEL_SOURCES = ("hard", "teacher", "stored")


@dataclass(frozen=True)
class Protocol:
    name: str
    version: int
    student: str
    student_kwargs: dict
    optim: OptimConfig
    batch_size: int
    steps: int = 0  # a fixed optimizer-step budget (CPU family), or
    epochs: int = 0  # passes over the train set (paper family); exactly one is non-zero
    augmentation: str = "crop-flip"
    mix: str = "none"  # none | mixup | cutmix
    label_source: str = "hard"
    temperature: float = 1.0
    t_squared: bool = False  # multiply the KL term by T² (Hinton); the INFER/RDED recipes do not
    family: str = "cpu"
    summary: str = ""
    reported: str = "final-step test accuracy"
    extra: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.name}@{self.version}"

    def total_steps(self, train_size: int) -> int:
        """Optimizer steps for a train set of `train_size` instances."""
        if self.steps:
            return self.steps
        return self.epochs * max(1, train_size // min(self.batch_size, train_size))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["optim"] = self.optim.to_dict()
        d["id"] = self.id
        return d

    def with_overrides(self, **changes) -> "Protocol":
        """A derived protocol (e.g. fewer steps for a smoke test); its name says it is not the original."""
        if not changes:
            return self
        tag = ",".join(f"{k}={v}" for k, v in sorted(changes.items()))
        return replace(self, name=f"{self.name}[{tag}]", **changes)


def _register(p: Protocol) -> Protocol:
    if (p.steps > 0) == (p.epochs > 0):
        raise InvalidInput(f"protocol {p.name}: set exactly one of steps and epochs")
    if p.label_source not in LABEL_SOURCES:
        raise InvalidInput(f"protocol {p.name}: unknown label source {p.label_source!r}")
    PROTOCOLS.register(p.name, summary=p.summary, family=p.family, label_source=p.label_source)(lambda p=p: p)
    return p


def get_protocol(name: str) -> Protocol:
    """A registered protocol by name (an optional `@version` must match the registered one)."""
    base, _, version = name.partition("@")
    protocol = PROTOCOLS.create(base)
    if version and int(version) != protocol.version:
        raise InvalidInput(
            f"protocol {base} is at version {protocol.version}, version {version} was asked",
            f"use {protocol.id} (older versions are kept only under their own names)",
        )
    return protocol


# -- CPU family: a width-32 instance-norm ConvNet-3, a fixed step budget, minutes on 2 cores --------
_CPU_STUDENT = {"depth": 3, "width": 32, "norm": "instance"}
_DC_SGD = OptimConfig(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, schedule="step")
_SOFT_ADAMW = OptimConfig(optimizer="adamw", lr=1e-3, momentum=0.0, weight_decay=0.01, schedule="cosine")

HARD_CPU = _register(Protocol(
    name="hard-cpu", version=1, student="convnet", student_kwargs=_CPU_STUDENT, optim=_DC_SGD,
    steps=1000, batch_size=64, augmentation="crop-flip", label_source="hard",
    summary="ConvNet-3 w32 IN, hard labels, SGD 0.01 (DC recipe), 1000 steps × 64, crop+flip",
))
TEACHER_CPU = _register(Protocol(
    name="teacher-cpu", version=1, student="convnet", student_kwargs=_CPU_STUDENT, optim=_SOFT_ADAMW,
    steps=1000, batch_size=64, augmentation="resized-crop-flip", mix="cutmix", label_source="teacher",
    temperature=20.0,
    summary="ConvNet-3 w32 IN, on-the-fly teacher KL at T=20 on CutMix views (RDED regime), AdamW, 1000 steps",
))
STORED_CPU = _register(Protocol(
    name="stored-cpu", version=1, student="convnet", student_kwargs=_CPU_STUDENT, optim=_SOFT_ADAMW,
    steps=1000, batch_size=64, augmentation="crop-flip", mix="mixup", label_source="stored",
    temperature=30.0,
    summary="ConvNet-3 w32 IN, the file's stored labels (logits: mixed with mixup's λ, KL at T=30), AdamW, 1000 steps",
))
DYNAMIC_CPU = _register(Protocol(
    name="dynamic-cpu", version=1, student="convnet", student_kwargs=_CPU_STUDENT, optim=_SOFT_ADAMW,
    steps=1000, batch_size=64, augmentation="crop-flip", mix="mixup", label_source="teacher",
    temperature=30.0,
    summary="INFER+Dyn: stored-cpu's recipe, but the teacher ensemble relabels every crop-flip+mixup view (KL at T=30)",
))
DBR_CPU = _register(Protocol(
    name="dbr-cpu", version=1, student="convnet", student_kwargs=_CPU_STUDENT, optim=_SOFT_ADAMW,
    steps=1000, batch_size=64, augmentation="resized-crop-flip", mix="cutmix", label_source="stored",
    extra={"scheme": "dbr", "views": "dbr-cpu@1", "alpha_dbr": 1.0},
    summary="ConvNet-3 w32 IN, NRR-DD's DBR: replays the file's CutMix views (teacher-cpu regime), "
            "mixed CE + |d_S − d_T| per view (α=1), AdamW, 1000 steps",
))

# -- paper family (GPU): the published recipes --------------------------------------------------
_PAPER_CONVNET = {"depth": 3, "width": 128, "norm": "instance"}
HARD_PAPER = _register(Protocol(
    name="hard-paper", version=1, student="convnet", student_kwargs=_PAPER_CONVNET, optim=_DC_SGD,
    epochs=1000, batch_size=256, augmentation="dsa", label_source="hard", family="paper",
    summary="DC/DSA/DM/MTT: ConvNet-128 IN, hard labels, DSA augmentation, SGD 0.01, 1000 epochs",
))
TEACHER_PAPER = _register(Protocol(
    name="teacher-paper", version=1, student="resnet18", student_kwargs={}, optim=_SOFT_ADAMW,
    epochs=300, batch_size=64, augmentation="resized-crop-flip", mix="cutmix", label_source="teacher",
    temperature=20.0, family="paper",
    summary="SRe2L/RDED: ResNet-18-modified, teacher KL at T=20 on CutMix views, AdamW 1e-3, 300 epochs",
))
STORED_PAPER = _register(Protocol(
    name="stored-paper", version=1, student="resnet18", student_kwargs={}, optim=_SOFT_ADAMW,
    epochs=400, batch_size=64, augmentation="crop-flip", mix="mixup", label_source="stored",
    temperature=30.0, family="paper",
    summary="INFER: ResNet-18-modified, stored logits mixed with mixup's λ, KL at T=30, AdamW 1e-3, 400 epochs",
))
