"""Synthesizers: a labeled dataset plus trained teacher(s) → a compact distilled `.ddk.h5` file."""

from __future__ import annotations

import shutil
from pathlib import Path

from ddkit import distributed
from ddkit.config import build_config
from ddkit.data import load_dataset
from ddkit.fileio import check_output
from ddkit.models.teacher import load_teacher
from ddkit.store import write_distilled
from ddkit.synth import (
    baselines as _baselines,  # noqa: F401  (registers)
    coresets as _coresets,  # noqa: F401  (registers)
    dm as _dm,  # noqa: F401  (registers)
    infer as _infer,  # noqa: F401  (registers)
    mtt as _mtt,  # noqa: F401  (registers)
    nrr_dd as _nrr_dd,  # noqa: F401  (registers)
)
from ddkit.synth.base import SYNTHESIZERS, Synthesizer, register_synthesizer
from ddkit.training import pick_device
from ddkit.workitems import claim_workdir


def run_synthesizer(method: str, dataset: str, teacher_paths: list[str], ipc: int, config_overrides: dict | None = None,
                    seed: int = 0, out: str | Path | None = None, overwrite: bool = False, resume: bool = False,
                    device: str | None = None) -> str:
    """Load, check, synthesize, write atomically; returns the file's content_sha256.

    Work in progress of a resumable method lives in `OUT.work/` beside the output and is removed
    once the file is written. Under torchrun every rank computes its share of the work items into
    that folder and rank 0 alone writes the file (other ranks return its hash too).
    """
    synth: Synthesizer = SYNTHESIZERS.create(method)
    config = build_config(synth.Config, config_overrides, owner=f"method {method}",
                          context={"ipc": ipc, "dataset": dataset})  # presets may depend on the budget
    check_output(out, overwrite)  # fail before the work, not after
    dev = pick_device(device)
    w = distributed.init(dev)
    source = load_dataset(dataset, "train")
    teachers = [load_teacher(p, dev) for p in teacher_paths]
    for t in teachers:
        t.check_fits(source.info)
    synth.check_teachers(teachers)
    workdir = claim_workdir(out, resume, overwrite, w.is_main)
    distributed.barrier()
    dset = synth.synthesize(source, teachers, ipc, config, seed, dev, workdir)
    if not w.is_main:
        distributed.barrier()  # wait for rank 0's file
        return ""
    digest = write_distilled(out, dset, overwrite=overwrite)
    shutil.rmtree(workdir, ignore_errors=True)
    distributed.barrier()
    return digest


__all__ = ["SYNTHESIZERS", "Synthesizer", "register_synthesizer", "run_synthesizer"]
