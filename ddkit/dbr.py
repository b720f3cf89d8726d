"""DBR (Distance-Based Representative) label transfer of NRR-DD: two numbers per replayed view.

Instead of a C-dimensional soft label per augmented view, DBR stores the teacher's cross-entropy
distances from each CutMix view x of samples i and j to the two one-hot labels mixed in it,
`d_org = CE(T(x), y_i)` and `d_aug = CE(T(x), y_j)`, and the student minimizes, on the identical view,

    L = λ·CE(S(x), y_i) + (1−λ)·CE(S(x), y_j) + α·(|CE(S(x), y_i) − d_org| + |CE(S(x), y_j) − d_aug|)

(NRR-DD, arXiv 2503.18267, §3.4; the absolute-gap form and α are ddkit's reading of the paper's
"reduce the distance between d^T and d^S").

This only works if the student sees exactly the views the teacher saw, so the views are defined
here and nowhere else, by a named `ViewRecipe` and a seed, independent of batch size and world size:

- epoch e is a seeded permutation of the N instances (`generator(seed, "dbr-epoch", e)`);
- the permutation is cut into fixed-size chunks (`recipe.chunk` views; the last one of an epoch may be
  shorter); chunk c of epoch e draws its crop/flip parameters, its CutMix λ and box, and a partner
  permutation *within the chunk* from `generator(seed, "dbr-chunk", e, c)` — exactly what a batch of
  `chunk` samples would draw, but tied to the chunk, not to a batch;
- view v = e·N + p is position p of epoch e. A student at any batch size B reads the views in order,
  B at a time, across chunk and epoch boundaries.

The module is neutral ground between the synthesizer (which writes the payload: `dbr_payload`) and
the evaluator (which replays the views and trains with `dbr_loss`); neither imports the other.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ddkit.augment import MIXES, build_augmentation, build_mix
from ddkit.errors import FileFormatError, IncompatibleError, InvalidInput
from ddkit.progress import progress
from ddkit.registry import Registry
from ddkit.seeding import generator
from ddkit.store.payloads import DBRLabels

VIEW_RECIPES = Registry("DBR view recipe")


@dataclass(frozen=True)
class ViewRecipe:
    """Which views a student trained under a DBR protocol sees (everything but the seed and N).

    `steps` × min(`batch_size`, N) views are consumed, the same count as an EpochSampler-based
    protocol with these steps and batch size; the payload stores whole epochs covering them.
    """

    name: str
    steps: int
    batch_size: int
    chunk: int
    augmentation: str
    mix: str
    summary: str = ""

    def batch(self, instances: int) -> int:
        return min(self.batch_size, instances)

    def views(self, instances: int) -> int:
        """Views a student consumes on a set of `instances` training instances."""
        return self.steps * self.batch(instances)

    def epochs(self, instances: int) -> int:
        """Whole epochs (passes over the N instances) that cover `views(instances)`."""
        return math.ceil(self.views(instances) / instances)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def register_recipe(recipe: ViewRecipe) -> ViewRecipe:
    if recipe.mix not in MIXES or recipe.mix == "none":
        raise ValueError(f"recipe {recipe.name}: DBR needs a mixing transform, got {recipe.mix!r}")
    build_augmentation(recipe.augmentation)  # unknown names fail at import, not at replay
    VIEW_RECIPES.register(recipe.name, summary=recipe.summary)(lambda r=recipe: r)
    return recipe


def get_recipe(name: str) -> ViewRecipe:
    return VIEW_RECIPES.create(name)


# The views of the `dbr-cpu` protocol: the `teacher-cpu` regime (1000 steps × 64, random resized
# crop + flip, CutMix λ ~ Beta(1, 1) with one box per 64 views), so DBR and on-the-fly relabeling
# are compared on the same number and kind of views.
DBR_CPU_VIEWS = register_recipe(ViewRecipe(
    name="dbr-cpu@1", steps=1000, batch_size=64, chunk=64, augmentation="resized-crop-flip", mix="cutmix",
    summary="1000 steps × min(64, N) views; resized crop + flip; CutMix per 64-view chunk",
))


# -- the views ------------------------------------------------------------------------------------


@dataclass
class ViewChunk:
    """Consecutive views: pixels, the two labels mixed in each, the kept fraction λ, global view ids."""

    x: torch.Tensor
    y_org: torch.Tensor
    y_aug: torch.Tensor
    lam: torch.Tensor
    ids: torch.Tensor


@dataclass(frozen=True)
class ViewSchedule:
    """The views of one recipe on one set of `instances` training instances, under `seed`."""

    recipe: ViewRecipe
    seed: int
    instances: int

    def __post_init__(self):
        if self.instances < 1:
            raise InvalidInput("a DBR view schedule needs at least one training instance")

    @property
    def epochs(self) -> int:
        return self.recipe.epochs(self.instances)

    @property
    def stored_views(self) -> int:
        """Views in the payload: whole epochs."""
        return self.epochs * self.instances

    def order(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.instances, generator=generator(self.seed, "dbr-epoch", epoch))

    def chunk_bounds(self) -> list[tuple[int, int]]:
        n, size = self.instances, min(self.recipe.chunk, self.instances)
        return [(s, min(s + size, n)) for s in range(0, n, size)]

    def render(self, images: torch.Tensor, labels: torch.Tensor, epoch: int, chunk: int,
               order: torch.Tensor | None = None) -> ViewChunk:
        """Chunk `chunk` of epoch `epoch`: the same tensors whoever asks, whatever the batch size."""
        start, stop = self.chunk_bounds()[chunk]
        order = self.order(epoch) if order is None else order
        idx = order[start:stop].to(images.device)
        gen = generator(self.seed, "dbr-chunk", epoch, chunk)  # CPU: the same draws on any device
        augment = build_augmentation(self.recipe.augmentation)
        x = augment(images[idx], gen)
        mixer = build_mix(self.recipe.mix)
        params = mixer.sample(x.shape, gen)
        x = mixer.apply(x, params)
        y = labels[idx]
        partner = params["perm"].to(y.device)
        lam = torch.full((len(idx),), float(params["lam"]), device=x.device)
        ids = torch.arange(epoch * self.instances + start, epoch * self.instances + stop, device=x.device)
        return ViewChunk(x, y, y[partner], lam, ids)

    def chunks(self, images: torch.Tensor, labels: torch.Tensor):
        """Every chunk in view order, epoch after epoch (endless; the caller stops)."""
        if len(images) != self.instances or len(labels) != self.instances:
            raise InvalidInput(f"the view schedule is for {self.instances} instances, got {len(images)} images")
        epoch = 0
        while True:
            order = self.order(epoch)
            for c in range(len(self.chunk_bounds())):
                yield self.render(images, labels, epoch, c, order)
            epoch += 1


class ViewStream:
    """The views of a schedule, `batch` at a time, in view order (batch size only cuts the stream)."""

    def __init__(self, schedule: ViewSchedule, images: torch.Tensor, labels: torch.Tensor):
        self._chunks = schedule.chunks(images, labels)
        self._pending: list[ViewChunk] = []
        self._count = 0

    def next(self, batch: int) -> ViewChunk:
        while self._count < batch:
            chunk = next(self._chunks)
            self._pending.append(chunk)
            self._count += len(chunk.ids)
        fields = [f.name for f in dataclasses.fields(ViewChunk)]
        joined = {f: torch.cat([getattr(c, f) for c in self._pending]) for f in fields}
        out = ViewChunk(**{f: v[:batch] for f, v in joined.items()})
        rest = {f: v[batch:] for f, v in joined.items()}
        self._count = len(rest["ids"])
        self._pending = [ViewChunk(**rest)] if self._count else []
        return out


# -- the math -------------------------------------------------------------------------------------


def dbr_distances(logits: torch.Tensor, y_org: torch.Tensor, y_aug: torch.Tensor) -> torch.Tensor:
    """B×2: cross-entropy of each row's prediction to its two one-hot labels (d_org, d_aug)."""
    logp = F.log_softmax(logits.float(), -1)
    rows = torch.arange(len(logits), device=logits.device)
    return -torch.stack([logp[rows, y_org], logp[rows, y_aug]], 1)


def dbr_loss(student_logits: torch.Tensor, y_org: torch.Tensor, y_aug: torch.Tensor, lam: torch.Tensor,
             teacher_distances: torch.Tensor, alpha: float) -> torch.Tensor:
    """Batch mean of λ·d^S_org + (1−λ)·d^S_aug + α·(|d^S_org − d^T_org| + |d^S_aug − d^T_aug|)."""
    d = dbr_distances(student_logits, y_org, y_aug)
    mixed_ce = lam * d[:, 0] + (1 - lam) * d[:, 1]
    return (mixed_ce + alpha * (d - teacher_distances.to(d)).abs().sum(1)).mean()


@torch.no_grad()
def teacher_distances(teachers: list, images: torch.Tensor, labels: torch.Tensor, schedule: ViewSchedule,
                      num_views: int, batch_size: int = 512) -> torch.Tensor:
    """num_views×2 (d_org, d_aug) of the teachers' mean logits on the first `num_views` views."""
    out, stream, done = [], ViewStream(schedule, images, labels), 0
    bar = progress(total=num_views, desc="DBR labels: teacher distances per view", unit="view")
    while done < num_views:
        views = stream.next(min(batch_size, num_views - done))
        logits = torch.stack([t(views.x) for t in teachers]).mean(0)
        out.append(dbr_distances(logits, views.y_org, views.y_aug).cpu())
        done += len(views.ids)
        bar.update(len(views.ids))
    bar.close()
    return torch.cat(out) if out else torch.zeros(0, 2)


# -- payloads: stored (the file) and in memory (the trainer) --------------------------------------


def dbr_payload(teachers: list, images: torch.Tensor, labels: torch.Tensor, recipe: ViewRecipe, seed: int) -> DBRLabels:
    """The stored payload for `images` (normalized, on the teachers' device): E×N fp16 distances."""
    schedule = ViewSchedule(recipe, seed, len(images))
    d = teacher_distances(teachers, images, labels, schedule, schedule.stored_views)
    shape = (schedule.epochs, schedule.instances)
    return DBRLabels(
        d[:, 0].reshape(shape).numpy(), d[:, 1].reshape(shape).numpy(), recipe.name,
        replay={"seed": np.array([seed], dtype=np.int64)},
        meta={"recipe": recipe.to_dict(), "instances": len(images), "views_stored": schedule.stored_views,
              "views_consumed": recipe.views(len(images)), "distance": "cross-entropy of the teachers' mean logits, T=1"},
    )


@dataclass(frozen=True)
class DBRTargets:
    """What the evaluator's trainer needs to replay a DBR set: the view schedule and, per view, the
    teacher distances — stored (a file's payload, V×2) or computed when the view is drawn (the random
    baseline: the same teachers on the same views, rounded to fp16 as a file would store them, without
    computing views the student never reaches)."""

    schedule: ViewSchedule
    distances: torch.Tensor | None = None  # V×2 float32 (fp16 values, as stored)
    teachers: tuple = ()

    @property
    def views(self) -> int:
        return self.schedule.stored_views if self.distances is None else len(self.distances)

    def to(self, device) -> "DBRTargets":
        return self if self.distances is None else dataclasses.replace(self, distances=self.distances.to(device))

    def stream(self, images: torch.Tensor, labels: torch.Tensor) -> ViewStream:
        return ViewStream(self.schedule, images, labels)

    def rows(self, views: ViewChunk) -> torch.Tensor:
        """B×2 teacher distances (d_org, d_aug) of these views."""
        if self.distances is not None:
            return self.distances[views.ids.to(self.distances.device)]
        with torch.no_grad():
            logits = torch.stack([t(views.x) for t in self.teachers]).mean(0)
            return dbr_distances(logits, views.y_org, views.y_aug).half().float()


def targets_from_payload(payload: DBRLabels, instances: int) -> DBRTargets:
    """Replay targets of a stored payload; refuses one that does not fit the file's instances."""
    recipe = get_recipe(payload.protocol)
    seed = payload.replay.get("seed")
    if seed is None or np.asarray(seed).size != 1:
        raise FileFormatError("soft/dbr has no replay seed", "the file is damaged; re-run the synthesizer with transfer=dbr")
    schedule = ViewSchedule(recipe, int(np.asarray(seed).reshape(-1)[0]), instances)
    if payload.d_org.shape != (schedule.epochs, instances):
        raise FileFormatError(
            f"soft/dbr holds {payload.d_org.shape} distances, but recipe {recipe.name} on {instances} instances "
            f"needs {(schedule.epochs, instances)}", "the file is damaged; re-run the synthesizer with transfer=dbr")
    d = torch.from_numpy(np.stack([payload.d_org.reshape(-1), payload.d_aug.reshape(-1)], 1).astype(np.float32))
    return DBRTargets(schedule, d)


def baseline_targets(teachers: list, instances: int, recipe: ViewRecipe, seed: int) -> DBRTargets:
    """DBR targets for an in-memory set (the random baseline): the same recipe, its own seeded views,
    teacher distances computed as the views are drawn."""
    return DBRTargets(ViewSchedule(recipe, seed, instances), None, tuple(teachers))


def check_protocol_views(recipe_name: str, wanted: str | None, protocol_id: str) -> None:
    """Refuse replaying a payload under a protocol whose views are another recipe's."""
    if wanted != recipe_name:
        raise IncompatibleError(
            f"this file's DBR distances were computed on the views of recipe {recipe_name}, "
            f"but protocol {protocol_id} {'uses ' + wanted if wanted else 'is not a DBR protocol'}",
            "evaluate it with the DBR protocol of that recipe (e.g. --protocol dbr-cpu), or with a hard/teacher protocol",
        )


__all__ = [
    "DBRTargets", "VIEW_RECIPES", "ViewChunk", "ViewRecipe", "ViewSchedule", "ViewStream", "baseline_targets",
    "check_protocol_views", "dbr_distances", "dbr_loss", "dbr_payload", "get_recipe", "register_recipe",
    "targets_from_payload", "teacher_distances",
]
