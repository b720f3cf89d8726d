"""Shared training machinery: device choice, optimizer + schedule from a small typed config, the
one optimizer step every loop in ddkit takes (`optimizer_step`), and a single-model loop over a
dataset (teachers, students of selectors).

Small image sets live on the device whole and are batched by index, so there is no DataLoader
worker overhead; a streamed set (`ddkit.data.stream.StreamedViews`) is read in the same seeded
batch order, decoded ahead by workers. Augmentation is the seeded, replayable kind from `ddkit.augment`.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ddkit.augment import build_augmentation
from ddkit.data.stream import StreamedViews, batches_at
from ddkit.devices import parse_device
from ddkit.errors import InvalidInput
from ddkit.progress import progress
from ddkit.seeding import generator


def pick_device(requested: str | None = None) -> torch.device:
    """`cuda` when available (or asked), else CPU; chosen once by the caller and passed down.
    A name that is not a device, or a device this machine does not have, is a clear error."""
    if requested:
        name = parse_device(requested)
    else:
        name = parse_device(os.environ.get("DDKIT_DEVICE") or "auto", where="$DDKIT_DEVICE")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InvalidInput("CUDA was requested but no GPU is available", "use --device cpu")
        count = torch.cuda.device_count()
        if ":" in name and int(name.partition(":")[2]) >= count:
            raise InvalidInput(f"device {name} does not exist: this machine has {count} GPU(s), cuda:0..cuda:{count - 1}",
                               "use --device cuda (the current GPU) or a smaller index")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InvalidInput("the mps device (Apple GPU) is not available here", "use --device cpu")
    return torch.device(name)


@dataclass
class OptimConfig:
    optimizer: str = "sgd"  # sgd | adamw | adam
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | constant | step (×0.1 at 50% and 75%) | step-half (×0.1 at 50%, the DC recipe)
    warmup_fraction: float = 0.0
    nesterov: bool = True  # SGD with momentum: Nesterov (ddkit's first recipes) or the classic heavy ball (DC/DSA/DM)

    def __post_init__(self):
        # A NaN or non-positive step size trains nothing and still writes a file that looks trained.
        for name, low, strict in (("lr", 0.0, True), ("momentum", 0.0, False), ("weight_decay", 0.0, False),
                                  ("warmup_fraction", 0.0, False)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
                    value < low or (strict and value == low):
                raise InvalidInput(f"{name} must be a finite number {'>' if strict else '≥'} {low:g}, got {value!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["nesterov"]:  # added later with the old behaviour as default: earlier records (and cache keys) hold
            del d["nesterov"]
        return d


SCHEDULES = ("cosine", "constant", "step", "step-half")


def build_optimizer(params, cfg: OptimConfig, total_steps: int):
    """Optimizer and a per-step LambdaLR schedule (cosine to 0, constant, ×0.1 at 50%/75%, or ×0.1 at 50%)."""
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                              nesterov=cfg.nesterov and cfg.momentum > 0)
    elif cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        raise InvalidInput(f"unknown optimizer {cfg.optimizer!r}", "use sgd, adamw or adam")
    if cfg.schedule not in SCHEDULES:
        raise InvalidInput(f"unknown schedule {cfg.schedule!r}", f"use one of {', '.join(SCHEDULES)}")
    warmup = int(cfg.warmup_fraction * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, total_steps - warmup)
        if cfg.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))
        if cfg.schedule == "step":
            return 0.1 ** (int(t >= 0.5) + int(t >= 0.75))
        if cfg.schedule == "step-half":
            return 0.1 ** int(t >= 0.5)
        return 1.0

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, sched=None) -> None:
    """One step on `loss`: clear the gradients, backpropagate, step the optimizer, then the schedule.

    Every training loop in ddkit (teachers, evaluation students, selector students, synthesized
    pixels) steps through here, so the order of these calls is the same everywhere.
    """
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if sched is not None:
        sched.step()


def inference_batch(image_shape, base: int = 512) -> int:
    """Rows per inference batch: `base` for 28×28 images, fewer for larger ones (at least 32), so
    activation memory stays about the same whatever the image size (a 64-px batch of 512 through a
    width-32 ConvNet held ~1 GB of activations)."""
    pixels = int(image_shape[-1]) * int(image_shape[-2])
    return max(32, min(base, base * 784 // max(pixels, 1)))


def image_shape_of(images) -> tuple:
    """C×H×W of normalized images: a tensor's, or a streamed set's (`StreamedViews`)."""
    return tuple(images.dataset.info.image_shape) if isinstance(images, StreamedViews) else tuple(images.shape[1:])


@torch.no_grad()
def predict_logits(model, images, batch_size: int | None = None, device: torch.device | None = None) -> torch.Tensor:
    """Logits of `model` (eval mode) on already-normalized images (a tensor, or the `StreamedViews`
    of a streamed dataset), computed in batches (default: `inference_batch` of the image size)."""
    device = device or next(model.parameters()).device
    if batch_size is None:
        batch_size = inference_batch(image_shape_of(images)) if len(images) else 512
    was_training = model.training
    model.eval()
    chunks = [torch.arange(i, min(i + batch_size, len(images))) for i in range(0, len(images), batch_size)]
    if isinstance(images, StreamedViews):
        batches = batches_at(images, chunks)
    else:
        batches = (images[i : i + batch_size] for i in range(0, len(images), batch_size))
    out = [model(x.to(device)).float().cpu() for x in batches]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def accuracy(model, images, labels: torch.Tensor, batch_size: int | None = None) -> float:
    if len(labels) == 0:
        return float("nan")
    return float((predict_logits(model, images, batch_size).argmax(1) == labels.cpu()).float().mean())


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    augmentation: str = "crop-flip"
    label_smoothing: float = 0.0
    optim: OptimConfig = None  # type: ignore[assignment]

    def __post_init__(self):
        if self.optim is None:
            self.optim = OptimConfig()
        if isinstance(self.optim, dict):
            self.optim = OptimConfig(**self.optim)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["optim"] = self.optim.to_dict()
        return d


def train_supervised(
    model,
    images,
    labels: torch.Tensor,
    cfg: TrainConfig,
    seed: int,
    device: torch.device,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    desc: str = "train",
) -> list[dict]:
    """Train `model` with cross-entropy on normalized `images` (a tensor, or `StreamedViews`: then the
    batches are decoded ahead in worker processes); returns per-epoch history (train loss, and val
    accuracy when a validation split is given — never the test split)."""
    if len(images) == 0:
        raise InvalidInput("cannot train on an empty set")
    model.to(device).train()
    images, labels = images.to(device), labels.to(device)
    gen = generator(seed, "train-batches", device="cpu")
    aug_gen = generator(seed, "train-augment", device=device)
    augment = build_augmentation(cfg.augmentation)
    n = len(images)
    steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
    opt, sched = build_optimizer(model.parameters(), cfg.optim, cfg.epochs * steps_per_epoch)
    history = []
    bar = progress(total=cfg.epochs * steps_per_epoch, desc=desc)
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=gen).to(device)
        total, count = 0.0, 0
        index_batches = [order[i * cfg.batch_size : (i + 1) * cfg.batch_size] for i in range(steps_per_epoch)]
        for idx, batch in zip(index_batches, batches_at(images, index_batches)):
            x = augment(batch, aug_gen)
            loss = F.cross_entropy(model(x), labels[idx], label_smoothing=cfg.label_smoothing)
            optimizer_step(opt, loss, sched)
            total += loss.item() * len(idx)
            count += len(idx)
            bar.update(1)
        record = {"epoch": epoch + 1, "train_loss": total / count}
        if val is not None:
            record["val_accuracy"] = accuracy(model, *val)
            model.train()
        bar.set_postfix({k: round(v, 4) for k, v in record.items() if k != "epoch"})
        history.append(record)
    bar.close()
    model.eval()
    return history
