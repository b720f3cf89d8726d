"""Cache of reference accuracies (random subsets, full data), one JSON file per (key, seed).

A reference depends only on the dataset, the budget, the protocol recipe, the teachers and the seed,
so it is computed once and reused by every evaluation that needs it. The key hashes the whole
protocol recipe, not just its name, so a changed recipe can never hit a stale entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ddkit.fileio import atomic_output

CACHE_VERSION = 1


def cache_root() -> Path:
    return Path(os.environ.get("DDKIT_CACHE") or Path.home() / ".cache" / "ddkit") / "references"


def reference_key(**parts) -> str:
    blob = json.dumps({"cache_version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _path(key: str, seed: int) -> Path:
    return cache_root() / key / f"seed{seed}.json"


def load_reference(key: str, seed: int) -> float | None:
    path = _path(key, seed)
    try:
        return float(json.loads(path.read_text())["accuracy"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def store_reference(key: str, seed: int, accuracy: float, describe: dict) -> None:
    path = _path(key, seed)
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps({"accuracy": accuracy, "seed": seed, "key": describe}, default=str, indent=1))
