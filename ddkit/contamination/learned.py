"""The `descriptor-2` and `descriptor-1` detectors: exact pixel hashes, then the learned copy descriptor
(`ddkit.contamination.descriptor`) searched with FAISS (`ddkit.index`).

Each query gets a score: its squared descriptor distance to the nearest reference, minus
`normalize` × its distance to the k-th nearest *background* descriptor (training images stored with
the weights). The second term measures how crowded the query's neighbourhood is: a plain shirt has
many look-alikes, among the references and among the background alike, so its nearest reference
is close without being a copy; an edited copy is far closer to its source than to anything else.
(Copy-detection work calls this score normalization; without it, a threshold low enough to spare
the crowded clean images misses many rotated and cropped copies, see docs/contamination.md.) A
background image byte-identical to the query (or to its mirror image) does not count: a query is
never measured against itself. A query is flagged when its score is at or below the threshold
calibrated on the dataset's held-out train images (`ddkit.contamination.fit`).

The references are indexed with their mirror images, so a flipped copy (alone or with another
edit) finds its source. Byte-identical copies are always caught by their sha256, whatever the
descriptor says.

Two versions share this code and the weights file, each with its own threshold calibrated on
held-out train images (`SCORINGS`):
- `descriptor-1` indexes each reference and its mirror image, and weighs the crowding term by the
  fit's `normalize` (1.0 in the shipped file);
- `descriptor-2` (the default) also indexes fixed views of each reference under the suite's
  geometric edits — rotated ±5.5°, 90% crops at the centre and four offsets, and the mirror images
  of these — so a rotated or cropped copy lands near one of its source's views rather than having
  to be recognised by the network alone, and weighs the crowding term by 0.25. Both choices were
  made on held-out train images (docs/contamination.md); the queries themselves are embedded once.

`within_vectors` finds near-duplicates inside one set through an inverted file
(`ddkit.index.knn_ivf`), with the same score: each row is compared with the rows of a few nearby
lists, never with all rows, so a pool of N images costs about N·√N distance computations, not N².
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from ddkit import index
from ddkit.contamination.descriptor import embed
from ddkit.contamination.detector import ROW_BLOCK, Matches, as_uint8, pixel_hashes
from ddkit.contamination.perturb import cropped, rotated
from ddkit.errors import FileFormatError, IncompatibleError, InvalidInput
from ddkit.index.ivf import EXACT_BELOW, knn_ivf
from ddkit.progress import progress

NAME = "descriptor"
VERSION = "2"  # the default version (`SCORINGS`)

_EDITS = {  # fixed views of the suite's geometric edits (ddkit.contamination.perturb)
    "rot+5.5": lambda x: rotated(x, 5.5), "rot-5.5": lambda x: rotated(x, -5.5),
    "crop90": lambda x: cropped(x, 0.9, 0.0, 0.0),
    "crop90ne": lambda x: cropped(x, 0.9, 0.06, -0.06), "crop90nw": lambda x: cropped(x, 0.9, -0.06, -0.06),
    "crop90se": lambda x: cropped(x, 0.9, 0.06, 0.06), "crop90sw": lambda x: cropped(x, 0.9, -0.06, 0.06),
}


@dataclass(frozen=True)
class Scoring:
    """How one version of the detector indexes its references and scores a query: the views of every
    reference it indexes (`identity` first; `mirror/…`: of the mirror image), and the crowding weight
    (None: the fit's `normalize`)."""

    views: tuple[str, ...]
    normalize: float | None


SCORINGS = {
    "1": Scoring(("identity", "mirror"), None),
    "2": Scoring(("identity", "mirror", *_EDITS, *(f"mirror/{e}" for e in _EDITS)), 0.25),
}


def view_of(name: str):
    """The uint8-block function of a reference view named in `SCORINGS` (None: the image itself)."""
    mirror = name == "mirror" or name.startswith("mirror/")
    edit = name.split("/", 1)[1] if name.startswith("mirror/") else (None if name in ("identity", "mirror") else name)
    if edit is not None and edit not in _EDITS:
        raise InvalidInput(f"unknown reference view {name!r}")
    edit_fn = _EDITS.get(edit)
    if not mirror:
        return edit_fn
    if edit_fn is None:
        return lambda x: x[..., ::-1]
    return lambda x: edit_fn(np.ascontiguousarray(x[..., ::-1]))


@dataclass(frozen=True)
class DescriptorDetectorConfig:
    """Settings of the detector; the threshold comes from the descriptor's calibration unless given."""

    threshold: float | None = None
    version: str = VERSION  # a key of SCORINGS
    k: int = 1  # reference candidates per query (more only matter for the exclusions of `within`)
    probes: int = 8  # within: inverted lists visited per row
    lists: int | None = None  # within: inverted lists (default ~2·√(2N))
    seed: int = 0  # within: the inverted file's clustering
    exact_below: int = EXACT_BELOW  # within: sets of at most this many rows (and mirrors) are searched exactly
    calibration: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if self.version not in SCORINGS:
            raise InvalidInput(f"unknown descriptor detector version {self.version!r}",
                               f"use one of {', '.join(f'{NAME}-{v}' for v in SCORINGS)}")
        t = self.threshold
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or math.isnan(t)):
            raise InvalidInput(f"threshold must be a number, got {self.threshold!r}",
                               "scores are a squared distance (0..4) minus a multiple of another")
        for name in ("k", "probes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInput(f"{name} must be an integer ≥ 1, got {value!r}")


class DescriptorDetector:
    """Index `references` once (uint8 N×C×H×W: hashes, and descriptors of every view of them that
    the version's `Scoring` names), then `match(queries)`. Only the hashes and the descriptors are
    held, never the pixels, so a `numpy.memmap` of references far larger than memory works.

    `dataset`: the registered dataset whose train split the descriptor learned from (the
    references' dataset); `descriptor`: a loaded one instead (calibration and tests).
    """

    def __init__(self, references, config: DescriptorDetectorConfig | None = None, device=None, descriptor=None):
        config = config or DescriptorDetectorConfig()
        if descriptor is None:  # resolved by the caller (`detectors`), so this module never imports `weights`
            raise InvalidInput("the descriptor detector needs the descriptor of the dataset its references come from",
                               "make it with ddkit.contamination.make_detector('descriptor-2', refs, dataset=NAME), "
                               "or pass descriptor=load_descriptor(FILE)")
        self.descriptor = descriptor
        self.net = descriptor.net
        self.scoring = SCORINGS[config.version]
        try:
            calibration = descriptor.header.calibration_of(config.version)
        except FileFormatError:
            if config.threshold is None:
                raise
            calibration = {}  # a threshold given (calibration itself, tests): none recorded yet
        threshold = float(calibration["threshold"] if config.threshold is None else config.threshold)
        self.config = replace(config, threshold=threshold, calibration=calibration)
        self.device = device
        refs = as_uint8(references)
        if len(refs) == 0:
            raise InvalidInput("there are no reference images to check against")
        self.shape = tuple(refs.shape[1:])
        self._check_shape(self.shape)
        self.n = len(refs)
        self._hashes: dict[bytes, list[int]] = {}
        for start in range(0, self.n, ROW_BLOCK):
            for row, digest in enumerate(pixel_hashes(np.asarray(refs[start : start + ROW_BLOCK])), start):
                self._hashes.setdefault(digest, []).append(row)
        # rows v·n … (v+1)·n − 1: the references' view v of `self.scoring.views`
        views = progress(self.scoring.views, desc=f"copy check: indexing {self.n} reference images under "
                         f"{len(self.scoring.views)} views", unit="view")
        self._vectors = np.concatenate([embed(self.net, refs, view=view_of(v)) for v in views])
        self._mirrored = np.array([v.startswith("mirror") for v in self.scoring.views])

    def _check_shape(self, shape: tuple) -> None:
        trained = tuple(self.descriptor.header.image_shape)
        if trained and tuple(shape) != trained:
            raise IncompatibleError(
                f"the copy descriptor learned on {self.descriptor.header.dataset} takes images of C×H×W = "
                f"{'×'.join(map(str, trained))}, got {'×'.join(map(str, shape))}",
                "check against the dataset the images come from, or use --detector pixel-align-1",
            )

    @property
    def version(self) -> str:
        h = self.descriptor.header
        return (f"{NAME}-{self.config.version} (threshold {self.config.threshold:.4g}, learned and calibrated on "
                f"{h.dataset} train, seed {h.fit.get('seed')}, weights {h.tensors_sha256[:12]})")

    def to_dict(self) -> dict:
        d = asdict(self.config)
        d["version"] = self.version
        return d

    def vectors(self, images) -> np.ndarray:
        """Descriptors of uint8 images (shape-checked against the references)."""
        q = as_uint8(images)
        if tuple(q.shape[1:]) != self.shape:
            raise IncompatibleError(
                f"images of shape C×H×W = {tuple(q.shape[1:])} cannot be compared with references of {self.shape}",
                "check them against a dataset with the same image size and channel count",
            )
        return embed(self.net, q)

    def crowding(self, vectors: np.ndarray, digests: list[bytes], mirror_digests: list[bytes]) -> np.ndarray:
        """Per query, the squared distance to its k-th nearest background descriptor, background
        images equal to the query or to its mirror image left out (see the module docstring)."""
        fit = self.descriptor.header.fit
        background, hashes = self.descriptor.background, self.descriptor.background_sha256
        k = int(fit.get("background_k", 1))
        if len(vectors) == 0 or len(background) == 0:
            return np.zeros(len(vectors))
        kk = min(k + 2, len(background))
        dist, idx = index.knn(vectors, background, kk, device=self.device)
        own = np.frombuffer(b"".join(digests), np.uint8).reshape(-1, 1, 32)
        mirror = np.frombuffer(b"".join(mirror_digests), np.uint8).reshape(-1, 1, 32)
        found = hashes[np.maximum(idx, 0)]
        dist = np.where((idx < 0) | (found == own).all(-1) | (found == mirror).all(-1), np.inf, dist)
        dist = np.sort(dist, 1)
        finite = np.isfinite(dist).sum(1)
        at = np.clip(np.minimum(k, finite) - 1, 0, kk - 1)
        return np.where(finite > 0, dist[np.arange(len(dist)), at], 0.0).astype(np.float64)

    def queries(self, images) -> tuple[np.ndarray, np.ndarray, list[bytes], np.ndarray]:
        """(uint8 queries, descriptors, pixel hashes, crowding) of `images`."""
        q = as_uint8(images)
        vectors = self.vectors(q)
        digests, mirror_digests = [], []
        for start in range(0, len(q), ROW_BLOCK):
            block = np.asarray(q[start : start + ROW_BLOCK])
            digests += pixel_hashes(block)
            mirror_digests += pixel_hashes(block[..., ::-1])
        return q, vectors, digests, self.crowding(vectors, digests, mirror_digests)

    @property
    def normalize(self) -> float:
        if self.scoring.normalize is not None:
            return self.scoring.normalize
        return float(self.descriptor.header.fit.get("normalize", 0.0))

    def match(self, queries, exclude=None) -> Matches:
        """Which `queries` (uint8 or [0, 1] float, N×C×H×W of the references' shape) copy a reference.
        `exclude` (one reference row per query, −1 for none): a reference a query may not match."""
        q, vectors, digests, crowd = self.queries(queries)
        n = len(q)
        own = np.full(n, -1, np.int64) if exclude is None else np.asarray(exclude, np.int64).reshape(-1)
        if len(own) != n:
            raise InvalidInput(f"exclude has {len(own)} rows for {n} queries")
        exact_row = np.array([next((r for r in self._hashes.get(d, ()) if r != o), -1)
                              for d, o in zip(digests, own)], dtype=np.int64)
        score = np.full(n, np.inf)
        best = np.full(n, -1, np.int64)
        if n:
            k = min(self.config.k + (exclude is not None) * 2, len(self._vectors))
            dist, cand = index.knn(vectors, self._vectors, k, device=self.device)
            dist = np.where((cand < 0) | (cand % self.n == own[:, None]), np.inf, dist)
            pick = dist.argmin(1)
            score = dist[np.arange(n), pick].astype(np.float64) - self.normalize * crowd
            best = np.where(np.isfinite(score), cand[np.arange(n), pick], -1)
        exact = exact_row >= 0
        best[exact] = exact_row[exact]
        score[exact] = np.minimum(score[exact], -self.normalize * crowd[exact])  # distance 0
        flipped = self._mirrored[np.maximum(best, 0) // self.n] & (best >= 0) & ~exact
        reference = np.where(best >= 0, best % self.n, -1)
        flagged = exact | (score <= self.config.threshold)
        return Matches(flagged, exact, score, reference, flipped, self.version, vectors, crowd)


def within_vectors(vectors: np.ndarray, mirrors: np.ndarray, crowding: np.ndarray, detector: DescriptorDetector,
                   config: DescriptorDetectorConfig | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Near-duplicates inside one set from its descriptors, its mirror images' (row i of `mirrors`
    is row i mirrored) and its crowding (`DescriptorDetector.crowding`), with the score, threshold
    and search settings of `detector` (or `config`): (group, keep, score) per row, as
    `detector.within`. The search is `knn_ivf` of the rows against rows and mirrors, a row's own two
    entries excluded."""
    from ddkit.contamination.detector import groups

    config = config or detector.config
    n = len(vectors)
    if n < 2:
        return np.arange(n), np.ones(n, bool), np.full(n, np.inf)
    database = np.concatenate([vectors, mirrors])
    k = min(config.k + 2, len(database))
    dist, cand = knn_ivf(vectors, database, k, lists=config.lists, probes=config.probes, seed=config.seed,
                         exact_below=config.exact_below, device=detector.device)
    dist = np.where((cand < 0) | (cand % n == np.arange(n)[:, None]), np.inf, dist)
    pick = dist.argmin(1)
    score = dist[np.arange(n), pick].astype(np.float64) - detector.normalize * np.asarray(crowding, np.float64)
    reference = np.where(np.isfinite(score), cand[np.arange(n), pick] % n, -1)
    group = groups(score <= config.threshold, reference)
    return group, group == np.arange(n), score
