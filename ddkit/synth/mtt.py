"""MTT (Cazenavette et al., CVPR 2022): synthetic images that move a student along an expert's
trajectory, with the meta-gradient computed in memory independent of the unroll length (TESLA).

Each iteration picks an expert and a start epoch t ≤ max_start_epoch, starts a student at the
expert's θ*_t and takes `syn_steps` (N) SGD steps on minibatches of the DSA-augmented synthetic set
with a learnable step size α; the loss is ‖θ_N − θ*_{t+M}‖² / ‖θ*_t − θ*_{t+M}‖². The images (SGD,
momentum 0.5) and α (SGD, momentum 0.5) follow its gradient; the images are clamped to valid pixels
after every update.

The meta-gradient. With θ_{i+1} = θ_i − α g_i, g_i = ∇_θ ℓ(θ_i; X_i), the chain rule run backwards
from a = ∂L/∂θ_N gives, for i = N−1 … 0:
    ∂L/∂X_i += −α (∂g_i/∂X_i)ᵀ a,   ∂L/∂α += −⟨a, g_i⟩,   a ← a − α (∂g_i/∂θ_i)ᵀ a.
`meta_grad=constant` (default) keeps only the N+1 parameter vectors and each step's minibatch
indices and augmentation parameters from the forward pass, and rebuilds one step's graph at a time
in the backward pass (two vector-Jacobian products of g_i), so activation memory does not grow with
N (TESLA, Cui et al., ICML 2023; exact, not an approximation). `meta_grad=unrolled` backpropagates
through the whole unrolled graph like the original code; it gives the same numbers and is kept for
the memory benchmark and the equality test.

Where the images live. The student and the experts see normalized images, so the optimized
variable is the normalized image (as in the official code, so lr_img means the same there); its
valid range is the normalization of [0, 1], to which it is clamped; the file stores the pixels.

Formation. `formation=n` stores each image as an n×n grid whose cells, upsampled, are the training
instances (`ddkit.store.formation`, IDC): the student trains on the decoded instances, the
meta-gradient with respect to them is carried through the decode to the stored pixels, and the
images start as tiles of n² downscaled real images.

Labels. Hard labels by default. `learn_labels=true` (DATM, Guo et al. ICLR 2024) learns one logit
vector per image, initialised from the first expert's final-epoch logits on the initial images;
the student is trained on their softmax, and the file stores them in `/soft/logits`.

The experts file is read epoch by epoch (`ddkit.experts.ExpertParams`): an iteration reads its start
and target vectors, never the whole buffer.

Resume: every `checkpoint_every` iterations the images, α, the labels, the optimizers' momentum
buffers and the loss history go to `OUT.work/state.safetensors` with the run's identity; each
iteration's randomness comes from `derive_seed(seed, iteration)`, so a resumed run equals an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch.func import functional_call

from ddkit import distributed
from ddkit.augment import build_augmentation
from ddkit.data.base import class_balanced_indices
from ddkit.errors import FileFormatError, InvalidInput
from ddkit.experts import load_experts, unflatten
from ddkit.fileio import atomic_output
from ddkit.progress import progress
from ddkit.seeding import generator
from ddkit.store import DistilledSet, LogitsLabels
from ddkit.store.formation import formation_from_factor
from ddkit.synth.base import Synthesizer, pick_real, register_synthesizer, say

META_GRADS = ("constant", "unrolled")
LABEL_STORAGE = ("auto", "hard", "logits")
STATE_FILE = "state.safetensors"


# `preset=paper`: MTT's published recipe (Cazenavette et al., CVPR 2022) for 32-px ConvNet-3 data;
# CIFAR-10 is the paper's dataset of this size with rows for IPC 1 / 10 / 50 (it has no Fashion-MNIST
# row). Per IPC row, from the paper's hyper-parameter table (appendix): syn_steps N, expert_epochs M,
# max_start_epoch T+, the step-size learning rate, the experts' lr 0.01 as α's start, the whole
# synthetic set per student step; 5000 distillation iterations. lr_img: the paper tuned the pixel
# learning rate on ZCA-whitened CIFAR-10, which ddkit does not use; 1000 (ddkit's default and the
# README's value for runs on normalized pixels) is kept for every row. The experts are an input: the
# paper's buffer is 100 ConvNet-3 (width 128, instance norm) experts × 50 epochs of plain SGD, lr
# 0.01: `ddkit experts train --experts 100` (its other defaults are the paper's).
MTT_PAPER_ROWS = {  # IPC row -> values; an IPC uses the row of the smallest published IPC ≥ it (50 above)
    1: {"syn_steps": 50, "expert_epochs": 2, "max_start_epoch": 2, "lr_lr": 1e-7},
    10: {"syn_steps": 30, "expert_epochs": 2, "max_start_epoch": 20, "lr_lr": 1e-5},
    50: {"syn_steps": 30, "expert_epochs": 2, "max_start_epoch": 40, "lr_lr": 1e-5},
}
MTT_PAPER_COMMON = {"iterations": 5000, "lr_img": 1000.0, "lr_init": 0.01, "batch_syn": 0, "augmentation": "dsa",
                    "model": "convnet"}
MTT_PAPER_EXPERTS = (100, 50)  # the paper's buffer: experts × epochs


def mtt_paper_preset(ipc: int) -> dict:
    """The `preset=paper` values for a budget of `ipc` images per class."""
    row = next((r for r in sorted(MTT_PAPER_ROWS) if ipc <= r), max(MTT_PAPER_ROWS))
    return {**MTT_PAPER_COMMON, **MTT_PAPER_ROWS[row]}


@dataclass
class MTTConfig:
    """Defaults: the paper's CIFAR-10 / Fashion-MNIST IPC-10 settings (ConvNet experts, lr 0.01)."""

    experts: str = ""  # path of a .experts.h5 file (`ddkit experts train`), required
    syn_steps: int = 30  # N: student steps on the synthetic set per iteration
    expert_epochs: int = 2  # M: the target is the expert M epochs after the start
    max_start_epoch: int = 20  # start epoch t is drawn from 0..max_start_epoch
    iterations: int = 5000
    lr_img: float = 1000.0  # SGD (momentum 0.5) on the normalized images
    lr_lr: float = 1e-5  # SGD (momentum 0.5) on the student step size α
    lr_init: float = 0.0  # α's initial value; 0 = the experts' lr
    batch_syn: int = 0  # synthetic images per student step; 0 = all of them
    augmentation: str = "dsa"  # applied to each student minibatch, one sampled parameter set per step
    learn_labels: bool = False  # DATM: learnable soft labels initialised from an expert's logits
    lr_labels: float = 2.0  # SGD (momentum 0.5) on the label logits
    labels: str = "auto"  # what the file stores: hard | logits | auto (logits when learned, else hard)
    meta_grad: str = "constant"  # constant (TESLA, memory independent of syn_steps) | unrolled
    model: str = ""  # if set, the experts must be of this architecture
    checkpoint_every: int = 100  # iterations between resume checkpoints in OUT.work/
    formation: int = 1  # multi-formation factor n (IDC): each stored image decodes into n² training instances
    preset: str = ""  # "paper": the published recipe for the run's IPC (MTT_PAPER_ROWS); explicit options override it

    @classmethod
    def preset_values(cls, name: str, ipc: int | None = None, **_) -> dict:
        if name != "paper":
            raise InvalidInput(f"mtt has no preset {name!r}", "use preset=paper")
        if ipc is None:
            raise InvalidInput("mtt's paper preset depends on the IPC", "build the config with the run's ipc")
        return mtt_paper_preset(int(ipc))

    def check(self) -> None:
        if not self.experts:
            raise InvalidInput(
                "method mtt needs an experts file",
                "pass --config experts=X.experts.h5 (train one with `ddkit experts train`)",
            )
        if self.preset not in ("", "paper"):
            raise InvalidInput(f"mtt has no preset {self.preset!r}", "use preset=paper")
        if self.meta_grad not in META_GRADS:
            raise InvalidInput(
                f"mtt option meta_grad={self.meta_grad!r} is unknown", f"use one of {', '.join(META_GRADS)}"
            )
        if self.labels not in LABEL_STORAGE:
            raise InvalidInput(
                f"mtt option labels={self.labels!r} is unknown", f"use one of {', '.join(LABEL_STORAGE)}"
            )
        if self.learn_labels and self.labels == "hard":
            raise InvalidInput(
                "mtt with learn_labels=true learns soft labels, but labels=hard asks to store hard labels only",
                "use labels=logits (or auto), or learn_labels=false",
            )
        if self.labels == "logits" and not self.learn_labels:
            raise InvalidInput(
                "mtt stores logits only when it learns them", "add learn_labels=true, or use labels=hard"
            )
        for name in ("syn_steps", "expert_epochs", "iterations", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"mtt option {name}={getattr(self, name)} must be at least 1")
        if self.max_start_epoch < 0 or self.batch_syn < 0:
            raise InvalidInput(
                f"mtt needs max_start_epoch ≥ 0 and batch_syn ≥ 0, got {self.max_start_epoch}, {self.batch_syn}"
            )
        if isinstance(self.formation, bool) or not isinstance(self.formation, int) or self.formation < 1:
            raise InvalidInput(f"mtt option formation must be an integer ≥ 1, got {self.formation!r}",
                               "formation=1 stores plain images; 2 or 3 decode each into 4 or 9 instances")
        if self.lr_img <= 0 or self.lr_lr < 0 or self.lr_init < 0 or self.lr_labels <= 0:
            raise InvalidInput("mtt needs lr_img > 0, lr_labels > 0, lr_lr ≥ 0 and lr_init ≥ 0")
        build_augmentation(self.augmentation)


# -- the meta-gradient ----------------------------------------------------------------------------


class MetaGrad(NamedTuple):
    loss: float
    images: torch.Tensor  # ∂L/∂images, same shape as the images
    alpha: torch.Tensor  # ∂L/∂α, 0-d
    labels: torch.Tensor | None  # ∂L/∂label logits when they are learned


class StudentSteps(NamedTuple):
    """Everything an unroll needs besides the images: the student and each step's recorded randomness."""

    model: torch.nn.Module
    layout: list
    batches: list  # index tensor per step
    augment: object  # a ddkit.augment Transform
    aug_params: list  # the parameters sampled for each step


def step_loss(steps: StudentSteps, i: int, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """ℓ(θ; X_i): cross-entropy of the student at flat parameters θ on step i's augmented minibatch
    `x` (already indexed); `y` are hard labels (int) or label logits (float, softmax targets)."""
    logits = functional_call(
        steps.model, unflatten(theta, steps.layout), (steps.augment.apply(x, steps.aug_params[i]),)
    )
    if y.dtype.is_floating_point:
        return F.cross_entropy(logits, torch.softmax(y, 1))
    return F.cross_entropy(logits, y)


def matching_loss(theta_n: torch.Tensor, start: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """‖θ_N − θ*_{t+M}‖² / ‖θ*_t − θ*_{t+M}‖²."""
    return ((theta_n - target) ** 2).sum() / ((start - target) ** 2).sum()


def meta_gradient_constant(
    steps: StudentSteps,
    images: torch.Tensor,
    labels: torch.Tensor,
    alpha: torch.Tensor,
    start: torch.Tensor,
    target: torch.Tensor,
    learn_labels: bool = False,
) -> MetaGrad:
    """The exact meta-gradient with one step's graph alive at a time (see the module docstring)."""
    images, labels, a_ = images.detach(), labels.detach(), float(alpha.detach())
    thetas = [start.detach()]
    for i, idx in enumerate(steps.batches):  # forward: keep only the parameter vectors
        theta = thetas[-1].requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(step_loss(steps, i, theta, images[idx], labels[idx]), theta)
        thetas[-1] = theta.detach()
        thetas.append((theta - a_ * g).detach())
    with torch.enable_grad():
        theta_n = thetas[-1].requires_grad_(True)
        loss = matching_loss(theta_n, start, target)
        (adj,) = torch.autograd.grad(loss, theta_n)
    grad_x = torch.zeros_like(images)
    grad_y = torch.zeros_like(labels) if learn_labels else None
    grad_a = torch.zeros((), dtype=images.dtype, device=images.device)
    for i in reversed(range(len(steps.batches))):  # backward: rebuild step i, two VJPs of g_i
        idx = steps.batches[i]
        with torch.enable_grad():
            theta = thetas[i].detach().requires_grad_(True)
            x = images[idx].requires_grad_(True)
            y = labels[idx].requires_grad_(learn_labels)
            (g,) = torch.autograd.grad(step_loss(steps, i, theta, x, y), theta, create_graph=True)
            inputs = (theta, x, y) if learn_labels else (theta, x)
            vjps = torch.autograd.grad(g, inputs, grad_outputs=adj)
        grad_a -= (adj * g.detach()).sum()
        grad_x.index_add_(0, idx, -a_ * vjps[1])
        if learn_labels:
            grad_y.index_add_(0, idx, -a_ * vjps[2])
        adj = adj - a_ * vjps[0]
    return MetaGrad(float(loss.detach()), grad_x, grad_a, grad_y)


def meta_gradient_unrolled(
    steps: StudentSteps,
    images: torch.Tensor,
    labels: torch.Tensor,
    alpha: torch.Tensor,
    start: torch.Tensor,
    target: torch.Tensor,
    learn_labels: bool = False,
) -> MetaGrad:
    """The same meta-gradient by backpropagating through the whole unrolled graph (memory ∝ N)."""
    with torch.enable_grad():
        x = images.detach().requires_grad_(True)
        y = labels.detach().requires_grad_(learn_labels)
        a = alpha.detach().clone().requires_grad_(True)
        theta = start.detach().requires_grad_(True)
        for i, idx in enumerate(steps.batches):
            (g,) = torch.autograd.grad(step_loss(steps, i, theta, x[idx], y[idx]), theta, create_graph=True)
            theta = theta - a * g
        loss = matching_loss(theta, start, target)
        grads = torch.autograd.grad(loss, (x, a, y) if learn_labels else (x, a))
    return MetaGrad(float(loss.detach()), grads[0], grads[1], grads[2] if learn_labels else None)


META_GRADIENTS = {"constant": meta_gradient_constant, "unrolled": meta_gradient_unrolled}


def minibatches(n: int, batch: int, steps: int, gen: torch.Generator) -> list[torch.Tensor]:
    """`steps` index batches of size `batch` (all `n` when 0): consecutive chunks of random
    permutations, a new permutation when one is used up (the original code's schedule)."""
    batch = batch or n
    out, pool = [], torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        if len(pool) < batch:
            pool = torch.cat([pool, torch.randperm(n, generator=gen)])
        out.append(pool[:batch])
        pool = pool[batch:]
    return out


# -- resume checkpoints ---------------------------------------------------------------------------


def _save_state(path: Path, identity: dict, iteration: int, tensors: dict[str, torch.Tensor]) -> None:
    with atomic_output(path, overwrite=True) as tmp:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
            str(tmp),
            metadata={"identity": json.dumps(identity, sort_keys=True), "iteration": str(iteration)},
        )


def _load_state(path: Path, identity: dict) -> tuple[int, dict[str, torch.Tensor]] | None:
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        found, iteration = json.loads(meta["identity"]), int(meta["iteration"])
    except Exception as exc:  # safetensors raises its own types for damaged files
        raise FileFormatError(
            f"mtt checkpoint {path} is unreadable ({type(exc).__name__}: {exc})", f"delete {path.parent} and run again"
        ) from None
    if found != json.loads(json.dumps(identity, sort_keys=True)):
        changed = sorted(k for k in set(found) | set(identity) if found.get(k) != identity.get(k))
        raise InvalidInput(
            f"{path.parent} holds the work of a different run (differs in: {', '.join(changed)})",
            "resume with exactly the same settings, or run without --resume to start over",
        )
    return iteration, tensors


def _momentum(opt: torch.optim.SGD) -> torch.Tensor:
    p = opt.param_groups[0]["params"][0]
    buf = opt.state.get(p, {}).get("momentum_buffer")
    return torch.zeros_like(p) if buf is None else buf


def _set_momentum(opt: torch.optim.SGD, buf: torch.Tensor) -> None:
    p = opt.param_groups[0]["params"][0]
    opt.state[p]["momentum_buffer"] = buf.to(p.device, p.dtype).clone()


# -- the synthesizer ------------------------------------------------------------------------------


@register_synthesizer
class MTT(Synthesizer):
    """MTT: match expert training trajectories (constant-memory meta-gradient; DATM soft labels optional)."""

    name = "mtt"
    version = "1"
    Config = MTTConfig
    max_teachers = 0

    def synthesize(self, source, teachers, ipc, config: MTTConfig, seed, device, workdir=None):
        self.check_teachers(teachers)
        config.check()
        if distributed.world().size > 1:
            raise InvalidInput(
                "mtt runs in one process: its iterations depend on each other, there are no work items to share",
                "run without --nproc (one GPU is the way to speed it up)",
            )
        info = source.info
        experts = load_experts(config.experts, source)
        if config.model:
            experts.check_fits(arch=config.model)
        e_total, m = experts.header.epochs, config.expert_epochs
        if config.preset == "paper" and (experts.num_experts, e_total) != MTT_PAPER_EXPERTS:
            say(f"mtt: preset=paper, but the experts are {experts.num_experts} × {e_total} epochs "
                f"(the paper's buffer: {MTT_PAPER_EXPERTS[0]} × {MTT_PAPER_EXPERTS[1]})")
        if config.max_start_epoch + m > e_total:
            raise InvalidInput(
                f"mtt needs max_start_epoch + expert_epochs ≤ the experts' {e_total} epochs, got "
                f"{config.max_start_epoch} + {m}",
                f"lower max_start_epoch to {max(0, e_total - m)} "
                f"or train experts for ≥ {config.max_start_epoch + m} epochs",
            )
        decoder = formation_from_factor(config.formation)
        per_image = 1 if decoder is None else decoder.per_image
        if decoder is not None:
            decoder.check(info.image_shape)
        n_syn = ipc * info.num_classes * per_image  # training instances the student sees
        if config.batch_syn > n_syn:
            raise InvalidInput(
                f"mtt option batch_syn={config.batch_syn} exceeds the {n_syn} synthetic images", "use batch_syn=0 (all)"
            )
        # ipc·n² real images per class, class-major (refused when a class has fewer)
        picked = pick_real(source, class_balanced_indices(source, ipc * per_image, seed, salt="mtt-init"))

        def decoded(x: torch.Tensor) -> torch.Tensor:  # the student's instances of the stored images
            return x if decoder is None else decoder.decode(x)

        model = experts.build_model().to(device)
        layout = experts.header.param_layout
        params = experts.params  # read from the file vector by vector: two per iteration go to the device
        norm = info.normalization
        lo = norm.apply(torch.zeros(1, *info.image_shape, device=device))
        hi = norm.apply(torch.ones(1, *info.image_shape, device=device))
        start_images = norm.apply(picked.pixels().float().to(device))
        images = (start_images if decoder is None else decoder.encode(start_images)).requires_grad_(True)
        hard = picked.labels.to(device)  # = the instances' labels: each stored image's n² sources share a class
        alpha = torch.tensor(config.lr_init or experts.header.lr, device=device).requires_grad_(True)
        opt_img = torch.optim.SGD([images], lr=config.lr_img, momentum=0.5)
        opt_lr = torch.optim.SGD([alpha], lr=config.lr_lr, momentum=0.5)
        labels, opt_y = hard, None
        if config.learn_labels:
            with torch.no_grad():
                theta = unflatten(params[0, -1].to(device), layout)
                logits = functional_call(model, theta, (decoded(images.detach()),))
            labels = logits.detach().clone().requires_grad_(True)
            opt_y = torch.optim.SGD([labels], lr=config.lr_labels, momentum=0.5)
        augment = build_augmentation(config.augmentation)
        meta_gradient = META_GRADIENTS[config.meta_grad]

        identity = {
            "method": self.name,
            "method_version": self.version,
            "seed": seed,
            "ipc": ipc,
            "dataset": info.name,
            "source_ids_sha256": source.ids_sha256(),
            "experts_sha256": experts.header.params_sha256,
            "config": {k: v for k, v in dataclasses.asdict(config).items() if k not in ("experts", "checkpoint_every")},
        }
        state_path = Path(workdir) / STATE_FILE if workdir is not None else None
        first, losses = 0, []
        state = _load_state(state_path, identity) if state_path is not None else None
        if state is not None:
            first, tensors = state
            losses = tensors["losses"].tolist()
            with torch.no_grad():
                images.copy_(tensors["images"])
                alpha.copy_(tensors["alpha"])
                if opt_y is not None:
                    labels.copy_(tensors["labels"])
                    _set_momentum(opt_y, tensors["labels_momentum"])
            _set_momentum(opt_img, tensors["images_momentum"])
            _set_momentum(opt_lr, tensors["alpha_momentum"])

        if first:
            say(f"mtt: resuming at iteration {first} of {config.iterations}")
        bar = progress(total=config.iterations - first, desc="mtt iterations")
        for it in range(first, config.iterations):
            gen = generator(seed, "mtt-iteration", it)
            e = int(torch.randint(experts.num_experts, (1,), generator=gen))
            t = int(torch.randint(config.max_start_epoch + 1, (1,), generator=gen))
            batches = [b.to(device) for b in minibatches(n_syn, config.batch_syn, config.syn_steps, gen)]
            aug_gen = generator(seed, "mtt-augment", it, device=device)
            aug_params = [augment.sample(torch.Size((len(b), *info.image_shape)), aug_gen) for b in batches]
            steps = StudentSteps(model, layout, batches, augment, aug_params)
            start, target = params[e, t].to(device), params[e, t + m].to(device)
            if decoder is None:
                res = meta_gradient(steps, images, labels, alpha, start, target, config.learn_labels)
                images.grad = res.images
            else:  # the meta-gradient on the instances, carried through the decode to the stored pixels
                with torch.enable_grad():
                    instances = decoder.decode(images)
                res = meta_gradient(steps, instances, labels, alpha, start, target, config.learn_labels)
                (images.grad,) = torch.autograd.grad(instances, images, res.images)
            alpha.grad = res.alpha.reshape(alpha.shape)
            opt_img.step()
            opt_lr.step()
            if opt_y is not None:
                labels.grad = res.labels
                opt_y.step()
            with torch.no_grad():
                images.copy_(torch.maximum(torch.minimum(images, hi), lo))
            losses.append(res.loss)
            bar.update(1)
            bar.set_postfix({"loss": round(res.loss, 4), "lr": f"{float(alpha.detach()):.4g}"})
            if state_path is not None and ((it + 1) % config.checkpoint_every == 0) and it + 1 < config.iterations:
                tensors = {
                    "images": images,
                    "images_momentum": _momentum(opt_img),
                    "alpha": alpha,
                    "alpha_momentum": _momentum(opt_lr),
                    "losses": torch.tensor(losses, dtype=torch.float64),
                }
                if opt_y is not None:
                    tensors.update(labels=labels, labels_momentum=_momentum(opt_y))
                Path(workdir).mkdir(parents=True, exist_ok=True)
                _save_state(state_path, identity, it + 1, tensors)
        bar.close()
        experts.close()

        pixels = norm.invert(images.detach()).clamp(0.0, 1.0).cpu()
        tail = losses[-max(1, len(losses) // 10) :] if losses else []
        derived = {
            "learned_lr": float(alpha.detach()),
            "experts_file": experts.header.summary(),
            "experts_dataset": experts.header.dataset["name"],
            "source_ids": picked.ids.tolist(),
            "image_space": "optimized normalized, clamped to the normalization of [0, 1]; stored as pixels",
            "final_loss": (sum(tail) / len(tail)) if tail else None,
        }  # mean over the last 10% of iterations
        dset = DistilledSet.from_source(
            source,
            method=self.name,
            method_version=self.version,
            config={**dataclasses.asdict(config), **derived},
            seed=seed,
            images=pixels,
            labels=picked.labels[::per_image],
            ipc=ipc,
            formation=decoder,
            teachers=[],
        )
        if config.learn_labels:
            dset.soft["logits"] = LogitsLabels(
                labels.detach().cpu().float(),
                meta={
                    "recipe": "DATM learned soft labels: logits, trained through their softmax "
                    "as cross-entropy targets",
                    "init": "the first expert's final-epoch logits on the initial images",
                    "train_with": "a stored-labels protocol (stored-cpu)",
                },
            )
        return dset
