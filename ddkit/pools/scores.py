"""Pool scores (`.scores.h5`): a teacher's outputs on every sample of a pool, computed once by
sharded inference and read back in row blocks by the selectors (PCoreSet, KD³, dedup, k-center).

`score_pool` runs the teacher over the pool's clean views (its normalization only, no
augmentation) in batches on a fixed global grid of `batch_size` rows, so every row's arithmetic is
the same whatever the number of processes. Under torchrun the grid's shards (runs of whole
batches) are shared out as contiguous ranges, one range per rank; each rank writes its shards into
`OUT.work/` (each file atomically, so a killed run leaves only whole shards), and rank 0 streams
them into the final file, which appears under its name in one rename. `resume=True` reuses the
shards of an interrupted run whose identity (pool fingerprint, teacher sha256, rows, settings)
matches. The pool is streamed in batches (`ddkit.data.stream.iter_batches`, decoded ahead in
workers), never read whole, so pools larger than memory work.

Layout: root attrs `format="ddkit.pool-scores"`, `schema`, `pool_fingerprint`, `pool` (JSON: the
selection files' pool record), `teacher` (JSON summary, with its `sha256`), `teacher_sha256`,
`embedding` ("pooled", "map" or "none"), `normalization` (JSON), `batch_size`, `created`,
`ddkit_version`; datasets `/ids` (int64, pool order), `/logits` (N×C float32), optional `/probs`
(N×C float32, the softmax of each logit row, so k-center on probabilities streams without a
transform) and `/embeddings` (N×D float32, L2-normalized as in `pools.embed.teacher_embeddings`); float
datasets are chunked by rows (about 1 MiB per chunk), uncompressed for fast streaming.
`pools.logits.load_teacher_logits` reads the file as precomputed logits (`--teacher-logits`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import h5py
import numpy as np
import torch

from ddkit import distributed
from ddkit.data import DATASETS, load_dataset
from ddkit.data.base import DatasetInfo, ImageDataset
from ddkit.data.poolfile import load_pool, open_pool, pool_fingerprint
from ddkit.data.stream import iter_batches
from ddkit.errors import FileFormatError, IncompatibleError, InvalidInput
from ddkit.fileio import atomic_output, attr_text, check_output, open_checked_h5
from ddkit.h5safe import open_hdf5
from ddkit.models.teacher import load_teacher
from ddkit.pools.embed import check_embedding, teacher_outputs
from ddkit.progress import progress
from ddkit.provenance import Stamp
from ddkit.store.selection import pool_record
from ddkit.training import pick_device
from ddkit.workitems import claim_workdir

SCORES_FORMAT = "ddkit.pool-scores"
SCORES_SCHEMA = 1
FIELDS = ("logits", "probs", "embeddings")
CHUNK_BYTES = 1 << 20  # per chunk of a float dataset in the final file
COPY_BYTES = 8 << 20  # per block when streaming shards into the final file
SHARD_BATCHES_MAX = 64  # batches per shard file (fewer for small pools, so ranks share the work)


@dataclass(frozen=True)
class ScoreRun:
    """What a scoring run's outputs depend on; each shard file carries it, `resume` compares it."""

    pool_fingerprint: str
    teacher_sha256: str
    embedding: str  # "pooled", "map" or "none"
    probs: bool
    batch_size: int
    rows: int  # pool size
    shard_rows: int

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass
class PoolSource:
    """The pool's rows as a dataset (a pool file always streamed from the file, a registered dataset
    as it loads), read in batches by `batches`; `verify` checks a pool file's pixels against its
    fingerprint."""

    data: ImageDataset
    verify: Callable[[], None]

    @property
    def info(self) -> DatasetInfo:
        return self.data.info

    @property
    def ids(self) -> np.ndarray:
        return self.data.ids.numpy().astype(np.int64)

    @property
    def fingerprint(self) -> str:
        return self.data.fingerprint()

    @property
    def record(self) -> dict:
        return pool_record(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def batches(self, positions: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
        """uint8 (or [0, 1] float) images of `positions` in batches, decoded ahead in workers when streamed."""
        for batch in iter_batches(self.data, batch_size, positions, normalized=False, raw=True):
            yield batch.x


def open_pool_source(pool: str | os.PathLike) -> PoolSource:
    """A `.pool.h5` file (also written `pool:PATH`; streamed in row blocks, never read whole) or a
    registered dataset's train split (as `select --pool` and `active-learn --pool` load it)."""
    text = str(pool)
    path = Path(text[len("pool:"):] if text.startswith("pool:") else text)
    if text.startswith("pool:") or text.endswith(".h5") or path.is_file() or text.split(":")[0] not in DATASETS.names():
        path = path.resolve()
        data = load_pool(path, verify=False, stream=True)

        def verify() -> None:
            with open_pool(path) as h5:  # read in whole-chunk blocks: no chunk cache needed
                if pool_fingerprint(np.asarray(h5["ids"][()], np.int64), h5["images"]) != data.fingerprint():
                    raise FileFormatError(f"{path}: the pool's ids or pixels do not match its fingerprint "
                                          "(changed or corrupted)",
                                          "rebuild the pool; scores of it cannot be trusted")

        return PoolSource(data, verify)
    return PoolSource(load_dataset(text, "train"), lambda: None)


def shard_grid(rows: int, batch_size: int) -> list[tuple[int, int]]:
    """Row ranges of the shard files: runs of whole batches of the global grid, the same for every
    world size (so `resume` can reuse shards of a run with another process count)."""
    batches = math.ceil(rows / batch_size)
    per_shard = min(SHARD_BATCHES_MAX, max(1, math.ceil(batches / SHARD_BATCHES_MAX)))
    step = per_shard * batch_size
    return [(s, min(s + step, rows)) for s in range(0, rows, step)]


def rank_shards(shards: list, w: distributed.World) -> list:
    """This rank's contiguous run of shards (balanced to within one shard)."""
    n = len(shards)
    return shards[w.rank * n // w.size : (w.rank + 1) * n // w.size]


def _shard_path(workdir: Path, start: int, stop: int) -> Path:
    return workdir / f"rows-{start:012d}-{stop:012d}.h5"


def _shard_is_whole(path: Path, run: ScoreRun, start: int, stop: int) -> bool:
    """A shard file of this very run and row range, with every field it should have."""
    try:
        with open_hdf5(path, what="score shard") as f:
            if attr_text(f.attrs.get("run", "")) != run.to_json():
                return False
            if (int(f.attrs["start"]), int(f.attrs["stop"])) != (start, stop):
                return False
            return all(name in f and f[name].shape[0] == stop - start for name in _fields(run))
    except (OSError, KeyError, ValueError, FileFormatError):
        return False


def _fields(run: ScoreRun) -> list[str]:
    return ["logits"] + (["probs"] if run.probs else []) + (["embeddings"] if run.embedding != "none" else [])


def _score_shards(source: PoolSource, teacher, run: ScoreRun, shards: list, workdir: Path, bar) -> None:
    """Score `shards` (row ranges on the global batch grid) into their shard files, the pool's rows
    streamed through one pass of `iter_batches` (batches decoded ahead, one shard's outputs held)."""
    if not shards:
        return
    embedding = None if run.embedding == "none" else run.embedding
    stream = source.batches(np.concatenate([np.arange(s, e) for s, e in shards]), run.batch_size)
    for start, stop in shards:
        out: dict[str, list[np.ndarray]] = {name: [] for name in _fields(run)}
        for s in range(start, stop, run.batch_size):
            images = next(stream)
            logits, vectors = teacher_outputs(teacher, images, source.info.normalization, embedding)
            out["logits"].append(logits.numpy())
            if run.probs:
                out["probs"].append(torch.softmax(logits, -1).numpy())
            if vectors is not None:
                out["embeddings"].append(vectors.numpy())
            bar.update(len(images))
        with atomic_output(_shard_path(workdir, start, stop), overwrite=True) as tmp:
            with h5py.File(tmp, "w") as f:
                for name, parts in out.items():
                    f.create_dataset(name, data=np.concatenate(parts))
                f.attrs.update({"run": run.to_json(), "start": start, "stop": stop})


def _copy_rows(src: h5py.Dataset, dst: h5py.Dataset, offset: int) -> None:
    step = max(1, COPY_BYTES // max(1, src.dtype.itemsize * int(np.prod(src.shape[1:]))))
    for s in range(0, src.shape[0], step):
        block = src[s : s + step]
        dst[offset + s : offset + s + len(block)] = block


def _chunk_rows(rows: int, width: int) -> int:
    return max(1, min(rows, CHUNK_BYTES // (4 * max(width, 1))))


def _write_final(out: Path, overwrite: bool, source: PoolSource, teacher, run: ScoreRun, shards, workdir: Path) -> None:
    with atomic_output(out, overwrite) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("ids", data=source.ids, chunks=(_chunk_rows(len(source), 2),))
            datasets: dict[str, h5py.Dataset] = {}
            for start, stop in shards:
                with open_hdf5(_shard_path(workdir, start, stop), what="score shard") as shard:
                    for name in _fields(run):
                        src = shard[name]
                        if name not in datasets:
                            width = int(src.shape[1])
                            datasets[name] = f.create_dataset(name, shape=(len(source), width), dtype=np.float32,
                                                              chunks=(_chunk_rows(len(source), width), width))
                        _copy_rows(src, datasets[name], start)
            f.attrs.update({
                "format": SCORES_FORMAT, "schema": SCORES_SCHEMA, "pool_fingerprint": source.fingerprint,
                "pool": json.dumps(source.record), "teacher": json.dumps(teacher.header.summary()),
                "teacher_sha256": run.teacher_sha256, "embedding": run.embedding,
                "normalization": json.dumps(source.info.normalization.to_dict()), "batch_size": run.batch_size,
                **Stamp().to_dict(),
            })


def score_pool(pool: str | os.PathLike, teacher_path: str | os.PathLike, out: str | os.PathLike, *,
               embedding: str | None = "pooled", probs: bool = True, batch_size: int = 512, device: str | None = None,
               overwrite: bool = False, resume: bool = False, log: Callable[[str], None] | None = None) -> dict | None:
    """Score every sample of `pool` with the teacher into `out` (see the module docstring).

    `pool`: a `.pool.h5` file (or `pool:PATH`), or a registered dataset (its train split).
    `embedding`: "pooled" (the classifier's input), "map" (the flattened last feature map) or None.
    `probs`: also store the softmax of the logits. Under torchrun every rank scores its share; rank
    0 writes the file and returns its header (other ranks return None once it exists).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInput(f"batch_size must be an integer ≥ 1, got {batch_size!r}")
    if embedding is not None and embedding != "none":
        check_embedding(embedding)
    out = check_output(out, overwrite)  # fail before the work, not after
    dev = pick_device(device)
    w = distributed.init(dev)
    source = open_pool_source(pool)
    teacher = load_teacher(teacher_path, dev)
    teacher.check_fits(source.info)
    shards = shard_grid(len(source), batch_size)
    run = ScoreRun(source.fingerprint, teacher.header.tensors_sha256, embedding or "none", bool(probs), batch_size,
                   len(source), shards[0][1] - shards[0][0])
    workdir = claim_workdir(out, resume, overwrite, w.is_main)
    workdir.mkdir(parents=True, exist_ok=True)
    distributed.barrier()
    if w.is_main:
        source.verify()  # the output records this fingerprint: the pixels must match it
    mine = rank_shards(shards, w)
    todo = [(s, e) for s, e in mine if not (resume and _shard_is_whole(_shard_path(workdir, s, e), run, s, e))]
    if log and w.is_main and resume:
        log(f"resuming: {len(mine) - len(todo)} of this rank's {len(mine)} shards already scored")
    bar = progress(total=sum(e - s for s, e in todo), desc="scoring pool", unit="img")
    _score_shards(source, teacher, run, todo, workdir, bar)
    bar.close()
    distributed.barrier()
    if not w.is_main:
        distributed.barrier()  # wait for rank 0's file
        return None
    missing = [(s, e) for s, e in shards if not _shard_is_whole(_shard_path(workdir, s, e), run, s, e)]
    if missing:
        raise IncompatibleError(f"{len(missing)} shards of {workdir} are missing or from another run "
                                f"(rows {missing[0]}, ...)",
                                "run again without --resume")
    _write_final(out, overwrite, source, teacher, run, shards, workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    distributed.barrier()
    return read_scores_header(out)


# -- reading ----------------------------------------------------------------------------------------
def open_scores(path: str | os.PathLike) -> h5py.File:
    """A scores file opened read-only, its format and schema checked (the caller closes it)."""
    return open_checked_h5(path, fmt=SCORES_FORMAT, schema=SCORES_SCHEMA, kind="pool-scores",
                           remedy="compute it with `ddkit pool score`")


def scores_header(f: h5py.File) -> dict:
    """The root attributes of an open scores file, JSON fields decoded, plus each field's shape."""
    header = {}
    for key, value in f.attrs.items():
        if isinstance(value, (bytes, str)):
            value = attr_text(value)
        elif hasattr(value, "item"):
            value = value.item()
        header[key] = json.loads(value) if key in ("pool", "teacher", "normalization") else value
    header["fields"] = {name: list(f[name].shape) for name in FIELDS if name in f}
    return header


def read_scores_header(path: str | os.PathLike) -> dict:
    with open_scores(path) as f:
        return scores_header(f)
