"""One contamination check for every kind of ddkit file (`ddkit validate FILE --against DATASET[:SPLIT]`).

- `.ddk.h5`: the stored images (for INFER, the composite's base images; a composed instance is
  flagged when its base is; with a formation, also every decoded instance), and the real images
  the file records it was made from (config keys `source_ids`, `init_source_ids`,
  `patch_source_ids`: DM's initial images, NRR-DD's patches, ...), looked up in the recorded source
  dataset and checked by their pixels. A synthesized image therefore counts as contaminated when
  the real image it grew from copies a test image, even when optimization moved its pixels far
  from it;
- `.sel.h5`: the selected samples, resolved against their pool;
- `.pool.h5`: every pool sample.

The file's integrity check (the seal and content hash of `.ddk.h5`/`.sel.h5`, the fingerprint of a
pool) runs before any search, so a damaged file is refused, not half-checked. The result (counts,
flagged ids, the detector's version) is written into the file: a `/results/contamination` card
(outside the content hash) for `.ddk.h5`/`.sel.h5`, the `contamination` entry of a pool's
provenance; `ddkit info` shows it.

The checked images stream (`ddkit.contamination.passes`): a pool, a selection's pool or a source
dataset larger than memory is matched block by block, and a streamed reference split is read once
into a temporary row file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ddkit.contamination.detector import as_uint8
from ddkit.contamination.detectors import DEFAULT, DETECTORS
from ddkit.contamination.passes import match_dataset, reference_detector
from ddkit.data import load_dataset, recorded_dataset
from ddkit.data.base import ImageDataset
from ddkit.data.poolfile import is_pool_file, load_pool, record_pool_provenance
from ddkit.errors import DatasetUnavailable, IncompatibleError, InvalidInput
from ddkit.provenance import utc_now
from ddkit.store import DISTILLED_FORMAT, DistilledDataset, add_result, read_selection, resolve_selection
from ddkit.store.h5io import open_store
from ddkit.store.results import STORE_FORMATS

CARD_NAME = "contamination"
SOURCE_KEYS = ("source_ids", "init_source_ids", "patch_source_ids")  # config keys naming real source images
MAX_LISTED = 1000  # flagged ids recorded per part (the counts are always complete)


def parse_against(spec: str) -> tuple[str, str]:
    """`DATASET[:SPLIT]` → (dataset, split); the split defaults to test. Dataset names may hold ':'
    themselves (`pool:PATH`), so only a trailing `:train` / `:test` is read as the split."""
    if not spec:
        raise InvalidInput("--against needs a dataset", "e.g. --against fashion-mnist or fashion-mnist:test")
    head, _, tail = spec.rpartition(":")
    return (head, tail) if head and tail in ("train", "test") else (spec, "test")


def load_reference(spec: str):
    """The reference images of `DATASET[:SPLIT]` (an ImageDataset), refusing a split that does not exist."""
    name, split = parse_against(spec)
    try:
        data = load_dataset(name, split)
    except DatasetUnavailable as exc:
        raise DatasetUnavailable(f"cannot check against {name}:{split}: {exc.problem}",
                                 exc.fix or "give a dataset that has that split") from None
    if len(data) == 0:
        raise InvalidInput(f"{name}:{split} has no images to check against",
                           f"give a dataset with a {split} split, e.g. --against fashion-mnist:test")
    return data


@dataclass
class Part:
    """One group of checked images: how many, which were flagged (their ids), what they matched."""

    name: str
    checked: int
    flagged_ids: list = field(default_factory=list)
    matched_ids: list = field(default_factory=list)
    exact: int = 0

    @property
    def flagged(self) -> int:
        return len(self.flagged_ids)

    def to_dict(self) -> dict:
        return {"checked": self.checked, "flagged": self.flagged, "exact": self.exact,
                "flagged_ids": self.flagged_ids[:MAX_LISTED], "matched_ids": self.matched_ids[:MAX_LISTED]}


@dataclass
class ContaminationReport:
    """What `check_file` found; `to_dict` is the record written into the file."""

    path: str
    kind: str
    against: str
    detector: str
    parts: list[Part]
    content: str = ""  # the file's content_sha256 or pool fingerprint
    created: str = field(default_factory=utc_now)

    @property
    def flagged(self) -> int:
        return sum(p.flagged for p in self.parts)

    @property
    def ok(self) -> bool:
        return self.flagged == 0

    def to_dict(self) -> dict:
        return {"check": "contamination", "against": self.against, "detector": self.detector, "created": self.created,
                "flagged": self.flagged, "parts": {p.name: p.to_dict() for p in self.parts},
                **({"content_sha256": self.content} if self.kind != "pool" else {"pool_fingerprint": self.content})}

    def __str__(self) -> str:
        verdict = "clean" if self.ok else f"{self.flagged} image(s) copy {self.against} images"
        lines = [f"{self.path} ({self.kind}) against {self.against}: {verdict}", f"  detector {self.detector}"]
        for p in self.parts:
            ids = ", ".join(map(str, p.flagged_ids[:10])) + (" …" if p.flagged > 10 else "")
            found = f"  {p.name}: {p.flagged} of {p.checked} flagged ({p.exact} exact)"
            lines.append(found + (f": ids {ids}" if ids else ""))
        return "\n".join(lines)


def summarize(record: dict) -> str:
    """One line for `ddkit info` from a recorded check."""
    parts = ", ".join(f"{name} {p['flagged']}/{p['checked']}" for name, p in record.get("parts", {}).items())
    return f"against {record.get('against')}: {record.get('flagged')} flagged ({parts}); {record.get('detector')}"


def _part(name: str, detector, images, ids: np.ndarray, reference_ids: np.ndarray) -> Part:
    """Check `images` (uint8 array, or a dataset, matched block by block as it streams)."""
    if len(images) == 0:
        return Part(name, 0)
    m = match_dataset(detector, images) if isinstance(images, ImageDataset) else detector.match(images)
    rows = np.flatnonzero(m.flagged)
    return Part(name, len(images), [int(i) for i in ids[rows]], [int(r) for r in reference_ids[m.reference[rows]]],
                int(m.exact.sum()))


def _sources(header) -> np.ndarray | None:
    for key in SOURCE_KEYS:
        if key in header.config:
            return np.asarray(header.config[key], dtype=np.int64).reshape(-1)
    return None


def _distilled_parts(path, detector, reference, against_split) -> tuple[list[Part], str]:
    from ddkit.store.selection import ids_to_positions

    with DistilledDataset(path, verify=True) as ds:
        header, digest = ds.header, ds.content_sha256
        stored = as_uint8(ds.stored_pixels())
        composite = ds.composite
        decoded = as_uint8(ds.pixels()) if ds.formation is not None else None
    ref_ids = reference.ids.numpy()
    parts = [_part("stored images", detector, stored, np.arange(len(stored)), ref_ids)]
    if decoded is not None:  # a formation's instances are zoomed cells: checked as the student sees them
        parts.append(_part("decoded instances", detector, decoded, np.arange(len(decoded)), ref_ids))
    if composite is not None and composite.num_instances:
        bad = set(parts[0].flagged_ids)
        members = composite.members.reshape(-1)
        composed = [len(stored) + j for j, base in enumerate(members) if int(base) in bad]
        matched = dict(zip(parts[0].flagged_ids, parts[0].matched_ids))
        parts.append(Part("composed instances", composite.num_instances, composed,
                          [matched[int(members[j - len(stored)])] for j in composed]))
    source_ids = _sources(header)
    if source_ids is not None and len(source_ids):
        record = header.dataset
        source = load_dataset(record.info.name, record.split)
        images = source.subset(ids_to_positions(source.ids.numpy(), source_ids))
        parts.append(_part(f"real sources ({record.info.name}:{record.split})", detector, images, source_ids, ref_ids))
    return parts, digest


def check_file(path: str | os.PathLike, against: str, detector: str | None = None,
               record: bool = True, source: str | None = None, device=None) -> ContaminationReport:
    """Check every image of `path` (a .ddk.h5, .sel.h5 or .pool.h5) against the images of `against`
    (`DATASET[:SPLIT]`, test by default) with `detector` (a registered name, `ddkit.contamination.DETECTORS`;
    default `detectors.DEFAULT`); with `record`, write the result into the file. `source`:
    a selection's pool when the file names it by a path (`pool:PATH`), which ddkit never opens itself.
    `device`: the run's (`--device`), where the candidate search runs."""
    DETECTORS.entry(detector or DEFAULT)  # an unknown name is refused before any file is read
    pool = is_pool_file(path)
    if pool:  # integrity first: the fingerprint over ids and pixels
        data = load_pool(path, verify=True)
        kind = "pool"
    else:  # integrity first: the seal and the content hash
        h5, kind = open_store(path, STORE_FORMATS, verify=True)
        h5.close()
    reference = load_reference(against)
    name, split = parse_against(against)
    shape = tuple(reference.info.image_shape)
    with reference_detector(reference, detector, device=device) as det:
        ref_ids = reference.ids.numpy()
        if pool:
            _check_shape(shape, tuple(data.info.image_shape), "pool")
            parts = [_part("pool samples", det, data, data.ids.numpy(), ref_ids)]
            content = data.fingerprint()
        elif kind == DISTILLED_FORMAT:
            with DistilledDataset(path, verify=False) as ds:
                _check_shape(shape, tuple(ds.header.dataset.info.image_shape), "distilled file")
            parts, content = _distilled_parts(path, det, reference, split)
        else:
            sel = read_selection(path)
            pool_source = None
            if source is not None:
                named = recorded_dataset(sel.pool["name"], source, f"selection {path}")
                pool_source = load_dataset(named, sel.pool["split"])
            kept = resolve_selection(sel, pool_source)
            _check_shape(shape, tuple(kept.info.image_shape), "selection's pool")
            parts = [_part("selected samples", det, kept, kept.ids.numpy(), ref_ids)]
            content = sel.content_sha256
        if sum(p.checked for p in parts) == 0:
            raise InvalidInput(f"{path} holds no images to check", "check a file with at least one image")
        what = "pool" if pool else ("distilled" if kind == DISTILLED_FORMAT else "selection")
        report = ContaminationReport(str(path), what, f"{name}:{split}", det.version, parts, content)
    if record:
        if pool:
            record_pool_provenance(path, CARD_NAME, report.to_dict())
        else:
            add_result(path, CARD_NAME, report.to_dict())
    return report


def _check_shape(reference: tuple, mine: tuple, what: str) -> None:
    if reference != mine:
        raise IncompatibleError(
            f"the {what} holds images of shape C×H×W = {'×'.join(map(str, mine))}, the reference dataset "
            f"{'×'.join(map(str, reference))}: a copy cannot be recognized across sizes or channel counts",
            "check against the dataset the file's images come from (same size and channels)",
        )
