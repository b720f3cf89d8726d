"""Selectors: choose samples from a pool (with a teacher) into a `.sel.h5` file."""

from __future__ import annotations

from pathlib import Path

from ddkit.config import build_config
from ddkit.data import load_dataset
from ddkit.errors import InvalidInput
from ddkit.fileio import check_output
from ddkit.models.teacher import load_teacher
from ddkit.selectors import (
    baselines as _baselines,  # noqa: F401  (registers)
    kd3 as _kd3,  # noqa: F401  (registers)
    pcoreset as _pcoreset,  # noqa: F401  (registers)
)
from ddkit.selectors.base import SELECTORS, SelectionInputs, Selector, SideOutput, register_selector
from ddkit.store import read_selection, write_selection
from ddkit.store.selection import with_class_counts
from ddkit.training import pick_device


def run_selector(method: str, pool: str, teacher_paths: list[str], budget: int, config_overrides: dict | None = None,
                 seed: int = 0, out: str | Path | None = None, overwrite: bool = False, device: str | None = None,
                 labeled: str | Path | None = None, teacher_logits: str | Path | None = None) -> str:
    """Load the pool (a dataset's train split) and teachers, select, write atomically; returns the content hash.

    `labeled` (a `.sel.h5` of the same pool) and `teacher_logits` (precomputed pool logits) go to
    selectors that take them (active-learning selectors); others refuse them with a clear error.
    Side files the method makes (e.g. KD³'s `student_out`) are written after the selection, under
    the same `overwrite`; every output path is checked before any data is loaded.
    """
    selector: Selector = SELECTORS.create(method)
    config = build_config(selector.Config, config_overrides, owner=f"selector {method}")
    for path in [out, *selector.side_paths(config)]:
        check_output(path, overwrite)
    inputs = SelectionInputs(read_selection(labeled) if labeled else None, str(teacher_logits) if teacher_logits else None)
    if inputs.given() and not selector.uses_inputs:
        raise InvalidInput(f"selector {method} does not take {' or '.join(inputs.given())}",
                           "use an active-learning selector (pcoreset, entropy, ...) or drop the option")
    dev = pick_device(device)
    data = load_dataset(pool, "train")
    teachers = [load_teacher(p, dev) for p in teacher_paths]
    for t in teachers:
        t.check_fits(data.info)
    selection, outputs = selector.select_with_outputs(data, teachers, budget, config, seed, dev, inputs)
    digest = write_selection(out, with_class_counts(selection, data), overwrite=overwrite)
    write_side_outputs(outputs, overwrite)
    return digest


def write_side_outputs(outputs: list[SideOutput], overwrite: bool = False) -> None:
    """Write the side files a selector made (each atomically)."""
    for output in outputs:
        output.write(output.path, overwrite)


__all__ = ["SELECTORS", "SelectionInputs", "Selector", "SideOutput", "register_selector", "run_selector", "write_side_outputs"]
