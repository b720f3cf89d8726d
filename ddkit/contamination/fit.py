"""Learning the copy descriptor on a dataset's TRAIN split, and calibrating its threshold there.

Self-supervised, with the perturbation suite as its views: each step takes a batch of train
images (each also as its mirror image, half the time: more instances), edits every image by one
or two single edits of the suite (`ddkit.contamination.perturb`, flip excluded: the detector
indexes mirror images instead), and trains the network so that an image's descriptor is nearer
its edited copy's than any other image's (InfoNCE). The other images are the batch and a queue
of recent batches' descriptors from a slowly moving copy of the network (MoCo): thousands of
negatives per step, so the network must separate the near-twins Fashion-MNIST is full of (plain
shirts photographed the same way), not just any two images. An image never counts as its own
negative (the queue remembers which image each entry came from).

The train split is divided once, by the seed: `holdout` images are the calibration's references,
as many are its distinct images, and the descriptor learns from the rest only, so the threshold
is set on images the network never saw. The threshold is the largest descriptor distance at which
at most `clean_rate` of the distinct images are flagged; the recall of edited copies of the
references (each kind of the suite) is recorded beside it. Test images are never read.

Deterministic: the same images, config and seed give the same weights (on the same torch build and
thread count; `torch.use_deterministic_algorithms` is on while training).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ddkit.contamination.descriptor import CopyNet, DescriptorArch
from ddkit.contamination.detector import unit_float
from ddkit.contamination.perturb import PERTURBATIONS, SINGLE, perturb, suite_kinds
from ddkit.errors import InvalidInput
from ddkit.progress import progress
from ddkit.records import record_fields
from ddkit.seeding import numpy_rng, seeded_global_rng

VIEW_EDITS = tuple(k for k in SINGLE if k != "flip")  # flips are caught by indexing mirror images
# The random streams' names. They are those of the run that made the shipped Fashion-MNIST file
# (docs/contamination.md), so `ddkit contamination calibrate fashion-mnist --seed 0` draws the same
# split, batches and edits.
_SPLIT_KEY = "proto"


@dataclass(frozen=True)
class FitConfig:
    """How a descriptor is learned and calibrated (all of it is recorded in the weights file)."""

    seed: int = 0
    steps: int = 1000
    epochs: int = 30  # ... but at most this many passes over the training images (a small train split)
    batch: int = 256
    lr: float = 3e-3
    warmup: int = 50  # steps of linear warm-up before the cosine decay (at most 5% of the steps)
    temperature: float = 0.05
    queue: int = 8192  # negatives remembered from earlier batches
    momentum: float = 0.99  # of the key network
    two_edits: float = 0.35  # share of views made by two single edits in a row
    width: int = 16
    dim: int = 64
    background: int = 4096  # training images kept (as descriptors) to measure how crowded a query's neighbourhood is
    background_k: int = 3  # ... by its distance to the k-th nearest of them
    normalize: float = 1.0  # score = distance to the nearest reference − normalize × that distance
    holdout: int = 10000  # calibration references (and as many distinct images), at most a quarter each
    clean_rate: float = 0.0075  # distinct images flagged at the threshold, at most
    copies_per_kind: int = 500  # calibration copies per edit of the suite

    def __post_init__(self):
        ints = ("seed", "steps", "epochs", "batch", "warmup", "queue", "width", "dim", "background", "background_k",
                "holdout", "copies_per_kind")
        for name in ints:
            value = getattr(self, name)
            low = 0 if name in ("seed", "queue") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidInput(f"fit {name} must be an integer ≥ {low}, got {value!r}")
        if self.batch < 2:
            raise InvalidInput(f"fit batch must be at least 2, got {self.batch}")
        for name, lo, hi in (("lr", 0.0, 1.0), ("temperature", 0.0, 10.0), ("momentum", 0.0, 1.0),
                             ("two_edits", 0.0, 1.0), ("normalize", 0.0, 10.0), ("clean_rate", 0.0, 0.5)):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
                    or not lo <= value <= hi or (name in ("lr", "temperature") and value == 0):
                raise InvalidInput(f"fit {name} must be a number in {'(' if name in ('lr', 'temperature') else '['}"
                                   f"{lo}, {hi}], got {value!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "fit config") -> "FitConfig":
        return cls(**record_fields(cls, d, where))


@dataclass
class Holdout:
    """Positions of the train split: the descriptor's training images and the calibration's."""

    fit: np.ndarray
    references: np.ndarray
    negatives: np.ndarray
    background: np.ndarray  # a subset of `fit`


def holdout_split(n: int, size: int, seed: int, background: int = 0) -> Holdout:
    """`size` references and `size` distinct images (each at most a quarter of n), the rest to learn
    from, and `background` of those (at most all) kept as the background."""
    size = min(size, n // 4)
    if n < 8 or size < 1:
        raise InvalidInput(f"{n} train images are too few to learn and calibrate a copy descriptor (at least 8)",
                           "use --detector pixel-align-1, or a dataset with more train images")
    order = numpy_rng(seed, _SPLIT_KEY).permutation(n)
    fit = order[2 * size :]  # in the drawn order: training batches are drawn by position in it
    return Holdout(fit, np.sort(order[:size]), np.sort(order[size : 2 * size]),
                   np.sort(fit[: min(background, len(fit))]))


def views(images: np.ndarray, rng: np.random.Generator, two_edits: float) -> np.ndarray:
    """Each image under one single edit of the suite (flip excluded), or two different ones in a
    row for a `two_edits` share of them."""
    out = images.copy()
    n = len(images)
    first = rng.integers(0, len(VIEW_EDITS), n)
    twice = rng.random(n) < two_edits
    second = (first + rng.integers(1, len(VIEW_EDITS), n)) % len(VIEW_EDITS)
    for step, rows_on in ((first, np.ones(n, bool)), (second, twice)):
        for k, name in enumerate(VIEW_EDITS):
            rows = np.flatnonzero((step == k) & rows_on)
            if len(rows):
                out[rows] = PERTURBATIONS.get(name)(out[rows], rng)
    return out


def _info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, q_ids: torch.Tensor, queue_ids: torch.Tensor,
              temperature: float) -> torch.Tensor:
    """Cross-entropy of each query picking its own key among the batch's keys and the queue's,
    an image's other entries (itself in the queue) masked out."""
    pos = (q * k).sum(1, keepdim=True)
    neg = torch.cat([q @ k.T, q @ queue.T], 1)
    same = torch.cat([torch.eye(len(q), dtype=torch.bool), queue_ids[None, :] == q_ids[:, None]], 1)
    logits = torch.cat([pos, neg.masked_fill(same, -1e4)], 1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long))


def train_descriptor(images: np.ndarray, config: FitConfig, arch: DescriptorArch | None = None,
                     positions: np.ndarray | None = None) -> CopyNet:
    """A descriptor learned from uint8 `images` (N×C×H×W, an array or a memmap read by batches), or
    from those at `positions` (at least 2), with `config` (see the module docstring)."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise InvalidInput(f"the descriptor learns from uint8 images N×C×H×W, got {images.dtype} {images.shape}")
    positions = np.arange(len(images)) if positions is None else np.asarray(positions, np.int64)
    n = len(positions)
    if n < 2:
        raise InvalidInput(f"a copy descriptor needs at least 2 images to learn from, got {n}")
    arch = arch or DescriptorArch.for_images(images.shape[1:], config.width, config.dim)
    batch = min(config.batch, n)
    steps = min(config.steps, math.ceil(config.epochs * n / batch))
    rng = numpy_rng(config.seed, "train")
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with seeded_global_rng(config.seed):
            net = CopyNet(arch)
        key_net = copy.deepcopy(net)
        for p in key_net.parameters():
            p.requires_grad_(False)
        warmup = min(config.warmup, max(1, steps // 20))
        opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=1e-4)
        queue = torch.zeros(0, arch.dim)
        queue_ids = torch.zeros(0, dtype=torch.long)
        net.train()
        key_net.train()
        for step in progress(range(steps), desc="copy descriptor"):
            lr = config.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
            for group in opt.param_groups:
                group["lr"] = lr
            picked = rng.choice(n, batch, replace=False)
            x = np.array(images[positions[picked]])
            mirrored = rng.random(batch) < 0.5
            x[mirrored] = x[mirrored][..., ::-1]
            ids = torch.from_numpy(picked * 2 + mirrored)
            clean, edited = unit_float(x), unit_float(views(x, rng, config.two_edits))
            q_edit, q_clean = net(edited), net(clean)
            with torch.no_grad():
                k_clean, k_edit = key_net(clean), key_net(edited)
            loss = 0.5 * (_info_nce(q_edit, k_clean, queue, ids, queue_ids, config.temperature)
                          + _info_nce(q_clean, k_edit, queue, ids, queue_ids, config.temperature))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                for pk, pq in zip(key_net.parameters(), net.parameters()):
                    pk.mul_(config.momentum).add_(pq.detach(), alpha=1 - config.momentum)
                for bk, bq in zip(key_net.buffers(), net.buffers()):
                    bk.copy_(bq)
                queue = torch.cat([k_clean, queue])[: config.queue]
                queue_ids = torch.cat([ids, queue_ids])[: config.queue]
    finally:
        torch.use_deterministic_algorithms(deterministic)
    return net.eval()


@dataclass
class Calibration:
    """A threshold set on train images only, with what it gives there (the record the weights file keeps)."""

    threshold: float
    clean_rate: float
    target_clean_rate: float
    references: int
    negatives: int
    copies_per_kind: int
    recall: dict = field(default_factory=dict)
    seed: int = 0
    seconds_per_10k_queries: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def threshold_for(scores: np.ndarray, clean_rate: float) -> float:
    """The largest threshold at which at most `clean_rate` of `scores` (distinct images) are ≤ it."""
    scores = np.sort(np.asarray(scores, np.float64))
    allowed = int(np.floor(clean_rate * len(scores)))
    if allowed >= len(scores):
        return float(scores[-1])
    return float(np.nextafter(scores[allowed], -np.inf))


def calibrate(make_detector, references: np.ndarray, negatives: np.ndarray, clean_rate: float,
              copies_per_kind: int, seed: int) -> Calibration:
    """Calibrate a detector built by `make_detector(references, threshold)` on train images: the
    threshold from the distinct `negatives`' scores, then the recall of edited copies of the first
    `copies_per_kind` references (a copy counts when it is flagged with its own source)."""
    detector = make_detector(references, float("inf"))
    start = time.perf_counter()
    clean = detector.match(negatives).score
    seconds = time.perf_counter() - start
    threshold = threshold_for(clean, clean_rate)
    sources = np.arange(min(copies_per_kind, len(references)))
    recall = {}
    for kind in suite_kinds():
        m = detector.match(perturb(references[sources], kind, seed))
        recall[kind] = round(float(((m.exact | (m.score <= threshold)) & (m.reference == sources)).mean()), 4)
    return Calibration(threshold, float((clean <= threshold).mean()), clean_rate, len(references), len(negatives),
                       len(sources), recall, seed, round(seconds * 10000 / max(1, len(negatives)), 1))
