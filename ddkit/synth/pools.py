"""Trained model pools for matching methods (IDM: Zhao et al., CVPR 2023, "enriched model sampling").

DM embeds with a new randomly initialised network every iteration. IDM keeps a queue of networks
instead, each trained briefly on real data, samples one per iteration for the embedding, trains the
sampled one a little more after using it, and replaces the oldest ones by fresh ones now and then,
so the embeddings come from networks at many stages of training, not only from initialisations.
It also adds a class-aware regularizer: the cross-entropy of the sampled network's predictions on
the synthetic images, which keeps them recognisable as their class.

`ModelPool` is that queue, shared by any matching method (DM today):
- `size` networks, built at the first iteration; each new network (serial s) is initialised from
  `derive_seed(seed, "pool-net", s)` and trained `warmup_steps` SGD steps on real batches before use;
- at iteration `it`, `refresh(it)` replaces the oldest network by a fresh one every
  `refresh_every` iterations; `pick(it)` returns a network, or None with probability
  `fresh_fraction` (the caller then uses a fresh random network, as DM does); `train(slot, it)`
  gives the used network `train_steps` more steps;
- networks train on uniformly drawn real batches of `batch` images, hard labels, cross-entropy,
  SGD (lr, momentum, weight decay), no augmentation (IDM trains them the same way).

Every draw depends only on (seed, iteration) or (seed, network serial), so a run is reproducible,
and `arrays()` / `restore()` carry the whole state (weights, buffers, momentum, serials, the last
training accuracies): saved with a checkpoint, a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ddkit.data.stream import batches_at
from ddkit.errors import InvalidInput
from ddkit.seeding import derive_seed, generator

PREFIX = "pool."  # the checkpoint arrays of a pool start with this


@dataclass(frozen=True)
class PoolSettings:
    """How a model pool is kept; `size` 0 means no pool (a fresh random network every iteration)."""

    size: int = 0
    warmup_steps: int = 10  # real-data SGD steps a network gets before its first use
    train_steps: int = 1  # more steps for the network each time it is used
    refresh_every: int = 50  # iterations between replacing the oldest network by a fresh one; 0 = never
    fresh_fraction: float = 0.0  # share of iterations that use a fresh random network instead
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch: int = 256  # real images per training step, drawn uniformly over the source

    def check(self, owner: str) -> None:
        if self.size < 0 or self.warmup_steps < 0 or self.train_steps < 0 or self.refresh_every < 0:
            raise InvalidInput(f"{owner}: pool_size, pool_warmup_steps, pool_train_steps and pool_refresh_every "
                               "must be ≥ 0")
        if not 0.0 <= self.fresh_fraction <= 1.0:
            raise InvalidInput(f"{owner}: pool_fresh_fraction must be in [0, 1], got {self.fresh_fraction}")
        if self.lr <= 0 or not 0.0 <= self.momentum < 1.0 or self.weight_decay < 0 or self.batch < 1:
            raise InvalidInput(f"{owner}: pool_lr must be > 0, pool_momentum in [0, 1), pool_weight_decay ≥ 0 "
                               "and pool_batch ≥ 1")


@dataclass
class Slot:
    """One network of the pool and what it has been through."""

    net: torch.nn.Module
    momentum: list[torch.Tensor]  # SGD momentum buffer per parameter (zeros before the first step)
    serial: int  # the n-th network this pool made (its seed and its age)
    steps: int = 0  # real-data SGD steps taken
    accuracy: float = 0.0  # on its last training batch (weights the class-aware regularizer)


def sgd_step(params: list[torch.Tensor], momentum: list[torch.Tensor], lr: float, mu: float,
             weight_decay: float) -> None:
    """One step of SGD with momentum and weight decay, as torch.optim.SGD takes it (dampening 0):
    d = g + wd·p; b ← μ·b + d; p ← p − lr·b. (Written out so that a pool costs no optimizer import
    and its whole state is the parameters and these buffers.)"""
    with torch.no_grad():
        for p, buf in zip(params, momentum):
            d = p.grad.add(p, alpha=weight_decay) if weight_decay else p.grad
            buf.mul_(mu).add_(d)
            p.sub_(buf, alpha=lr)


class ModelPool:
    """A queue of networks trained briefly on real data (see the module docstring).

    `make_net(seed)` builds one network (the method's embedding architecture) with weights that
    depend only on `seed`; `images` is what the source is indexed by (the normalized tensor, or
    `StreamedViews`) and `labels` the source's labels.
    """

    def __init__(self, settings: PoolSettings, make_net: Callable[[int], torch.nn.Module], images, labels: torch.Tensor,
                 seed: int, device):
        self.settings, self.make_net, self.images = settings, make_net, images
        self.labels, self.seed, self.device = labels.long().to(device), int(seed), torch.device(device)
        self.slots: list[Slot] = []
        self.next_serial = 0

    # -- the queue -------------------------------------------------------------------------------
    def _new_slot(self) -> Slot:
        s = self.settings
        serial = self.next_serial
        self.next_serial += 1
        net = self.make_net(derive_seed(self.seed, "pool-net", serial)).to(self.device)
        _freeze(net)
        slot = Slot(net, [torch.zeros_like(p) for p in net.parameters()], serial)
        self._train(slot, s.warmup_steps, generator(self.seed, "pool-warmup", serial))
        return slot

    def fill(self) -> None:
        """Build the networks still missing (all of them at the first iteration)."""
        while len(self.slots) < self.settings.size:
            self.slots.append(self._new_slot())

    def refresh(self, iteration: int) -> None:
        """Replace the oldest network by a fresh one when `iteration` is a refresh point."""
        every = self.settings.refresh_every
        if every and iteration > 0 and iteration % every == 0 and self.slots:
            self.slots.pop(min(range(len(self.slots)), key=lambda k: self.slots[k].serial))
            self.slots.append(self._new_slot())

    def pick(self, iteration: int) -> Slot | None:
        """The network to embed with at `iteration`, or None for a fresh random one (`fresh_fraction`)."""
        gen = generator(self.seed, "pool-pick", iteration)
        fresh = float(torch.rand(1, generator=gen)) < self.settings.fresh_fraction
        k = int(torch.randint(len(self.slots), (1,), generator=gen))
        return None if fresh else self.slots[k]

    def train(self, slot: Slot, iteration: int) -> None:
        """The used network's `train_steps` more steps on real data."""
        self._train(slot, self.settings.train_steps, generator(self.seed, "pool-train", iteration))

    def _train(self, slot: Slot, steps: int, gen: torch.Generator) -> None:
        if steps <= 0:
            return
        s, net, n = self.settings, slot.net, len(self.labels)
        params = list(net.parameters())
        net.train()
        for p in params:
            p.requires_grad_(True)
        draws = [torch.randint(n, (s.batch,), generator=gen) for _ in range(steps)]
        for idx, x in zip(draws, batches_at(self.images, draws)):
            y = self.labels[idx.to(self.device)]
            logits = net(x)
            for p in params:
                p.grad = None
            F.cross_entropy(logits, y).backward()
            sgd_step(params, slot.momentum, s.lr, s.momentum, s.weight_decay)
            slot.steps += 1
            slot.accuracy = float((logits.detach().argmax(1) == y).float().mean())
        _freeze(net)

    # -- checkpoints -----------------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        """The whole state as named arrays (for a work-item checkpoint)."""
        out = {f"{PREFIX}next_serial": np.array([self.next_serial], dtype=np.int64),
               f"{PREFIX}meta": np.array([[s.serial, s.steps] for s in self.slots], dtype=np.int64).reshape(-1, 2),
               f"{PREFIX}accuracy": np.array([s.accuracy for s in self.slots], dtype=np.float64)}
        for k, slot in enumerate(self.slots):
            for i, t in enumerate(slot.net.state_dict().values()):
                out[f"{PREFIX}{k}.state{i}"] = t.detach().cpu().numpy()
            for i, buf in enumerate(slot.momentum):
                out[f"{PREFIX}{k}.momentum{i}"] = buf.detach().cpu().numpy()
        return out

    def restore(self, arrays: dict[str, np.ndarray]) -> None:
        """Rebuild the state `arrays()` saved."""
        self.slots = []
        self.next_serial = int(arrays[f"{PREFIX}next_serial"][0])
        accuracy = arrays[f"{PREFIX}accuracy"]
        for k, (serial, steps) in enumerate(arrays[f"{PREFIX}meta"].tolist()):
            net = self.make_net(derive_seed(self.seed, "pool-net", serial)).to(self.device)
            keys = list(net.state_dict())
            net.load_state_dict({key: torch.from_numpy(arrays[f"{PREFIX}{k}.state{i}"]) for i, key in enumerate(keys)})
            _freeze(net)
            momentum = [torch.from_numpy(arrays[f"{PREFIX}{k}.momentum{i}"]).to(p.device, p.dtype).clone()
                        for i, p in enumerate(net.parameters())]
            self.slots.append(Slot(net, momentum, int(serial), int(steps), float(accuracy[k])))


def pool_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The pool's part of a checkpoint's arrays."""
    return {k: v for k, v in arrays.items() if k.startswith(PREFIX)}


def class_regularizer(net: torch.nn.Module, embeddings: torch.Tensor, labels: torch.Tensor, weight: float,
                      accuracy: float) -> torch.Tensor:
    """IDM's class-aware term: weight × (the network's training accuracy) × CE(classifier(embeddings), labels).

    `embeddings` are the synthetic images' (augmented) embeddings the matching loss already
    computed, so the term costs one linear layer. Weighting by the network's accuracy on real data
    (IDM weights by its running training accuracy) lets a barely trained network's guesses count
    for little.
    """
    return weight * accuracy * F.cross_entropy(net.classifier(embeddings), labels)


def _freeze(net: torch.nn.Module) -> None:
    """Parameters out of autograd while the network only embeds (gradients go to the pixels alone)."""
    for p in net.parameters():
        p.requires_grad_(False)
