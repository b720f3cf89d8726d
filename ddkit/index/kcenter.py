"""Greedy k-center (farthest-point) selection with one O(N) running-minimum vector.

Each pick is the point farthest from its nearest center; adding it as a center only needs the
distances from every point to that one new center, so the state is the vector of each point's
squared distance to its nearest center — never a budget × N matrix. A pick is one pass over the
points (a GEMV: ‖x−μ‖² − 2(x−μ)·(c−μ) + ‖c−μ‖², on mean-centered coordinates to keep float32
cancellation small), which makes it memory-bandwidth bound.

The same vector gives k-means++ seeding (D² sampling instead of the argmax), see `kmeans`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ddkit.errors import InvalidInput
from ddkit.index.device import index_device
from ddkit.index.source import Points, as_points, check_int, check_positions
from ddkit.seeding import numpy_rng

# Centers per GEMM when initializing the running minimum from many centers at once.
_CENTER_CHUNK = 1024
_TAKEN = -1.0  # running-min value of a point that is a center (never picked again)


@dataclass
class KCenterResult:
    """`indices`: picked row positions, in pick order. `min_distance`: each pick's L2 distance to its
    nearest center at the time it was picked (inf for a first pick made without any center).
    `kernel`: what ran the per-pick passes."""

    indices: np.ndarray
    min_distance: np.ndarray
    kernel: str = ""


class RunningMin:
    """Each point's squared distance to its nearest center so far (an N-vector), updated per center.

    In-memory points are centered once (a float32 copy on the backend's device); streamed points
    are read and centered block by block on every update, with the same block boundaries, so both
    give bit-identical values (on the CPU read and centered in one reused buffer, in numpy: a
    subtraction rounds the same in numpy and torch, and numpy takes a read-only memmap as it is).
    """

    def __init__(self, points: Points, device: torch.device | None = None):
        self.points = points
        self.device = device or index_device()
        self.mean = self._mean()
        self._center = None
        if points.streamed and self.device.type == "cpu":
            self._mean_np = self.mean.numpy()
            self._center = np.empty((min(points.block_rows, max(points.n, 1)), points.d), np.float32)
            self._center_t = torch.from_numpy(self._center)
        self.bounds = [(s, min(s + points.block_rows, points.n)) for s in range(0, points.n, points.block_rows)]
        self.data = None
        if not points.streamed:
            self.data = torch.from_numpy(points.array).to(self.device) - self.mean
        self.norms = torch.empty(points.n, device=self.device)
        for (s, e), block in self._blocks():
            self.norms[s:e] = (block * block).sum(1)
        self.values = torch.full((points.n,), float("inf"), device=self.device)
        # One scratch vector reused by every update: a fresh multi-MiB allocation per pick would cost
        # page faults comparable to the pass itself.
        self._scratch = torch.empty(min(points.block_rows, max(points.n, 1)), device=self.device)

    def _mean(self) -> torch.Tensor:
        total = np.zeros(self.points.d, np.float64)
        for _, block in self.points.blocks():
            total += block.sum(0, dtype=np.float64)
        return torch.from_numpy((total / max(self.points.n, 1)).astype(np.float32)).to(self.device)

    def _blocks(self):
        for s, e in self.bounds:
            if self.data is not None:
                yield (s, e), self.data[s:e]
            elif self._center is not None:
                block = self.points.rows(s, e, out=self._center)  # read into the buffer when reading copies
                np.subtract(block, self._mean_np, out=self._center[: e - s])
                yield (s, e), self._center_t[: e - s]
            else:
                yield (s, e), torch.from_numpy(self.points.rows(s, e)).to(self.device) - self.mean

    def centered(self, vectors: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(self.device) - self.mean

    def rows(self, positions: np.ndarray) -> torch.Tensor:
        if self.data is not None:
            return self.data[torch.as_tensor(positions, device=self.device)]
        return self.centered(self.points.take(positions))

    def add_center(self, center: torch.Tensor) -> None:
        """Fold one (centered) center into the running minimum: one pass over the points.

        Three vector passes over each L2-sized block besides the GEMV (+‖x‖², +‖c‖², min); no
        clamping here: a rounding-negative distance of a duplicate only matters when reported.
        On the CPU the GEMV is numpy's (its OpenBLAS streams a block at the memory bandwidth, about
        20% faster than torch's MKL GEMV for this tall, 64-wide shape on the machines we measured).
        """
        if self.device.type == "cpu":
            minus_2c = center.numpy() * np.float32(-2.0)  # exact: a power of two
            c_norm = np.float32(np.dot(center.numpy(), center.numpy()))
            norms, values, scratch = self.norms.numpy(), self.values.numpy(), self._scratch.numpy()
            for (s, e), block in self._blocks():
                dist = np.dot(block.numpy(), minus_2c, out=scratch[: e - s])
                np.add(dist, norms[s:e], out=dist)
                dist += c_norm
                np.minimum(values[s:e], dist, out=values[s:e])
            return
        c_norm = (center * center).sum()
        for (s, e), block in self._blocks():
            dist = torch.addmv(self.norms[s:e], block, center, alpha=-2.0, out=self._scratch[: e - s])
            torch.minimum(self.values[s:e], dist.add_(c_norm), out=self.values[s:e])

    def distance(self, position: int) -> float:
        """The L2 distance of a point to its nearest center (inf before any center)."""
        value = float(self.values[position])
        return float(np.sqrt(max(value, 0.0))) if np.isfinite(value) else float("inf")

    def add_centers(self, centers: torch.Tensor) -> None:
        """Fold many (centered) centers in with one GEMM per block and chunk of centers."""
        for lo in range(0, len(centers), _CENTER_CHUNK):
            chunk = centers[lo : lo + _CENTER_CHUNK]
            c_norms = (chunk * chunk).sum(1)
            for (s, e), block in self._blocks():
                dist = torch.addmm(c_norms.unsqueeze(0), block, chunk.T, alpha=-2.0).add_(self.norms[s:e].unsqueeze(1))
                torch.minimum(self.values[s:e], dist.min(1).values.clamp_min_(0.0), out=self.values[s:e])

    def farthest(self) -> int:
        """The position with the largest running minimum (the lowest one among ties).

        On the CPU numpy's argmax, which is an order of magnitude faster than torch's index
        reduction there (about 0.06 vs 0.8 ms per million points, one thread), a visible share of a pick.
        """
        if self.values.device.type == "cpu":
            return int(np.argmax(self.values.numpy()))
        return int(torch.argmax(self.values))

    def mark_taken(self, positions) -> None:
        self.values[torch.as_tensor(np.asarray(positions), device=self.device)] = _TAKEN


def kcenter(points, budget: int, *, center_positions=None, centers=None, seed: int = 0, block_rows: int | None = None,
            device: str | torch.device | None = None) -> KCenterResult:
    """Greedy k-center: pick `budget` rows of `points`, each the farthest from its nearest center.

    `points`: N×d array or h5py dataset (read in blocks of `block_rows`, never whole).
    `center_positions`: rows of `points` that are already centers (e.g. labeled samples): they
    start the running minimum and are never picked. `centers`: further M×d center vectors that are
    not rows of `points`. With no center at all, the first pick is a uniformly random row drawn
    from `seed` (its min distance is inf); otherwise the result does not depend on `seed`.
    Ties go to the lowest position. Memory: the points (in memory or not) plus O(N) floats.
    `device`: the run's device (None: the GPU when there is one); the passes run there.
    """
    pts = as_points(points, "points", block_rows=block_rows)
    given = check_positions(center_positions, pts.n, "center_positions")
    extra = None
    if centers is not None:
        extra = as_points(centers, "centers", allow_empty=True)
        if extra.d != pts.d:
            raise InvalidInput(f"centers have dimension {extra.d} but points have {pts.d}", "embed both with the same model")
    budget = check_int(budget, "budget", 0, pts.n - len(given))
    seed = check_int(seed, "seed", 0)
    state = RunningMin(pts, index_device(device))
    if extra is not None and extra.n:
        state.add_centers(state.centered(extra.load()))
    if len(given):
        state.add_centers(state.rows(given))
        state.mark_taken(given)
    picks = np.empty(budget, np.int64)
    min_distance = np.empty(budget, np.float64)
    for t in range(budget):
        if t == 0 and not len(given) and (extra is None or extra.n == 0):
            pick = int(numpy_rng(seed, "kcenter-first").integers(pts.n))
        else:
            pick = state.farthest()
        picks[t], min_distance[t] = pick, state.distance(pick)
        state.mark_taken([pick])
        if t + 1 < budget:
            center = state.rows(np.array([pick]))[0]
            state.add_center(center)
    kernel = "numpy/BLAS GEMV on the CPU" if state.device.type == "cpu" else f"torch GEMV on {state.device}"
    return KCenterResult(picks, min_distance, kernel)
