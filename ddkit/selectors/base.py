"""The selector contract: `select(pool, teacher, budget, config, seed) -> Selection`.

A selector chooses sample ids from a pool; the ids are the samples KEPT. A method file states only
its method; loading the pool and teachers, checking them and writing the `.sel.h5` file atomically
happen once, in `run_selector`.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from ddkit.data.base import ImageDataset
from ddkit.errors import InvalidInput
from ddkit.models.teacher import Teacher
from ddkit.registry import Registry
from ddkit.store import Selection

SELECTORS = Registry("selector")


@dataclasses.dataclass
class SelectionInputs:
    """Optional inputs beyond the pool and teachers, for selectors that declare `uses_inputs`.

    `labeled`: the already-labeled samples (a Selection of the same pool; active learning's L, the
    initial centers of k-center rules). `teacher_logits`: path of precomputed teacher logits for the
    pool (`.npy` N×C in pool order, or `.h5` with `logits` and `ids`), e.g. from a VLM run elsewhere.
    """

    labeled: Selection | None = None
    teacher_logits: str | None = None

    def given(self) -> list[str]:
        return [name for name, flag in (("--labeled", self.labeled is not None), ("--teacher-logits", self.teacher_logits)) if flag]


class Selector:
    """Base class of every registered selector.

    Selectors with `uses_inputs = True` take a keyword `inputs: SelectionInputs | None` in `select`.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    Config: ClassVar[type]
    min_teachers: ClassVar[int] = 0
    uses_inputs: ClassVar[bool] = False

    def check_budget(self, pool: ImageDataset, budget: int) -> None:
        if budget < 1 or budget > len(pool):
            raise InvalidInput(f"budget {budget} is not in [1, {len(pool)}] (the pool size)", "choose a budget the pool can fill")

    def select(self, pool: ImageDataset, teachers: list[Teacher], budget: int, config, seed: int,
               device: torch.device) -> Selection:
        raise NotImplementedError


def register_selector(cls: type[Selector]) -> type[Selector]:
    summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
    SELECTORS.register(cls.name, summary=summary)(cls)
    return cls


@dataclasses.dataclass
class RandomConfig:
    balanced: bool = True  # draw budget/C per class (uses the pool's labels); False: uniform over the pool
