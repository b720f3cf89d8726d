"""The pool-logits file (`ddkit.pool-logits`): a teacher's logits on a pool, computed once.

Active-learning selectors read precomputed logits (`--teacher-logits`) from such a file, from a
plain `.npy` array in pool order, or from a `ddkit pool score` file; rows stored with sample ids
are matched to the pool by id, and a stored pool fingerprint is checked.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import torch

from ddkit.data.base import ImageDataset
from ddkit.errors import FileFormatError, IncompatibleError, InvalidInput
from ddkit.fileio import atomic_output, attr_text, sha256_file
from ddkit.h5safe import open_hdf5
from ddkit.pools.embed import dataset_outputs
from ddkit.pools.scores import SCORES_FORMAT
from ddkit.store.schema import load_json
from ddkit.store.selection import ids_to_positions


def teacher_pool_logits(teacher, pool: ImageDataset, device: torch.device | None = None) -> torch.Tensor:
    """A loaded teacher's logits on the pool's clean, normalized images (N×C, float32, CPU), in one
    streamed pass (`pools.embed.dataset_outputs`); the teacher runs where it was loaded (`device`)."""
    if device is not None:
        teacher.model.to(device)
    return dataset_outputs(teacher, pool)[0]


def save_teacher_logits(path: str | os.PathLike, logits, pool: ImageDataset, overwrite: bool = False) -> None:
    """Write precomputed pool logits (`logits` N×C, rows in pool order) with the pool's ids and fingerprint."""
    logits = np.asarray(logits, dtype=np.float32)
    check_teacher_logits(logits, pool, str(path))
    with atomic_output(path, overwrite) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("logits", data=logits)
            f.create_dataset("ids", data=pool.ids.numpy().astype(np.int64))
            f.attrs["format"] = "ddkit.pool-logits"
            f.attrs["pool_fingerprint"] = pool.fingerprint()
            f.attrs["pool"] = f"{pool.info.name}/{pool.split}"


def check_teacher_logits(logits: np.ndarray, pool: ImageDataset, source: str) -> None:
    if logits.ndim != 2:
        raise InvalidInput(f"teacher logits in {source} must be N×C, got shape {logits.shape}",
                           "store one row of class logits per pool sample")
    if len(logits) != len(pool):
        raise IncompatibleError(
            f"teacher logits in {source} have {len(logits)} rows but the pool {pool.info.name} ({pool.split}) "
            f"has {len(pool)} samples",
            "compute the logits on exactly this pool (or store an `ids` dataset so rows can be matched)",
        )
    if logits.shape[1] != pool.num_classes:
        raise IncompatibleError(
            f"teacher logits in {source} have {logits.shape[1]} classes but the pool has {pool.num_classes}",
            "compute the logits over the pool's class list, in its order",
        )
    if not np.isfinite(logits).all():
        raise InvalidInput(f"teacher logits in {source} contain NaN or inf", "recompute them")


def load_teacher_logits(path: str | os.PathLike, pool: ImageDataset) -> tuple[torch.Tensor, dict]:
    """Precomputed pool logits from `.npy` (N×C, pool order) or `.h5` (`logits` and optional `ids`).

    Returns (N×C float32 tensor in pool order, a teacher record for the selection file). Counts,
    class counts, ids and (when stored) the pool fingerprint are checked against `pool`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"teacher logits file {path} does not exist",
                              "compute the pool logits first (save_teacher_logits)")
    ids, teacher = None, None
    if path.suffix == ".npy":
        try:
            logits = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise FileFormatError(f"{path} is not a plain numpy array ({exc})",
                                  "save the logits with numpy.save, without pickles") from None
    elif path.suffix in (".h5", ".hdf5"):
        try:
            with open_hdf5(path, what="teacher logits file") as f:
                if "logits" not in f:
                    raise FileFormatError(f"{path} has no `logits` dataset",
                                          "store the N×C logits as /logits (and the sample ids as /ids)")
                logits = f["logits"][()]
                ids = f["ids"][()] if "ids" in f else None
                stored = f.attrs.get("pool_fingerprint")
                teacher = _scores_teacher(f)
        except OSError as exc:
            raise FileFormatError(f"{path} is not a readable HDF5 file ({exc})", "re-create it") from None
        if stored is not None and ids is not None and len(ids) == len(pool):
            stored = attr_text(stored)
            if stored != pool.fingerprint():
                raise IncompatibleError(f"teacher logits in {path} were computed on a different pool "
                                        f"(fingerprint {stored[:12]}…)",
                                        "compute the logits on this pool")
    else:
        raise FileFormatError(f"teacher logits file {path} must be .npy or .h5",
                              "save N×C logits with numpy.save or save_teacher_logits")
    if not np.issubdtype(logits.dtype, np.floating):
        raise InvalidInput(f"teacher logits in {path} have dtype {logits.dtype}, expected floats")
    if ids is not None:
        logits = _rows_for_pool(logits, np.asarray(ids, np.int64), pool, path)
    logits = logits.astype(np.float32)
    check_teacher_logits(logits, pool, str(path))
    if teacher is not None:  # a `ddkit pool score` file names its teacher: record that, not a hash of the file
        record = {**teacher, "logits_from": path.name, "num_classes": int(logits.shape[1])}
    else:
        record = {"arch": "precomputed-logits", "sha256": sha256_file(path), "path": path.name,
                  "num_classes": int(logits.shape[1])}
    return torch.from_numpy(logits), record


def _scores_teacher(f: h5py.File) -> dict | None:
    """The teacher summary of a `ddkit pool score` file (None for other HDF5 files)."""
    if attr_text(f.attrs.get("format", "")) != SCORES_FORMAT or "teacher" not in f.attrs:
        return None
    try:
        teacher = load_json(f.attrs["teacher"], "teacher")
    except ValueError:
        return None
    return teacher if isinstance(teacher, dict) and teacher.get("sha256") else None


def _rows_for_pool(logits: np.ndarray, ids: np.ndarray, pool: ImageDataset, path) -> np.ndarray:
    """Reorder (and subset) rows stored with sample ids to the pool's order."""
    if ids.ndim != 1 or logits.ndim != 2 or len(ids) != len(logits):
        raise InvalidInput(f"{path}: `ids` has {len(ids)} entries for {len(logits)} logit rows", "store one id per row")
    try:
        rows = ids_to_positions(ids, pool.ids.numpy())
    except IncompatibleError as exc:
        raise IncompatibleError(f"teacher logits in {path} do not cover the pool: {exc.problem}",
                                "compute the logits on this pool") from None
    return logits[rows]
