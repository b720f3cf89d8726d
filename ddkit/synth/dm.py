"""Distribution Matching (Zhao & Bilen, "Dataset Condensation with Distribution Matching", WACV 2023).

Synthetic images, initialised from real images of their class, are moved so that a randomly initialised
network embeds them, on average per class, where it embeds that class's real images:

    L = Σ_c ‖ mean_i φ_θ(A_ω(x_c,i)) − mean_j φ_θ(A_ω(s_c,j)) ‖²

with a fresh, frozen θ every iteration, the same DSA parameters ω for the real and the synthetic rows of
a class, real embeddings detached, and SGD with momentum on the pixels. No teacher is needed; when
teachers are given, their mean logits on the final images are stored as soft labels.

IDM's additions (Zhao et al., CVPR 2023), each off by default: `formation=n` stores each image as an
n×n grid whose cells, upsampled, are the matched (and the stored) training instances
(`ddkit.store.formation`; the pixels are optimized through the decode, and the images start as
tiles of n² downscaled real images); `pool_size > 0` embeds with networks from a trained model pool
(`ddkit.synth.pools`) instead of a fresh random network every iteration, and `class_reg` adds the
pool network's cross-entropy on the synthetic instances.

All classes go through the embedding network together, in one pass on a GPU and in cache-sized chunks on
a CPU (the per-class loop of the original code gives the same loss for a network without batch
statistics); a network with batch norm is run class by class, so each class keeps its own batch
statistics as in the paper.

Under torchrun the classes are shared over the ranks (`ClassShare`): class c's images get gradient from
class c's term only, so each rank optimizes its classes' images, and the ranks' rows meet again at each
checkpoint and at the end. Every rank draws an iteration's randomness for all classes and keeps its
share, so the file is the one a single process writes.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from dataclasses import dataclass

import numpy as np
import torch

from ddkit import distributed
from ddkit.augment import DSA, DSA_STRATEGY, take_rows
from ddkit.data.base import Normalization, class_balanced_indices
from ddkit.data.stream import batches_at, normalized_source
from ddkit.errors import InvalidInput
from ddkit.models import create_model, has_batchnorm, parse_model_options
from ddkit.progress import progress
from ddkit.seeding import derive_seed, generator
from ddkit.store import DistilledSet, LogitsLabels
from ddkit.store.formation import MultiFormation, formation_from_factor
from ddkit.synth.base import Synthesizer, pick_real, register_synthesizer, say, static_labels
from ddkit.synth.pools import ModelPool, PoolSettings, class_regularizer, pool_arrays
from ddkit.workitems import WorkItemStore

# `preset=paper`: the published recipe (Zhao & Bilen, WACV 2023, §4 and the official main_DM.py):
# 20 000 iterations, ConvNet-3 width 128 with instance norm, 256 real images per class, SGD on the
# pixels with lr 1 and momentum 0.5, DSA color_crop_cutout_flip_scale_rotate, real initialisation.
DM_PRESETS = {
    "paper": {"iterations": 20000, "net": "convnet", "net_options": "depth=3,width=128,norm=instance",
              "batch_real": 256, "lr_img": 1.0, "momentum": 0.5, "dsa": DSA_STRATEGY, "init": "real"},
}


@dataclass
class DMConfig:
    """DM's options. The paper's values are lr_img 1, momentum 0.5, batch_real 256 and 20 000 iterations
    with a width-128 ConvNet (`preset=paper`); the defaults here are the CPU choice (see BENCHMARKS.md,
    section `matching`)."""

    iterations: int = 1000
    lr_img: float = 1.0  # on normalized pixels, as in the paper
    momentum: float = 0.5
    batch_real: int = 64  # real images per class per iteration (paper: 256)
    init: str = "real"  # real | noise
    dsa: str = DSA_STRATEGY  # DSA groups joined by "_", or "none"
    net: str = "convnet"  # any registered model; its embedding is the classifier's input
    net_options: str = "depth=3,width=32,norm=instance"  # the CPU protocols' student; "" for the model's defaults
    checkpoint_every: int = 100  # iterations between resumable checkpoints in the work folder
    forward_chunk: int = 0  # images per forward pass: 0 = 32 on a CPU (cache-sized), all at once on a GPU
    formation: int = 1  # multi-formation factor n (IDC/IDM): each stored image decodes into n² instances
    pool_size: int = 0  # IDM model pool: networks kept and trained on real data; 0 = a fresh net every iteration
    pool_warmup_steps: int = 10  # real-data SGD steps a pool network gets before its first use
    pool_train_steps: int = 1  # more steps for a pool network each time it is used
    pool_refresh_every: int = 50  # iterations between replacing the oldest pool network; 0 = never
    pool_fresh_fraction: float = 0.0  # share of iterations that still use a fresh random network
    pool_lr: float = 0.01  # SGD on the pool networks (momentum 0.9, weight decay 5e-4, as IDM's)
    pool_batch: int = 256  # real images per pool training step
    class_reg: float = 0.0  # IDM's class-aware term: weight × net accuracy × CE of the pool net on the instances
    preset: str = ""  # "paper": the published recipe (DM_PRESETS); options given beside it override it

    @classmethod
    def preset_values(cls, name: str, **_) -> dict:
        if name not in DM_PRESETS:
            raise InvalidInput(f"dm has no preset {name!r}", f"use one of {', '.join(DM_PRESETS)}")
        return dict(DM_PRESETS[name])

    def check(self) -> None:
        if self.iterations < 0 or self.batch_real < 1 or self.checkpoint_every < 1 or self.forward_chunk < 0:
            raise InvalidInput("dm: iterations and forward_chunk must be ≥ 0, batch_real and checkpoint_every ≥ 1")
        if self.init not in ("real", "noise"):
            raise InvalidInput(f"dm: init must be real or noise, got {self.init!r}")
        if self.preset and self.preset not in DM_PRESETS:
            raise InvalidInput(f"dm has no preset {self.preset!r}", f"use one of {', '.join(DM_PRESETS)}")
        if self.lr_img <= 0 or not 0 <= self.momentum < 1:
            raise InvalidInput("dm: lr_img must be > 0 and momentum in [0, 1)")
        if isinstance(self.formation, bool) or not isinstance(self.formation, int) or self.formation < 1:
            raise InvalidInput(f"dm: formation must be an integer ≥ 1, got {self.formation!r}",
                               "formation=1 stores plain images; 2 or 3 decode each into 4 or 9 instances")
        self.pool_settings().check("dm")
        if self.class_reg < 0:
            raise InvalidInput(f"dm: class_reg must be ≥ 0, got {self.class_reg}")
        if self.class_reg and not self.pool_size:
            raise InvalidInput("dm: class_reg needs a trained model pool (a random net's predictions mean nothing)",
                               "add pool_size=N (e.g. 10), or drop class_reg")
        self.augmentation()  # unknown DSA groups fail before any work

    def pool_settings(self) -> PoolSettings:
        return PoolSettings(size=self.pool_size, warmup_steps=self.pool_warmup_steps, train_steps=self.pool_train_steps,
                            refresh_every=self.pool_refresh_every, fresh_fraction=self.pool_fresh_fraction,
                            lr=self.pool_lr, batch=self.pool_batch)

    def decoder(self) -> MultiFormation | None:
        """The formation the stored images decode with (None: plain images)."""
        return formation_from_factor(self.formation)

    def augmentation(self) -> DSA | None:
        if self.dsa in ("", "none"):
            return None
        try:
            return DSA(self.dsa)
        except ValueError as exc:
            raise InvalidInput(f"dm: {exc}") from None

    def net_kwargs(self) -> dict:
        return parse_model_options(self.net_options)


def class_means(embeddings: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class mean of class-major rows (equal rows per class): C×D."""
    return embeddings.view(num_classes, -1, embeddings.shape[-1]).mean(1)


def embed(net, x: torch.Tensor, chunk: int = 0) -> torch.Tensor:
    """The features a DM network matches: the classifier's input (pooled last feature map), computed
    `chunk` images at a time (0: all at once). Without batch statistics the result does not depend on
    the chunking; on a CPU, cache-sized chunks run faster than one large batch."""
    if chunk <= 0 or len(x) <= chunk:
        return net.pool(net.features(x))
    return torch.cat([net.pool(net.features(part)) for part in x.split(chunk)])


def class_terms(net, real: torch.Tensor, syn: torch.Tensor, num_classes: int, dsa: DSA | None,
                gen: torch.Generator, chunk: int = 0, classes: torch.Tensor | None = None) -> torch.Tensor:
    """‖mean φ(A(real_c)) − mean φ(A(syn_c))‖² for each class c of `classes` (default all `num_classes`),
    for class-major `real` (B rows per class of `classes`) and `syn` (S rows per class).

    One DSA parameter set is sampled for all `num_classes` classes (C units of max(B, S) rows) and
    class c takes its unit, so a process that holds only some classes applies exactly the views
    the whole run would; row i of class c's real and synthetic batch share parameter row i, as
    DSA's siamese re-seeding does.
    """
    return matching_terms(net, real, syn, num_classes, dsa, gen, chunk, classes)[0]


def matching_terms(net, real: torch.Tensor, syn: torch.Tensor, num_classes: int, dsa: DSA | None,
                   gen: torch.Generator, chunk: int = 0,
                   classes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`class_terms` and the synthetic rows' embeddings φ(A(syn)) they used (for a term on top, such
    as IDM's class-aware regularizer)."""
    classes = torch.arange(num_classes) if classes is None else torch.as_tensor(classes)
    k = len(classes)
    b, s = len(real) // k, len(syn) // k
    if dsa is not None:
        width = max(b, s)
        params = dsa.sample((num_classes * width, *real.shape[1:]), gen, units=num_classes)
        base = classes.view(-1, 1) * width
        real = dsa.apply(real, take_rows(params, (base + torch.arange(b)).flatten()))
        syn = dsa.apply(syn, take_rows(params, (base + torch.arange(s)).flatten()))
    if has_batchnorm(net):  # batch statistics must stay per class, as in the paper's per-class passes
        with torch.no_grad():
            mean_real = torch.stack([embed(net, r).mean(0) for r in real.split(b)])
        emb_syn = torch.cat([embed(net, x) for x in syn.split(s)])
    else:
        with torch.inference_mode():
            mean_real = class_means(embed(net, real, chunk), k)
        mean_real = mean_real.clone()  # a normal tensor again, usable beside the autograd graph
        emb_syn = embed(net, syn, chunk)
    return (mean_real - class_means(emb_syn, k)).square().sum(1), emb_syn


def matching_loss(net, real: torch.Tensor, syn: torch.Tensor, num_classes: int, dsa: DSA | None,
                  gen: torch.Generator, chunk: int = 0) -> torch.Tensor:
    """Σ_c ‖mean φ(A(real_c)) − mean φ(A(syn_c))‖² over all classes (`class_terms`, summed)."""
    return class_terms(net, real, syn, num_classes, dsa, gen, chunk).sum()


def real_positions(class_rows: list[torch.Tensor], size: int, gen: torch.Generator) -> torch.Tensor:
    """`size` random positions of every class (all of a smaller class's, repeated to size), class-major;
    `class_rows` are the source's `class_indices()`."""
    picks = []
    for rows in class_rows:
        order = torch.randperm(len(rows), generator=gen)
        picks.append(rows[order.repeat(size // len(rows) + 1)[:size]])
    return torch.cat(picks)


def clamp_pixels(z: torch.Tensor, normalization: Normalization) -> torch.Tensor:
    """Normalized images whose pixels lie in [0, 1]."""
    return normalization.apply(normalization.invert(z).clamp_(0.0, 1.0))


@dataclass
class DMState:
    """Where a DM optimisation stands: normalized stored images (class-major), their momentum,
    iterations done, and the model pool (IDM) once `optimize` has built it."""

    images: torch.Tensor
    velocity: torch.Tensor
    iteration: int = 0
    pool: ModelPool | None = None
    saved_pool: dict[str, np.ndarray] | None = None  # a checkpointed pool `optimize` has not rebuilt yet

    def arrays(self) -> dict[str, np.ndarray]:
        pool = self.pool.arrays() if self.pool is not None else (self.saved_pool or {})
        return {"iteration": np.array([self.iteration]), "images": self.images.cpu().numpy(),
                "velocity": self.velocity.cpu().numpy(), **pool}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], device) -> "DMState":
        return cls(torch.from_numpy(arrays["images"]).to(device), torch.from_numpy(arrays["velocity"]).to(device),
                   int(arrays["iteration"][0]), saved_pool=pool_arrays(arrays) or None)


def initial_state(source, ipc: int, config: DMConfig, seed: int, device):
    """The seeded, class-balanced real images DM starts from (or noise), and their source rows.

    With a formation of factor n, ipc·n² real images per class are drawn and each stored image
    starts as n² of them shrunk into its grid cells (IDC's 'mix' initialisation), so its decoded
    instances start as (blurred) real images.
    """
    decoder = config.decoder()
    per_image = 1 if decoder is None else decoder.per_image
    picked = pick_real(source, class_balanced_indices(source, ipc * per_image, seed, salt="dm-init"))  # class-major
    if config.init == "real":
        z = picked.normalized() if decoder is None else decoder.encode(picked.normalized())
    else:
        shape = (ipc * source.info.num_classes, *source.info.image_shape)
        z = source.info.normalization.apply(torch.rand(shape, generator=generator(seed, "dm-noise")))
    return DMState(z.to(device), torch.zeros_like(z, device=device)), picked


def optimize(source, state: DMState, config: DMConfig, seed: int, device, stop: int | None = None,
             classes: list[int] | None = None):
    """Run DM iterations from `state` (in place) up to `stop` (default: config.iterations), yielding
    each iteration's per-class loss terms (`class_terms`, float32 on the CPU; their sum is the
    loss); every iteration's randomness depends only on (seed, iteration), so a resumed run equals
    an uninterrupted one.

    `classes` (default all): the classes whose images this call optimizes, the others' rows of
    `state` are left as they are. Class c's images get gradient from class c's term only, and the
    iteration's draws (real positions, DSA parameters, network) are made for every class and then
    taken for `classes`, so ranks that split the classes compute exactly the rows one process would.

    Each iteration reads only its `batch_real` images per class of `classes` from the source: indexed
    in the normalized tensor of an in-memory source, decoded a few iterations ahead for a streamed one.
    With a formation, the loss is on the decoded instances and its gradient flows through the decode
    to the stored pixels. With a model pool, the pool is built at the first iteration (or restored
    from `state.saved_pool`) and kept in `state.pool`, so its state is checkpointed with the images;
    every rank trains the same pool (its draws are seeded), so the ranks embed with the same networks.
    """
    config.check()
    info = source.info
    class_rows = source.class_indices()
    dsa, net_kwargs = config.augmentation(), config.net_kwargs()
    chunk = config.forward_chunk or (32 if torch.device(device).type == "cpu" else 0)
    decoder = config.decoder()
    if decoder is not None:
        decoder.check(info.image_shape)

    def make_net(net_seed: int):
        return create_model(config.net, info.image_shape[0], info.image_shape[1], info.num_classes,
                            seed=net_seed, **net_kwargs)

    pool = state.pool
    real_images = pool.images if pool is not None else normalized_source(source, device)  # one copy, not two
    if config.pool_size and pool is None:
        pool = ModelPool(config.pool_settings(), make_net, real_images, source.labels, seed, device)
        if state.saved_pool:
            pool.restore(state.saved_pool)
        state.pool, state.saved_pool = pool, None
    mine = torch.arange(info.num_classes) if classes is None else torch.as_tensor(classes, dtype=torch.long)
    rows = synthetic_rows(mine, len(state.images) // info.num_classes)
    syn_labels = None
    if config.class_reg:
        per_class = len(state.images) // info.num_classes * (decoder.per_image if decoder is not None else 1)
        syn_labels = mine.to(device).repeat_interleave(per_class)

    def draws():  # each iteration's generator, after it drew that iteration's real positions (of every class)
        for it in range(state.iteration, config.iterations if stop is None else stop):
            gen = generator(seed, "dm-iteration", it)
            positions = real_positions(class_rows, config.batch_real, gen).view(info.num_classes, -1)
            yield it, gen, positions[mine].flatten()

    plan, ahead = itertools.tee(draws())
    reals = batches_at(real_images, (positions for _, _, positions in ahead))
    for (it, gen, _), real in zip(plan, reals):
        slot = None
        if pool is not None:
            pool.fill()  # the first iteration builds the pool
            pool.refresh(it)
            slot = pool.pick(it)
        net = make_net(derive_seed(seed, "dm-net", it)).to(device) if slot is None else slot.net
        net.train()  # batch-norm nets use batch statistics, as in the paper
        for p in net.parameters():
            p.requires_grad_(False)
        z = state.images[rows].requires_grad_(True)
        syn = z if decoder is None else decoder.decode(z)
        terms, emb_syn = matching_terms(net, real, syn, info.num_classes, dsa, gen, chunk, mine)
        loss = terms.sum()
        if syn_labels is not None and slot is not None:  # the CE is a mean over all classes' instances
            share = len(mine) / info.num_classes
            loss = loss + share * class_regularizer(net, emb_syn, syn_labels, config.class_reg, slot.accuracy)
        (grad,) = torch.autograd.grad(loss, z)
        z.requires_grad_(False)
        if slot is not None:
            pool.train(slot, it)
        with torch.no_grad():
            velocity = state.velocity[rows].mul_(config.momentum).add_(grad)
            z.sub_(config.lr_img * velocity)
            state.velocity[rows], state.images[rows] = velocity, clamp_pixels(z, info.normalization)
        state.iteration = it + 1
        yield terms.detach().cpu()


def synthetic_rows(classes: torch.Tensor, ipc: int) -> torch.Tensor:
    """The rows of `classes` in a class-major synthetic set of `ipc` images per class."""
    return (torch.as_tensor(classes, dtype=torch.long).view(-1, 1) * ipc + torch.arange(ipc)).flatten()


@dataclass
class ClassShare:
    """DM's classes shared over torchrun ranks (round robin; a world of one holds them all), and the
    meeting of the ranks' results: rows are broadcast from their owner, never summed, so every rank
    ends with the bytes one process would have computed."""

    owners: list[list[int]]  # the classes of each rank
    rank: int
    ipc: int

    @classmethod
    def of(cls, num_classes: int, ipc: int) -> "ClassShare":
        w = distributed.world()
        if w.size > num_classes:
            raise InvalidInput(f"dm shares its {num_classes} classes over the processes: {w.size} would leave "
                               "some idle", f"run with --nproc {num_classes} or fewer")
        classes = list(range(num_classes))
        return cls([distributed.shard(classes, distributed.World(r, w.size)) for r in range(w.size)], w.rank, ipc)

    @property
    def mine(self) -> list[int]:
        return self.owners[self.rank]

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather(self, *tensors: torch.Tensor) -> None:
        """Fill the other ranks' class rows of class-major synthetic tensors (images, momentum), in place."""
        rows = [synthetic_rows(torch.tensor(c, dtype=torch.long), self.ipc) for c in self.owners]
        for t in tensors:
            distributed.share_rows(t, rows)

    def loss_totals(self, recent: list[torch.Tensor]) -> list[float]:
        """Each of the `recent` iterations' loss over all classes, from this rank's per-class terms:
        gathered into one class × iteration table and summed in class order, as one process sums."""
        if not recent:  # the same on every rank: they ran the same iterations
            return []
        table = torch.zeros(sum(map(len, self.owners)), len(recent))
        table[self.mine] = torch.stack(recent, 1)
        distributed.share_rows(table, [torch.tensor(c, dtype=torch.long) for c in self.owners])
        return table.sum(0).tolist()


@register_synthesizer
class DM(Synthesizer):
    """Distribution Matching (Zhao & Bilen 2023): match per-class mean embeddings of random networks."""

    name = "dm"
    version = "1"
    Config = DMConfig

    def synthesize(self, source, teachers, ipc, config: DMConfig, seed, device, workdir=None):
        config.check()
        info = source.info
        decoder = config.decoder()
        if decoder is not None:
            decoder.check(info.image_shape)  # a factor too large for the images fails before any work
        share = ClassShare.of(info.num_classes, ipc)  # this rank's classes (all of them in a world of one)
        state, picked = initial_state(source, ipc, config, seed, device)
        create_model(config.net, info.image_shape[0], info.image_shape[1], info.num_classes, **config.net_kwargs())

        store = WorkItemStore(workdir, {
            "method": self.name, "method_version": self.version, "config": dataclasses.asdict(config), "seed": seed,
            "ipc": ipc, "dataset": info.name, "source_ids_sha256": source.ids_sha256(),
        })
        every = config.checkpoint_every
        done = store.done(self.checkpoint_key(i) for i in range(every, config.iterations + 1, every))
        if done:
            state = DMState.from_arrays(store.load(done[-1]), device)
            say(f"dm: resuming at iteration {state.iteration} of {config.iterations}")

        recent = collections.deque(maxlen=10)  # per-class loss terms of the last iterations (this rank's classes)
        bar = progress(total=config.iterations, initial=state.iteration, desc=f"dm ipc {ipc}")
        for terms in optimize(source, state, config, seed, device, classes=share.mine):
            recent.append(terms)
            bar.update(1)
            if state.iteration % 10 == 0:  # under torchrun: rank 0's classes
                bar.set_postfix(loss=f"{np.mean([float(t.sum()) for t in recent]):.3f}")
            if state.iteration % every == 0:
                share.gather(state.images, state.velocity)  # a checkpoint holds every class: any world size resumes it
                if share.is_main:
                    store.save(self.checkpoint_key(state.iteration), state.arrays())
                    if state.iteration > every:  # only the newest checkpoint is needed (a pool's can be large)
                        store.discard(self.checkpoint_key(state.iteration - every))
        bar.close()
        share.gather(state.images)
        totals = share.loss_totals(list(recent))

        pixels = info.normalization.invert(state.images.cpu()).clamp_(0.0, 1.0)
        derived = {"init_source_ids": picked.ids.tolist(), "net_kwargs": config.net_kwargs(),
                   "final_loss": float(np.mean(totals)) if totals else None}
        per_image = 1 if decoder is None else decoder.per_image
        dset = DistilledSet.from_source(
            source, method=self.name, method_version=self.version, config={**dataclasses.asdict(config), **derived},
            seed=seed, images=pixels, labels=picked.labels[::per_image], ipc=ipc, formation=decoder,
            teachers=[t.header.summary() for t in teachers],
        )
        if teachers:
            instances = pixels if decoder is None else decoder.decode(pixels).clamp_(0.0, 1.0)
            dset.soft["logits"] = LogitsLabels(static_labels(teachers, instances, info.normalization, device), meta={
                "recipe": "mean of the teachers' logits on the final distilled images"
                          + ("" if decoder is None else " (their decoded instances)"),
                "teachers": [t.header.tensors_sha256 for t in teachers],
            })
        return dset

    @staticmethod
    def checkpoint_key(iteration: int) -> str:
        return f"iter-{iteration:07d}"
