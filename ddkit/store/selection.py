"""The selection file (`.sel.h5`): which samples of a pool a selector KEPT, and why.

A selection stores stable sample ids into its pool (never positions or pixels), the score, rank and
round of each pick, and the pool's fingerprint (hash of the id list and of the pixel data), so
`resolve_selection` can prove that the ids still point at the pixels that were selected.
Root attributes follow the distilled file's conventions (format "ddkit.selection", schema 1,
content hash over the datasets, `/results` for evaluation cards).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import h5py
import numpy as np

import ddkit
from ddkit.errors import IncompatibleError, InvalidInput
from ddkit.provenance import utc_now
from ddkit.records import check_value
from ddkit.store.arrays import as_array
from ddkit.store.h5io import open_store, read_group_arrays, reading, should_verify, verify_content, write_store
from ddkit.store.meta import check_provenance
from ddkit.store.schema import SELECTION_FORMAT, attr_text, decode_attrs, encode_attrs

if TYPE_CHECKING:  # selections are read without torch; only resolving one loads its pool
    from ddkit.data import ImageDataset

HEADER_FIELDS = ("method", "method_version", "config", "seed", "pool", "teachers", "created", "ddkit_version")
ARRAY_FIELDS = ("ids", "score", "rank", "round")
OPTIONAL_FIELDS = ("class_counts",)  # header fields added later: written when set, read when present


POOL_KEYS = ("name", "split", "size", "fingerprint", "ids_sha256")


def pool_record(pool: ImageDataset, name: str | None = None) -> dict:
    """The `Selection.pool` record: how to load the pool again and how to recognize it.

    `name` is what `load_dataset` needs (default: the dataset's name); `fingerprint` hashes the id
    list and the pixels, so any change to the pool is detected when the selection is resolved.
    """
    return {
        "name": name or pool.info.name, "split": pool.split, "size": len(pool),
        "fingerprint": pool.fingerprint(), "ids_sha256": pool.ids_sha256(),
    }


@dataclass
class Selection:
    """The samples a selector kept, in pick order.

    `pool` is a `pool_record`. `ids` are pool sample ids (ImageDataset.ids), unique. `score`
    (float64, NaN when the method has none), `rank` (default: pick order) and `round` (default 0)
    have one entry per id, as does each array in `extra` (e.g. `min_distance`). `class_counts`: kept
    samples per class of the pool's labels, recorded when they are known (`with_class_counts`; empty
    otherwise, and in files written before it). `created` and `ddkit_version` are set when written;
    `content_sha256` when read from a file.
    """

    method: str
    method_version: str
    config: dict
    seed: int
    pool: dict
    ids: np.ndarray
    score: np.ndarray | None = None
    rank: np.ndarray | None = None
    round: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    teachers: list[dict] = field(default_factory=list)
    created: str = ""
    ddkit_version: str = ddkit.__version__
    content_sha256: str = ""
    class_counts: list[int] = field(default_factory=list)

    def __post_init__(self):
        if dataclasses.is_dataclass(self.config) and not isinstance(self.config, type):
            self.config = dataclasses.asdict(self.config)
        self.ids = as_array(self.ids, np.int64, 1, "selection ids")
        n = len(self.ids)
        self.score = as_array(np.full(n, np.nan) if self.score is None else self.score, np.float64, 1, "score")
        self.rank = as_array(np.arange(n) if self.rank is None else self.rank, np.int64, 1, "rank")
        self.round = as_array(np.zeros(n) if self.round is None else self.round, np.int64, 1, "round")
        self.extra = {k: as_array(v, None, None, f"extra {k!r}") for k, v in self.extra.items()}

    def __len__(self) -> int:
        return len(self.ids)

    def check(self) -> None:
        """Refuse (InvalidInput) an empty selection, duplicate ids or per-id arrays of another length."""
        check_provenance(self.method, self.config, self.teachers)
        n = len(self.ids)
        if n == 0:
            raise InvalidInput("the selection keeps no samples", "select at least one sample")
        unique, counts = np.unique(self.ids, return_counts=True)
        if len(unique) != n:
            dup = unique[counts > 1]
            raise InvalidInput(
                f"the selection lists {len(dup)} ids more than once (e.g. {', '.join(map(str, dup[:5]))})",
                "each kept sample appears once; drop the repeats",
            )
        for name, array in self.arrays().items():
            if array.ndim == 0 or len(array) != n:
                raise InvalidInput(f"{name} has shape {array.shape}, expected {n} entries (one per id)")
        missing = [key for key in POOL_KEYS if key not in self.pool]
        if missing:
            raise InvalidInput(f"the pool record lacks {', '.join(missing)}", "build it with pool_record(pool)")
        for key in POOL_KEYS:
            check_value(self.pool[key], int if key == "size" else str, f"pool.{key}")
        if n > self.pool["size"]:
            raise InvalidInput(f"the selection keeps {n} samples of a pool of {self.pool['size']}")
        if self.class_counts and (sum(self.class_counts) != n or min(self.class_counts) < 0):
            raise InvalidInput(f"class_counts {self.class_counts} do not add up to the {n} kept samples")

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in ARRAY_FIELDS} | {f"extra/{k}": v for k, v in self.extra.items()}


def with_class_counts(sel: Selection, pool: ImageDataset) -> Selection:
    """`sel` with the kept samples counted per class of `pool` (the pool it was made from), unless
    the pool's labels carry no information (an unlabeled pool)."""
    if not getattr(pool, "labeled", True):
        return sel
    labels = pool.labels.numpy()[ids_to_positions(pool.ids.numpy(), sel.ids)]
    counts = np.bincount(labels, minlength=pool.info.num_classes).tolist()
    return dataclasses.replace(sel, class_counts=[int(c) for c in counts])


def write_selection(path: str | os.PathLike, sel: Selection, overwrite: bool = False) -> str:
    """Check `sel` and write it atomically to `path`; returns its content_sha256."""
    sel.check()
    stamped = dataclasses.replace(sel, created=utc_now(), ddkit_version=ddkit.__version__)
    header_attrs = encode_attrs(stamped, HEADER_FIELDS + (OPTIONAL_FIELDS if sel.class_counts else ()))
    return write_store(path, SELECTION_FORMAT, sel.arrays(), header_attrs, overwrite=overwrite)


def read_selection(path: str | os.PathLike, verify: bool | str = "auto") -> Selection:
    """Read a `.sel.h5` file, refusing damaged, foreign or too-new files (see DistilledDataset)."""
    h5, _ = open_store(path, (SELECTION_FORMAT,), verify)
    with h5:
        if should_verify(path, verify):
            verify_content(h5, path)
        with reading(path):
            digest = attr_text(h5.attrs["content_sha256"])
            header = decode_attrs(Selection, h5.attrs, HEADER_FIELDS + tuple(f for f in OPTIONAL_FIELDS if f in h5.attrs))
            _check_declared_rows(h5, header["pool"])
            arrays = {name: h5[name][()] for name in ARRAY_FIELDS}
            extra = read_group_arrays(h5["extra"]) if "extra" in h5 else {}
            sel = Selection(**header, **arrays, extra=extra, content_sha256=digest)
            sel.check()
    return sel


def _check_declared_rows(h5, pool: dict) -> None:
    """Refuse per-id arrays whose declared shapes disagree with each other or with the pool's size,
    before any of them is read (a crafted file could declare billions of ids)."""
    size = pool.get("size") if isinstance(pool, dict) else None
    if not isinstance(size, int):
        raise InvalidInput(f"pool.size must be an integer, got {size!r}")
    rows = {}
    for name in ARRAY_FIELDS:
        if not isinstance(h5.get(name), h5py.Dataset):
            raise KeyError(f"dataset /{name} is missing")
        rows[name] = h5[name].shape
    n = rows["ids"][0] if len(rows["ids"]) == 1 else None
    if n is None or any(shape != (n,) for shape in rows.values()) or n > size:
        raise InvalidInput(f"per-id arrays have shapes {rows} for a pool of {size} samples",
                           "one entry per kept id, at most the pool's size")


def ids_to_positions(pool_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Positions in the pool of each of `ids`; unknown ids and an ambiguous pool are refused."""
    order = np.argsort(pool_ids, kind="stable")
    sorted_ids = pool_ids[order]
    if len(sorted_ids) > 1 and (sorted_ids[1:] == sorted_ids[:-1]).any():
        raise IncompatibleError("the pool has duplicate sample ids, so ids cannot be resolved", "use a pool with unique ids")
    where = np.minimum(np.searchsorted(sorted_ids, ids), max(len(sorted_ids) - 1, 0))
    known = sorted_ids[where] == ids if len(sorted_ids) else np.zeros(len(ids), bool)
    if not known.all():
        missing = ids[~known]
        raise IncompatibleError(
            f"{len(missing)} selected ids are not in the pool (e.g. {', '.join(map(str, missing[:5]))})",
            "resolve the selection against the pool it was made from",
        )
    return order[where]


def resolve_selection(sel_or_path: Selection | str | os.PathLike, pool: ImageDataset | None = None) -> ImageDataset:
    """The kept samples as an ImageDataset, in pick order.

    The pool is loaded by the recorded name and split unless given (a pool named by a path is never
    opened from the file's record: pass it); it must have the recorded fingerprint, so the ids are
    known to resolve to the pixels that were selected.
    """
    from ddkit.data import load_dataset, recorded_dataset

    sel = sel_or_path if isinstance(sel_or_path, Selection) else read_selection(sel_or_path)
    record = sel.pool
    if pool is None:  # by its registry name only: a pool:PATH / imagefolder:PATH source must be passed
        pool = load_dataset(recorded_dataset(record["name"], None, f"selection {sel_or_path}"
                                             if not isinstance(sel_or_path, Selection) else "the selection"),
                            record["split"])
    if pool.fingerprint() != record["fingerprint"]:
        raise IncompatibleError(
            f"the pool changed since selection: {record['name']} ({record['split']}) now has fingerprint "
            f"{pool.fingerprint()[:12]}…, the selection was made on {record['fingerprint'][:12]}… "
            f"({len(pool)} samples now, {record['size']} then)",
            "resolve against the exact pool the selection was made from (same ids, same pixels)",
        )
    subset = pool.subset(ids_to_positions(pool.ids.numpy(), sel.ids))
    subset.source = f"{sel.method} selection of {len(sel)} from {record['name']} ({record['split']})"
    return subset
