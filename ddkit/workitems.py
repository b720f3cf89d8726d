"""A resumable store of finished work items, for synthesizers whose work splits into independent items.

A synthesizer that optimizes many independent things (INFER: one compensator per (group, teacher);
NRR-DD: one image per (class, slot)) saves each finished item here as soon as it is done. A run that
is killed and started again with `--resume` loads the finished items and computes only the rest;
since every item's randomness comes from `derive_seed(root seed, item id)`, the result equals an
uninterrupted run.

Layout of the work folder (`OUT.work/` from `run_synthesizer`):
- `manifest.json`: the identity of the run (method, config, seed, budget, data, teachers). Resuming
  with anything different is refused, so items of two different runs are never mixed.
- `<key>.npz`: one finished item, its named arrays (numpy, `allow_pickle=False`), written atomically.

Without a folder (`root=None`, e.g. a library call without a work folder) the store keeps nothing.

Under torchrun, `run` gives each rank its share of the items (round robin by key order); every rank
saves its items into the shared folder, and after a barrier every rank loads all of them, so rank 0
writes the same file a single process would.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from ddkit import distributed
from ddkit.errors import FileFormatError, InvalidInput, OutputExists
from ddkit.fileio import atomic_output
from ddkit.progress import progress

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$")
MANIFEST = "manifest.json"


def claim_workdir(out, resume: bool, overwrite: bool, is_main: bool = True) -> Path:
    """`OUT.work/`, the work folder of a resumable run writing `out`. A folder left by an interrupted
    run is kept for `resume`, discarded (by rank 0) with `overwrite`, and otherwise refused: starting
    over silently would throw its finished work away."""
    workdir = Path(f"{out}.work")
    if workdir.is_dir() and not resume:
        if any(workdir.iterdir()) and not overwrite:
            raise OutputExists(f"{workdir} holds the finished work of an interrupted run writing {out}",
                               "pass --resume to continue it (same settings), or --overwrite to start over")
        if is_main:
            shutil.rmtree(workdir, ignore_errors=True)
    return workdir


def _canonical(identity: dict) -> dict:
    """`identity` as it reads back from JSON (tuples become lists), so comparisons are exact."""
    try:
        return json.loads(json.dumps(identity, sort_keys=True))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"work-item identity must be JSON-able: {exc}") from None


class WorkItemStore:
    """Finished work items of one run, keyed by a short name such as `g0003-t01`."""

    def __init__(self, root: str | Path | None, identity: dict):
        self.root = None if root is None else Path(root)
        self.identity = _canonical(identity)
        if self.root is None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        manifest = self.root / MANIFEST
        if manifest.exists():
            try:
                found = json.loads(manifest.read_text())
            except (OSError, ValueError) as exc:
                raise FileFormatError(f"{manifest} is unreadable ({exc})", f"delete {self.root} and run again") from None
            if found != self.identity:
                changed = sorted(k for k in set(found) | set(self.identity) if found.get(k) != self.identity.get(k))
                raise InvalidInput(
                    f"{self.root} holds the work of a different run (differs in: {', '.join(changed)})",
                    "resume with exactly the same settings, or run without --resume to start over",
                )
        else:
            with atomic_output(manifest, overwrite=True) as tmp:
                tmp.write_text(json.dumps(self.identity, sort_keys=True, indent=1))

    def _path(self, key: str) -> Path:
        if not _KEY.match(key):
            raise ValueError(f"work-item key {key!r} is not a plain file name")
        return self.root / f"{key}.npz"

    def has(self, key: str) -> bool:
        return self.root is not None and self._path(key).exists()

    def done(self, keys) -> list[str]:
        """Which of `keys` are finished."""
        return [k for k in keys if self.has(k)]

    def save(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        """Record a finished item (atomically: a kill leaves the item either whole or absent)."""
        if self.root is None:
            return
        with atomic_output(self._path(key), overwrite=True) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **{name: np.asarray(a) for name, a in arrays.items()})

    def discard(self, key: str) -> None:
        """Forget a finished item that a newer one supersedes (e.g. an older checkpoint)."""
        if self.root is not None:
            self._path(key).unlink(missing_ok=True)

    def load(self, key: str) -> dict[str, np.ndarray]:
        path = self._path(key)
        try:
            with np.load(path, allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
        except (OSError, ValueError) as exc:
            raise FileFormatError(f"work item {path} is unreadable ({exc})", f"delete it (or {self.root}) and resume") from None

    def run(self, keys: list[str], compute: Callable[[str], dict[str, np.ndarray]], desc: str,
            on_done: Callable[[str, dict], None] | None = None) -> dict[str, dict[str, np.ndarray]]:
        """Every item of `keys`: finished ones are loaded, this rank's unfinished ones computed and
        saved (a progress bar counts them), the other ranks' collected after a barrier."""
        w = distributed.world()
        if w.size > 1 and self.root is None:
            raise InvalidInput("a distributed run needs a work folder to exchange work items")
        done = set(self.done(keys))
        mine = [k for k in distributed.shard(keys, w) if k not in done]
        results: dict[str, dict[str, np.ndarray]] = {}
        bar = progress(total=len(mine), desc=desc)
        for key in mine:
            results[key] = compute(key)
            self.save(key, results[key])
            if on_done is not None:
                on_done(key, results[key])
            bar.update(1)
        bar.close()
        distributed.barrier()
        return {key: results[key] if key in results else self.load(key) for key in keys}
