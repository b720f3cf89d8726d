"""The selector contract: `select(pool, teachers, budget, config, seed, device, inputs) -> Selection`.

A selector chooses sample ids from a pool; the ids are the samples KEPT. A method file states only
its method; loading the pool and teachers, checking them and writing the `.sel.h5` file (and any
side files the method makes, see `SideOutput`) atomically happen once, in `run_selector`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar

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


@dataclasses.dataclass
class SideOutput:
    """A file a selector makes beside its selection (e.g. KD³'s trained student): `write(path,
    overwrite)` writes it atomically. `run_selector` checks every such path before any work (see
    `Selector.side_paths`) and writes the files after the selection."""

    path: str
    write: Callable[[str, bool], None]


class Selector:
    """Base class of every registered selector.

    Every selector has the one `select` signature. `inputs` (--labeled, --teacher-logits) is given
    only to selectors with `uses_inputs = True`; `run_selector` refuses it for the others.
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
               device: torch.device, inputs: SelectionInputs | None = None) -> Selection:
        raise NotImplementedError

    def side_paths(self, config) -> list[str]:
        """The side files `config` asks for (none by default), checked before any work is done."""
        return []

    def select_with_outputs(self, pool: ImageDataset, teachers: list[Teacher], budget: int, config, seed: int,
                            device: torch.device, inputs: SelectionInputs | None = None
                            ) -> tuple[Selection, list[SideOutput]]:
        """`select` and the side files it made, still unwritten (`run_selector` writes them)."""
        return self.select(pool, teachers, budget, config, seed, device, inputs), []


def register_selector(cls: type[Selector]) -> type[Selector]:
    summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
    SELECTORS.register(cls.name, summary=summary)(cls)
    return cls


@dataclasses.dataclass
class RandomConfig:
    balanced: bool = True  # draw budget/C per class (uses the pool's labels); False: uniform over the pool
