"""The teacher-free near-duplicate detector: which query images are copies (exact or edited) of which
reference images, judged from the pixels alone.

Four stages:
1. exact: sha256 of each image's uint8 pixels (a byte-identical copy is always caught);
2. candidates (FAISS via `ddkit.index.knn`): each image is moved to a canonical frame (its intensity
   centroid to the centre, its radius of gyration to a fixed size), so shifts and crops barely move
   it; blurred and pooled to a small grid, mean-centred and unit-normalized, so noise, JPEG and
   brightness barely move it either. The references are indexed with their mirror images, so a
   flipped copy finds its source. The k nearest references are the candidates;
3. alignment: the query under a few undo-edits (identity, rotations, a 90% zoom-out at half-pixel
   offsets) and every integer shift up to `max_shift` is compared with each candidate, blurred, by
   the relative residual ‖q − g·c‖/‖q‖ with a gain g within ±15% (brightness);
4. registration: the best candidates, from their best alignment, are registered onto the query
   (`registered_residual`: an affine map, a gain and an offset, by Gauss-Newton) and scored by what
   is left relative to the image. A query is a copy when that score is at or below the threshold.

The threshold is not hand-set: `scripts/calibrate_contamination.py` builds the perturbation suite
(`ddkit.contamination.perturb`) over TRAIN images only, measures the residual of copies and of
distinct train images, and writes the threshold with the suite's seed into `calibration.json`; the
detector's version string names both, so a recorded result says exactly which detector produced it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ddkit import index
from ddkit.errors import IncompatibleError, InvalidInput
from ddkit.index.ivf import knn_ivf
from ddkit.progress import progress

NAME = "pixel-align"
VERSION = "1"
CALIBRATION_FILE = Path(__file__).with_name("calibration.json")
_BLOCK = 256  # queries verified per block (bounded memory: block × variants × shifts × window floats)
ROW_BLOCK = 4096  # rows hashed and reduced to candidate vectors per block (references and queries)


@dataclass(frozen=True)
class DetectorConfig:
    """Every setting of the detector; `threshold` comes from the calibration file unless given."""

    blur: float = 1.0  # Gaussian σ (px) of the verification images
    grid: int = 8  # candidate vectors: the canonical image pooled to grid × grid per channel
    k: int = 16  # candidates verified per query
    max_shift: int = 3  # integer shifts searched in x and y
    rotations: tuple[float, ...] = (-7.0, -4.0, 4.0, 7.0)  # degrees
    zoom: float = 0.9  # undo a crop of this side fraction
    zoom_offsets: tuple[tuple[float, float], ...] = ((0, 0), (0.5, 0.5), (-0.5, 0.5), (0.5, -0.5), (-0.5, -0.5))
    max_gain: float = 1.15  # brightness tolerated: gain in [1/max_gain, max_gain]
    refine: bool = True  # re-score the best candidates after an affine registration (see `registered_residual`)
    refine_top: int = 2  # candidates (best by residual) registered
    refine_below: float = 0.15  # ... when their residual is at most this (farther ones cannot be copies)
    refine_steps: int = 10  # Gauss-Newton steps of the registration
    refine_blur: float = 1.5  # Gaussian σ (px) of the registered images
    threshold: float | None = None
    calibration: dict = field(default_factory=dict, compare=False)

    def resolved(self) -> "DetectorConfig":
        """This config with the calibrated threshold filled in (from `calibration.json`)."""
        if self.threshold is not None:
            return self
        record = read_calibration()
        return replace(self, threshold=float(record["threshold"]), calibration=record)

    @property
    def version(self) -> str:
        """Names the method, its settings' version and the calibration (threshold, data, suite seed)."""
        cfg = self.resolved()
        cal = cfg.calibration
        where = f"calibrated on {cal.get('dataset')} train, suite seed {cal.get('seed')}" if cal else "hand-set"
        return f"{NAME}-{VERSION} (threshold {cfg.threshold:.4g}, {where})"

    def to_dict(self) -> dict:
        d = asdict(self.resolved())
        d["version"] = self.version
        return d


def read_calibration() -> dict:
    """The calibration record written by scripts/calibrate_contamination.py."""
    try:
        record = json.loads(CALIBRATION_FILE.read_text())
        float(record["threshold"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f"the detector's calibration {CALIBRATION_FILE} is missing or damaged ({exc})",
                           "run scripts/calibrate_contamination.py, or pass a threshold") from None
    return record


@dataclass
class Matches:
    """Per query: `flagged`, `exact` (byte-identical to a reference), `score` (the best candidate's
    residual after registration; 0 for exact copies, inf when none came close), `reference` (row of the best reference,
    −1 when none) and `flipped` (the best match is the reference's mirror image). `vectors`: the
    queries' search vectors and `crowding`, when the detector's are worth keeping (the descriptor's,
    which a search of the same set within itself reuses)."""

    flagged: np.ndarray
    exact: np.ndarray
    score: np.ndarray
    reference: np.ndarray
    flipped: np.ndarray
    version: str
    vectors: np.ndarray | None = None
    crowding: np.ndarray | None = None  # the descriptor's normalizing term per query (`learned.py`)

    @property
    def count(self) -> int:
        return int(self.flagged.sum())


def as_uint8(images) -> np.ndarray:
    """N×C×H×W pixels as uint8: uint8 as is, floats in [0, 1] rounded (the way pools store them)."""
    x = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if x.ndim != 4:
        raise InvalidInput(f"images must be N×C×H×W, got shape {x.shape}")
    if x.dtype == np.uint8:
        return x if isinstance(x, np.memmap) else np.ascontiguousarray(x)  # a memmap is read by rows, never whole
    return (np.clip(x.astype(np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)


def pixel_hashes(images: np.ndarray) -> list[bytes]:
    return [hashlib.sha256(np.ascontiguousarray(img).tobytes()).digest() for img in images]


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur, edges repeated."""
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    c = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _unit_rows(v: torch.Tensor) -> torch.Tensor:
    v = v - v.mean(1, keepdim=True)
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-6)


def canonical(x: torch.Tensor, radius: float = 0.5, orient: bool = False) -> torch.Tensor:
    """Images moved so their intensity centroid is the centre and their radius of gyration `radius`
    (normalized units); the background (median of the outer ring) does not count as mass.

    `orient`: also turned so that their principal axis (of the mass's second moments) lies on the
    nearest of the two image axes, by as much of that angle as the image is clearly elongated and
    tilted by at most ~20° (`orientation`): a copy rotated by a few degrees then comes back upright
    with its source, while a round image, whose axis is noise, is not turned at all."""
    n, c, h, w = x.shape
    b = _blur(x, 1.0).mean(1)
    ring = torch.cat([b[:, 0], b[:, -1], b[:, :, 0], b[:, :, -1]], 1)
    mass = (b - ring.median(1).values[:, None, None]).clamp_min(0)
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h)
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w)
    total = mass.sum((1, 2)).clamp_min(1e-6)
    cy = (mass.sum(2) * ys).sum(1) / total
    cx = (mass.sum(1) * xs).sum(1) / total
    dist2 = (ys[None, :, None] - cy[:, None, None]) ** 2 + (xs[None, None, :] - cx[:, None, None]) ** 2
    var = (mass * dist2).sum((1, 2))
    scale = ((var / total).sqrt() / radius).clamp(0.5, 2.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = scale
    if orient:
        dy, dx = ys[None, :, None] - cy[:, None, None], xs[None, None, :] - cx[:, None, None]
        angle = orientation((mass * dx * dx).sum((1, 2)), (mass * dy * dy).sum((1, 2)), (mass * dx * dy).sum((1, 2)))
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    theta[:, 0, 2], theta[:, 1, 2] = cx, cy
    return _warp(x, theta)


def orientation(mxx: torch.Tensor, myy: torch.Tensor, mxy: torch.Tensor) -> torch.Tensor:
    """The turn (radians, x right, y down) that `canonical(orient=True)` undoes, from the second
    moments: the principal axis's deviation δ from the nearest image axis, weighted by how elongated
    the mass is (anisotropy 0.05 → 0, 0.15 → full) and by how small δ is (full up to 15°, none from
    25°), so the weight moves smoothly and a copy's turn tracks its source's."""
    phi = 0.5 * torch.atan2(2 * mxy, mxx - myy)  # principal axis, (−90°, 90°]
    quarter = math.pi / 2
    delta = phi - torch.round(phi / quarter) * quarter  # [−45°, 45°]
    anisotropy = torch.sqrt((mxx - myy) ** 2 + 4 * mxy**2) / (mxx + myy).clamp_min(1e-9)
    elongated = ((anisotropy - 0.05) / 0.10).clamp(0.0, 1.0)
    small = ((math.radians(25) - delta.abs()) / math.radians(10)).clamp(0.0, 1.0)
    return delta * elongated * small


def registered_residual(query: torch.Tensor, ref: torch.Tensor, theta: torch.Tensor, border: int, steps: int,
                        max_gain: float, edge: float = 4.0) -> torch.Tensor:
    """What is left of each pair (P×C×H×W, both blurred) after registering the query onto the
    reference: an affine map (from `theta`, P×2×3, reference frame -> query frame) and a gain and
    offset, fitted by Gauss-Newton. Returns ‖g·warped + o − ref‖ / ‖ref‖ over the pixels more than
    `border` px inside the reference and mapped more than `edge` px inside the query (what a shift
    or crop brought in at the query's edges, blurred, is not compared). A copy that was rotated,
    cropped, shifted or rescaled by a little registers onto its source; a different image keeps its
    differences."""
    p, c, h, w = ref.shape
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h)
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w)
    v, u = (t.reshape(-1) for t in torch.meshgrid(ys, xs, indexing="ij"))
    inside = torch.zeros(h, w)
    inside[border : h - border, border : w - border] = 1.0
    inside = inside.reshape(-1)
    limit_x, limit_y = 1.0 - 2.0 * edge / w, 1.0 - 2.0 * edge / h

    def mask(theta: torch.Tensor) -> torch.Tensor:  # P × C·H·W
        sx = theta[:, 0, 0:1] * u + theta[:, 0, 1:2] * v + theta[:, 0, 2:3]
        sy = theta[:, 1, 0:1] * u + theta[:, 1, 1:2] * v + theta[:, 1, 2:3]
        return (inside * (sx.abs() <= limit_x) * (sy.abs() <= limit_y)).repeat(1, c)

    uc, vc = u.repeat(c), v.repeat(c)
    target = ref.flatten(1)
    theta = theta.clone()
    gain, offset = torch.ones(p), torch.zeros(p)
    for _ in range(steps):
        m = mask(theta)
        warped = _warp(query, theta)
        gx, gy = torch.zeros_like(warped), torch.zeros_like(warped)
        gx[..., 1:-1] = (warped[..., 2:] - warped[..., :-2]) * (w / 4)  # d/dx in normalized units
        gy[..., 1:-1, :] = (warped[..., 2:, :] - warped[..., :-2, :]) * (h / 4)
        flat, gxf, gyf = warped.flatten(1), gain[:, None] * gx.flatten(1), gain[:, None] * gy.flatten(1)
        jac = torch.stack([gxf * uc, gxf * vc, gxf, gyf * uc, gyf * vc, gyf, flat, torch.ones_like(flat)], 2)
        jac = jac * m[:, :, None]
        r = (gain[:, None] * flat + offset[:, None] - target) * m
        hess = jac.transpose(1, 2) @ jac + 1e-4 * torch.eye(8)
        step = -torch.linalg.solve(hess, (jac.transpose(1, 2) @ r[:, :, None]))[:, :, 0]
        theta = theta + step[:, :6].reshape(p, 2, 3)
        gain = (gain + step[:, 6]).clamp(1.0 / max_gain, max_gain)
        offset = (offset + step[:, 7]).clamp(-0.1, 0.1)
    m = mask(theta)
    r = (gain[:, None] * _warp(query, theta).flatten(1) + offset[:, None] - target) * m
    return r.norm(dim=1) / (target * m).norm(dim=1).clamp_min(1e-6)


def unit_float(images: np.ndarray) -> torch.Tensor:
    """uint8 pixels (an array or a read-only memmap block) as float in [0, 1]."""
    return torch.from_numpy(images if images.flags.writeable else images.copy()).float().div_(255.0)


class Detector:
    """Index `references` once (uint8 N×C×H×W), then `match(queries)`; see the module docstring.

    Only the candidate vectors (2N small rows, the mirror images included) and the pixel hashes are
    held; the references' pixels are read by row when a query's candidates are verified, so a
    `numpy.memmap` of references far larger than memory works (as `within` of a streamed pool uses).
    `device`: the run's device, which decides where the candidate search runs (`ddkit.index`).
    """

    def __init__(self, references, config: DetectorConfig | None = None, device=None):
        self.config = (config or DetectorConfig()).resolved()
        self.device = device
        refs = as_uint8(references)
        if len(refs) == 0:
            raise InvalidInput("there are no reference images to check against")
        self.shape = tuple(refs.shape[1:])
        h, w = self.shape[1:]
        if min(h, w) <= 2 * self.config.max_shift + 2:
            raise InvalidInput(f"images of {h}×{w} px are too small for a ±{self.config.max_shift} px shift search")
        self.n = len(refs)
        self._refs = refs
        self._hashes: dict[bytes, list[int]] = {}
        coarse = []
        for start in progress(range(0, self.n, ROW_BLOCK), desc=f"copy check: indexing {self.n} reference images",
                              unit="block"):
            block = np.asarray(refs[start : start + ROW_BLOCK])
            for row, digest in enumerate(pixel_hashes(block), start):
                self._hashes.setdefault(digest, []).append(row)
            x = unit_float(block)
            coarse.append((self._coarse_vectors(x), self._coarse_vectors(x.flip(-1))))
        # rows n.. are the mirror images
        self._coarse = np.concatenate([c[0] for c in coarse] + [c[1] for c in coarse])

    def _references(self, rows: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """Float pixels of the distinct reference rows among `rows` (a row ≥ n is the mirror image
        of row − n) and, for each entry of `rows`, its place among them."""
        unique, inverse = np.unique(rows.reshape(-1), return_inverse=True)
        base = unique % self.n
        order = np.argsort(base, kind="stable")  # increasing rows: cheap reads from a memmap
        x = torch.empty((len(unique), *self.shape))
        x[torch.from_numpy(order)] = unit_float(np.asarray(self._refs[base[order]]))
        mirrored = torch.from_numpy(unique >= self.n)
        x[mirrored] = x[mirrored].flip(-1)
        return x, inverse.reshape(rows.shape)

    @property
    def version(self) -> str:
        return self.config.version

    def _coarse_vectors(self, x: torch.Tensor) -> np.ndarray:
        """The candidate-search vectors (see the module docstring) of float images."""
        pooled = F.adaptive_avg_pool2d(_blur(canonical(x), 1.0), self.config.grid)
        return _unit_rows(pooled.flatten(1)).numpy().astype(np.float32)

    def _variant_list(self) -> list[list[list[float]]]:
        """The undo-edits as affine maps (variant frame -> query frame, normalized coordinates):
        the identity, each rotation, the zoom-out at each offset."""
        h, w = self.shape[1:]
        maps = [[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]]
        for degrees in self.config.rotations:
            a = math.radians(degrees)
            maps.append([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]])
        z = 1.0 / self.config.zoom
        maps += [[[z, 0.0, 2.0 * dx / w], [0.0, z, 2.0 * dy / h]] for dx, dy in self.config.zoom_offsets]
        return maps

    def _variant_maps(self, n: int) -> torch.Tensor:
        return torch.tensor(self._variant_list()[:n])

    def _variants(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The query under each undo-edit (the identity first)."""
        maps = self._variant_maps(len(self._variant_list()))
        return [x] + [_warp(x, m.expand(len(x), 2, 3)) for m in maps[1:]]

    def _verify(self, x: torch.Tensor, candidates: np.ndarray) -> np.ndarray:
        """The score of each query against each of its candidates (block × k): the smallest relative
        residual over undo-edits and shifts; with `refine`, the `refine_top` best candidates are
        re-scored by `registered_residual` from their best alignment (the others get inf)."""
        h, w = self.shape[1:]
        s = self.config.max_shift
        lo, hi = 1.0 / self.config.max_gain, self.config.max_gain
        refs, where_ref = self._references(candidates)
        windows = _blur(refs, self.config.blur)[:, :, s : h - s, s : w - s].flatten(1)
        c = windows[torch.from_numpy(where_ref)]  # block × k × d
        cc = (c * c).sum(2)[:, :, None]
        residual = torch.full(candidates.shape, float("inf"))
        where = torch.zeros(candidates.shape, dtype=torch.long)
        shifts = (2 * s + 1) ** 2
        for v, variant in enumerate(self._variants(x)):  # one undo-edit at a time: bounded memory
            q = F.unfold(_blur(variant, self.config.blur), (h - 2 * s, w - 2 * s)).transpose(1, 2)  # block × shifts × d
            qc = torch.einsum("bsd,bkd->bks", q, c)
            qq = (q * q).sum(2)[:, None, :]
            g = (qc / cc.clamp_min(1e-9)).clamp(lo, hi)
            r, at = ((qq - 2 * g * qc + g * g * cc).clamp_min(0) / qq.clamp_min(1e-9)).sqrt().min(2)
            better = r < residual
            residual = torch.where(better, r, residual)
            where = torch.where(better, at + v * shifts, where)
        if not self.config.refine:
            return residual.numpy()
        # Register the best candidates, starting from their best (undo-edit, shift), and score them
        # by what is left after the registration.
        top = min(self.config.refine_top, candidates.shape[1])
        order = residual.argsort(1)[:, :top]
        rows = torch.arange(len(x))[:, None].expand(-1, top).reshape(-1)
        picked = order.reshape(-1)
        keep = residual[rows, picked] <= self.config.refine_below
        rows, picked = rows[keep], picked[keep]
        out = np.full(candidates.shape, np.inf)
        if len(rows) == 0:
            return out
        which = where[rows, picked]
        v_idx, oy, ox = which // shifts, (which % shifts) // (2 * s + 1), which % (2 * s + 1)
        base = self._variant_maps(len(self._variant_list()))[v_idx]  # P×2×3: variant frame -> query frame
        t = torch.stack([2.0 * (ox - s) / w, 2.0 * (oy - s) / h], 1).float()  # candidate frame -> variant frame
        theta = base.clone()
        theta[:, :, 2] = base[:, :, 2] + torch.einsum("pij,pj->pi", base[:, :, :2], t)
        query = _blur(x[rows], self.config.refine_blur)
        ref = _blur(refs[torch.from_numpy(where_ref[rows.numpy(), picked.numpy()])], self.config.refine_blur)
        out[rows.numpy(), picked.numpy()] = registered_residual(query, ref, theta, s, self.config.refine_steps,
                                                                self.config.max_gain).numpy()
        return out

    def match(self, queries, exclude=None) -> Matches:
        """Which `queries` (uint8 or [0, 1] float, N×C×H×W of the references' shape) copy a reference.

        `exclude` (one reference row per query, −1 for none) is a reference a query may not match:
        itself, when a set is searched for duplicates within itself (`within`).
        """
        q = as_uint8(queries)
        if tuple(q.shape[1:]) != self.shape:
            raise IncompatibleError(
                f"images of shape C×H×W = {tuple(q.shape[1:])} cannot be compared with references of {self.shape}",
                "check them against a dataset with the same image size and channel count",
            )
        n = len(q)
        own = np.full(n, -1, np.int64) if exclude is None else np.asarray(exclude, np.int64).reshape(-1)
        if len(own) != n:
            raise InvalidInput(f"exclude has {len(own)} rows for {n} queries")
        digests, vectors = [], []
        for start in progress(range(0, n, ROW_BLOCK), desc=f"copy check: hashing {n} images", unit="block"):
            block = np.asarray(q[start : start + ROW_BLOCK])
            digests += pixel_hashes(block)
            vectors.append(self._coarse_vectors(canonical(unit_float(block))))
        exact_row = np.array([next((r for r in self._hashes.get(d, ()) if r != o), -1)
                              for d, o in zip(digests, own)], dtype=np.int64)
        score = np.full(n, np.inf)
        best = np.full(n, -1, np.int64)
        if n:
            k = min(self.config.k + (exclude is not None) * 2, 2 * self.n)
            if exclude is None:
                _, cand = index.knn(np.concatenate(vectors), self._coarse, k, device=self.device)
            else:  # a set against itself (`within`): an inverted file, never all pairs
                _, cand = knn_ivf(np.concatenate(vectors), self._coarse, k, device=self.device)
            for start in progress(range(0, n, _BLOCK), desc=f"copy check: verifying the candidates of {n} images",
                                  unit="block"):
                rows = slice(start, start + _BLOCK)
                block_cand = np.where(cand[rows] >= 0, cand[rows], 0)
                res = self._verify(unit_float(np.asarray(q[rows])), block_cand)
                res[(cand[rows] < 0) | (block_cand % self.n == own[rows, None])] = np.inf
                pick = res.argmin(1)
                score[rows] = res[np.arange(len(res)), pick]
                best[rows] = block_cand[np.arange(len(res)), pick]
        exact = exact_row >= 0
        score[exact] = 0.0
        best[exact] = exact_row[exact]
        flipped = best >= self.n
        reference = np.where(best >= 0, best % self.n, -1)
        flagged = exact | (score <= self.config.threshold)
        return Matches(flagged, exact, score, reference, flipped & ~exact, self.version)


def within(images, config: DetectorConfig | None = None, device=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Near-duplicates inside one set: (group, keep, score) per row. Each row flagged as a copy of
    another row joins that row's group; a group is named by, and keeps, its smallest row."""
    x = as_uint8(images)
    n = len(x)
    if n < 2:
        return np.arange(n), np.ones(n, bool), np.full(n, np.inf)
    m = Detector(x, config, device).match(x, exclude=np.arange(n))
    group = groups(m.flagged, m.reference)
    return group, group == np.arange(n), m.score


def groups(flagged: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Connected groups of rows, each flagged row joined to its `reference` row: per row, the
    smallest row of its group (union-find, then pointer jumping)."""
    n = len(flagged)
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in np.flatnonzero(flagged):
        a, b = root(int(i)), root(int(reference[i]))
        if a != b:
            parent[max(a, b)] = min(a, b)
    group = parent.copy()
    while not np.array_equal(group, group[group]):
        group = group[group]
    return group
