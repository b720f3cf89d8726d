"""Selectors: choose samples from a pool (with a teacher) into a `.sel.h5` file."""

from __future__ import annotations

from pathlib import Path

from ddkit.config import build_config
from ddkit.data import load_dataset
from ddkit.fileio import check_output
from ddkit.models.teacher import load_teacher
from ddkit.selectors.base import SELECTORS, Selector, register_selector
from ddkit.selectors import baselines as _baselines  # noqa: F401  (registers)
from ddkit.store import write_selection
from ddkit.training import pick_device


def run_selector(method: str, pool: str, teacher_paths: list[str], budget: int, config_overrides: dict | None = None,
                 seed: int = 0, out: str | Path | None = None, overwrite: bool = False, device: str | None = None) -> str:
    """Load the pool (a dataset's train split) and teachers, select, write atomically; returns the content hash."""
    selector: Selector = SELECTORS.create(method)
    config = build_config(selector.Config, config_overrides, owner=f"selector {method}")
    check_output(out, overwrite)
    dev = pick_device(device)
    data = load_dataset(pool, "train")
    teachers = [load_teacher(p, dev) for p in teacher_paths]
    for t in teachers:
        t.check_fits(data.info)
    selection = selector.select(data, teachers, budget, config, seed, dev)
    return write_selection(out, selection, overwrite=overwrite)


__all__ = ["SELECTORS", "Selector", "register_selector", "run_selector"]
