"""The synthesizer contract: `synthesize(source, teachers, ipc, config, seed) -> DistilledSet`.

A method file states only what is particular to its method (its config dataclass and its
`synthesize`); loading data and teachers, checking them, resuming and writing the file atomically
happen once, in `run_synthesizer`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

import torch

from ddkit.data.base import ImageDataset, Normalization
from ddkit.data.stream import is_streamed
from ddkit.errors import InvalidInput
from ddkit.models.teacher import Teacher
from ddkit.progress import say  # noqa: F401 - the synthesizers' log line, imported from here
from ddkit.registry import Registry
from ddkit.store import DistilledSet
from ddkit.training import predict_logits

SYNTHESIZERS = Registry("synthesizer")


@dataclasses.dataclass
class NoConfig:
    """A method without options."""


class Synthesizer:
    """Base class of every registered synthesizer."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    Config: ClassVar[type] = NoConfig
    min_teachers: ClassVar[int] = 0
    max_teachers: ClassVar[int | None] = None

    def check_teachers(self, teachers: list[Teacher]) -> None:
        n = len(teachers)
        if n < self.min_teachers:
            raise InvalidInput(f"method {self.name} needs at least {self.min_teachers} teacher(s), got {n}",
                               "pass --teacher T (train one with `ddkit teacher train`)")
        if self.max_teachers is not None and n > self.max_teachers:
            raise InvalidInput(f"method {self.name} takes at most {self.max_teachers} teacher(s), got {n}")

    def synthesize(self, source: ImageDataset, teachers: list[Teacher], ipc: int, config, seed: int,
                   device: torch.device, workdir: Path | None = None) -> DistilledSet:
        raise NotImplementedError


def register_synthesizer(cls: type[Synthesizer]) -> type[Synthesizer]:
    """Class decorator: register a synthesizer under `cls.name`."""
    summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
    SYNTHESIZERS.register(cls.name, summary=summary)(cls)
    return cls


def pick_real(source: ImageDataset, positions) -> ImageDataset:
    """The samples at `positions` held in memory, for the few real images a method keeps or starts from.

    A streamed source decodes only those rows (never the whole split), a few dozen per worker process,
    so the result, and every file made from it, is the same whichever path the source took.
    """
    picked = source.subset(positions)
    return picked.materialize(batch_size=32) if is_streamed(picked) else picked


def static_labels(teachers, pixels: torch.Tensor, normalization: Normalization, device) -> torch.Tensor:
    """The ensemble's mean logits on un-augmented pixel images (1/M Σ_m f_m(s)), float32 on CPU."""
    x = normalization.apply(pixels)
    return torch.stack([predict_logits(t.model, x, device=device) for t in teachers]).mean(0)


