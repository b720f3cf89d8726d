"""Student training for the evaluator: N seeds of a small student trained as one batched model.

Training several seeds of a small student is launch-bound, not FLOP-bound. With `torch.func`, the N
students' parameters are stacked and one vmapped forward/backward serves all of them: each seed
keeps its own initial weights, batch order, augmentation draws and loss, and since every optimizer
ddkit uses is element-wise, one optimizer over the stacked tensors equals N separate optimizers.
`batched=False` runs the same steps one model at a time (the reference the tests compare against).
The default (`batched=None`) batches on a GPU and not on a CPU: on the 2-core CPU of
BENCHMARKS.md (`eval-throughput`) the vmapped students (grouped convolutions) trained at 0.54× the
speed of one-at-a-time training, which is compute-bound there, not launch-bound.
Students with BatchNorm (running statistics) always take the one-at-a-time path.

A train set whose labels are DBR distances (`ddkit.dbr.DBRTargets`) does not sample its own views:
its batches are read, in order, from the view schedule the distances were computed on, so the
student sees exactly the teacher's views whatever its batch size.
"""

from __future__ import annotations

import collections
import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from ddkit.augment import build_augmentation, build_mix
from ddkit.data.base import DatasetInfo
from ddkit.data.stream import StreamedViews, batches_at
from ddkit.dbr import DBRTargets
from ddkit.errors import InvalidInput
from ddkit.evaluate.labels import MixInfo, hard_loss, kl_at_temperature, mix_targets, require_stored_scheme
from ddkit.evaluate.protocols import Protocol
from ddkit.models import create_model, has_batchnorm
from ddkit.progress import progress
from ddkit.seeding import derive_seed, generator
from ddkit.training import build_optimizer, image_shape_of, inference_batch, optimizer_step

# Whether `batched=None` batches seeds on a CPU device (measured slower there; see the module doc).
BATCHED_ON_CPU = False


@dataclass
class StudentData:
    """One seed's train set, already normalized and on the training device (or, for a streamed
    set, its `StreamedViews`, read batch by batch)."""

    images: torch.Tensor | StreamedViews
    labels: torch.Tensor
    payload: torch.Tensor | DBRTargets | None = None  # per-instance label rows (e.g. logits), or DBR targets
    scheme: str | None = None


class EpochSampler:
    """Batches from successive seeded permutations: `batch_size` rows each, and either the last partial
    batch of every permutation dropped (`drop_last`) or served as a shorter batch, as a shuffled DataLoader does."""

    def __init__(self, n: int, batch_size: int, gen: torch.Generator, drop_last: bool = True):
        self.n, self.batch, self.gen, self.drop_last = n, min(batch_size, n), gen, drop_last
        self._order = torch.empty(0, dtype=torch.long)

    def next(self) -> torch.Tensor:
        if len(self._order) < (self.batch if self.drop_last else 1):
            self._order = torch.randperm(self.n, generator=self.gen)
        idx, self._order = self._order[: self.batch], self._order[self.batch :]
        return idx


class _SampledViews:
    """A seed's batches in sampler order: (positions, normalized images), prefetched when streamed."""

    def __init__(self, images, sampler: EpochSampler, steps: int):
        self._pending: collections.deque = collections.deque()

        def indices():
            for _ in range(steps):
                idx = sampler.next()
                self._pending.append(idx)
                yield idx

        self._views = batches_at(images, indices())

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        x = next(self._views)
        return self._pending.popleft().to(x.device), x


class Students:
    """N trained students; `predict` returns N×B×K logits."""

    def __init__(self, models: list[nn.Module], stacked: tuple | None):
        self.models = models
        self._stacked = stacked  # (params, buffers, base) when trained batched

    @torch.no_grad()
    def predict(self, images, batch_size: int | None = None) -> torch.Tensor:
        """N×B×K logits on normalized `images` (a tensor, or a streamed set's `StreamedViews`), in batches
        of `inference_batch(image size, 1000)` rows by default."""
        outs = []
        if batch_size is None:
            batch_size = inference_batch(image_shape_of(images), 1000)
        chunks = [torch.arange(i, min(i + batch_size, len(images))) for i in range(0, len(images), batch_size)]
        for x in batches_at(images, chunks):
            if self._stacked is not None:
                params, buffers, base = self._stacked
                fn = vmap(lambda p, b, xx: functional_call(base, (p, b), (xx,)), in_dims=(0, 0, None))
                outs.append(fn(params, buffers, x))
            else:
                outs.append(torch.stack([m.eval()(x) for m in self.models]))
        return torch.cat(outs, 1)

    def accuracies(self, images, labels: torch.Tensor) -> list[float]:
        pred = self.predict(images).argmax(-1)
        return [float(v) for v in (pred == labels.view(1, -1)).float().mean(1)]

    def state_dicts(self) -> list[dict]:
        if self._stacked is None:
            return [m.state_dict() for m in self.models]
        params, buffers, _ = self._stacked
        merged = {**params, **buffers}
        return [{k: v[i].detach() for k, v in merged.items()} for i in range(len(self.models))]


def _teacher_targets(teachers: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """The ensemble's mean logits on exactly these (augmented, mixed) views."""
    with torch.no_grad():
        return torch.stack([t(x) for t in teachers]).mean(0)


def train_students(
    protocol: Protocol,
    data: list[StudentData],
    seeds: list[int],
    info: DatasetInfo,
    device: torch.device,
    teachers: list[nn.Module] = (),
    batched: bool | None = None,
    desc: str = "students",
    compile: bool = False,
) -> Students:
    """Train one student per seed under `protocol`; `data[i]` is seed i's train set.

    `compile` runs each student's forward pass through `torch.compile` (the same model and steps with
    fused kernels; on a CPU it needs a C++ compiler, and the first steps pay for compilation). It changes
    float rounding only, never the recipe; the card records it."""
    if len(data) != len(seeds):
        raise ValueError("one train set per seed")
    sizes = {len(d.labels) for d in data}
    if min(sizes) == 0:
        raise InvalidInput("the train set is empty")
    if protocol.label_source == "teacher" and not teachers:
        raise InvalidInput(f"protocol {protocol.id} relabels with a teacher", "pass --teacher T (one or more)")
    stored_fn = require_stored_scheme(data[0].scheme) if protocol.label_source == "stored" else None

    c, h, w = info.image_shape
    models = [
        create_model(protocol.student, c, h, info.num_classes, seed=derive_seed(s, "student"), **protocol.student_kwargs).to(device).train()
        for s in seeds
    ]
    if batched is None:  # auto: batched where it pays (a GPU), one at a time on a CPU (see BATCHED_ON_CPU)
        batched = device.type != "cpu" or BATCHED_ON_CPU
    use_vmap = batched and len(seeds) > 1 and len(sizes) == 1 and not has_batchnorm(models[0])
    if batched and not use_vmap and len(seeds) > 1:
        raise InvalidInput("batched training needs a student without BatchNorm and equal train-set sizes")

    if compile and use_vmap:
        raise InvalidInput("compiled training runs the seeds one at a time", "pass --sequential with --compile")
    if use_vmap:
        params, buffers = stack_module_state(models)
        base = copy.deepcopy(models[0]).to("meta")
        forward = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)))
        trainable = list(params.values())
    else:
        trainable = [p for m in models for p in m.parameters()]

    total_steps = protocol.total_steps(next(iter(sizes)))
    opt, sched = build_optimizer(trainable, protocol.optim, total_steps)
    augment = build_augmentation(protocol.augmentation)
    mixer = build_mix(protocol.mix)
    samplers = [EpochSampler(len(d.labels), protocol.batch_size, generator(s, "eval-batches"), protocol.drop_last)
                for d, s in zip(data, seeds)]
    aug_gens = [generator(s, "eval-augment", device=device) for s in seeds]
    streams = [_replay_stream(d, protocol, total_steps) for d in data]
    sampled = [None if stream is not None else _SampledViews(d.images, sampler, total_steps)
             for d, sampler, stream in zip(data, samplers, streams)]

    forwards = [torch.compile(m, dynamic=False) for m in models] if compile else models
    bar = progress(total=total_steps, desc=desc)
    for _ in range(total_steps):
        views, labels, rows, mixes = [], [], [], []
        for d, sampler, gen, stream, batches in zip(data, samplers, aug_gens, streams, sampled):
            if stream is not None:  # replayed views (DBR): the file decides what the student sees
                chunk = stream.next(sampler.batch)
                x, y, r = chunk.x, chunk.y_org, d.payload.rows(chunk)
                mix = MixInfo(chunk.lam, None, chunk.y_aug)
            else:
                idx, x = batches.next()
                x = augment(x, gen)
                mix = MixInfo()
                if mixer is not None:
                    mp = mixer.sample(x.shape, gen)
                    x = mixer.apply(x, mp)
                    mix = MixInfo(float(mp["lam"]), mp["perm"].to(x.device))
                y, r = d.labels[idx], None if d.payload is None else d.payload[idx]
            views.append(x)
            labels.append(y)
            rows.append(r)
            mixes.append(mix)
        stacked_views = torch.stack(views)
        logits = forward(params, buffers, stacked_views) if use_vmap else [f(v) for f, v in zip(forwards, views)]
        targets = None
        if protocol.label_source == "teacher":
            n, b = stacked_views.shape[:2]
            targets = _teacher_targets(list(teachers), stacked_views.flatten(0, 1)).view(n, b, -1)
        loss = 0.0
        for i, (y, r, mix) in enumerate(zip(labels, rows, mixes)):
            if protocol.label_source == "hard":
                loss = loss + hard_loss(logits[i], y, mix)
            elif protocol.label_source == "teacher":
                loss = loss + kl_at_temperature(logits[i], targets[i], protocol.temperature, protocol.t_squared)
            else:
                loss = loss + stored_fn(logits[i], r, y, mix, protocol)
        optimizer_step(opt, loss, sched)
        bar.update(1)
    bar.close()
    if use_vmap:
        return Students(models, ({k: v.detach() for k, v in params.items()}, buffers, base))
    for m in models:
        m.eval()
    return Students(models, None)


def _replay_stream(d: StudentData, protocol: Protocol, total_steps: int):
    """The view stream of a DBR train set (None for any other), after checking it has enough views."""
    if not isinstance(d.payload, DBRTargets):
        return None
    if protocol.label_source != "stored":
        raise InvalidInput(f"protocol {protocol.id} does not train on stored DBR distances")
    needed = total_steps * min(protocol.batch_size, len(d.labels))
    if needed > d.payload.views:
        raise InvalidInput(
            f"protocol {protocol.id} needs {needed} views but the DBR payload holds {d.payload.views}",
            "evaluate with fewer steps or the protocol the payload was made for",
        )
    return d.payload.stream(d.images, d.labels)


__all__ = ["EpochSampler", "StudentData", "Students", "train_students", "mix_targets"]
