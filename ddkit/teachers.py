"""`ddkit teacher train` / `eval` / `import` as library calls.

A teacher is trained on the training split minus a deterministic validation split; the test split is
read once, after training, to record the final test accuracy in the teacher's header.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from ddkit.data import dataset_info, load_dataset, recorded_dataset, train_val_split
from ddkit.data.stream import normalized_source
from ddkit.fileio import check_output
from ddkit.models import create_model
from ddkit.models.checkpoint import fit_state_dict, read_class_names, read_state_dict
from ddkit.models.teacher import Teacher, TeacherHeader, load_teacher, save_teacher
from ddkit.training import OptimConfig, TrainConfig, accuracy, pick_device, train_supervised


@dataclass
class TeacherTrainResult:
    path: str
    header: TeacherHeader
    history: list = field(default_factory=list)
    wall_seconds: float = 0.0


def train_teacher(
    out: str | Path,
    dataset: str,
    model: str = "convnet-bn",
    model_kwargs: dict | None = None,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 0.05,
    optimizer: str = "sgd",
    weight_decay: float = 5e-4,
    augmentation: str = "crop-flip",
    val_fraction: float = 0.1,
    seed: int = 0,
    device: str | None = None,
    overwrite: bool = False,
) -> TeacherTrainResult:
    check_output(out, overwrite)  # fail before training, not after
    dev = pick_device(device)
    start = time.perf_counter()
    train_full = load_dataset(dataset, "train")
    train, val = train_val_split(train_full, val_fraction, seed=0)
    info = train_full.info
    net = create_model(model, info.image_shape[0], info.image_shape[1], info.num_classes, seed=seed, **(model_kwargs or {}))
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, augmentation=augmentation,
                      optim=OptimConfig(optimizer=optimizer, lr=lr, weight_decay=weight_decay))
    history = train_supervised(net, normalized_source(train), train.labels, cfg, seed, dev,
                               val=(normalized_source(val, dev), val.labels.to(dev)), desc=f"teacher {model}")
    val_acc = history[-1].get("val_accuracy")
    test = load_dataset(dataset, "test")
    test_acc = accuracy(net, normalized_source(test, dev), test.labels.to(dev))
    wall = time.perf_counter() - start
    train_record = {**cfg.to_dict(), "seed": seed, "val_fraction": val_fraction, "train_size": len(train),
                    "device": str(dev), "wall_seconds": round(wall, 2)}
    header = save_teacher(out, net, info, overwrite=overwrite, test_accuracy=test_acc, val_accuracy=val_acc, train=train_record)
    return TeacherTrainResult(str(out), header, history, wall)


def evaluate_teacher(path: str | Path, dataset: str | None = None, split: str = "test", device: str | None = None) -> dict:
    """Accuracy of a teacher file on a dataset split (default: the dataset it was trained on)."""
    dev = pick_device(device)
    teacher: Teacher = load_teacher(path, dev)
    data = load_dataset(dataset or recorded_dataset(teacher.header.dataset, None, f"teacher {path}"), split)
    teacher.check_fits(data.info)
    acc = accuracy(teacher.model, normalized_source(data, dev), data.labels.to(dev))
    return {"teacher": str(path), "arch": teacher.header.arch, "dataset": data.info.name, "split": split,
            "accuracy": acc, "samples": len(data), "recorded_test_accuracy": teacher.header.test_accuracy}


def import_teacher(checkpoint: str | Path, out: str | Path, dataset: str, model: str, model_kwargs: dict | None = None,
                   device: str | None = None, overwrite: bool = False, source: str | None = None,
                   checkpoint_key: str | None = None, checkpoint_classes: str | Path | None = None) -> TeacherHeader:
    """Turn a foreign PyTorch checkpoint into a ddkit teacher file.

    The checkpoint is read with `torch.load(weights_only=True)` (`ddkit.models.checkpoint`): tensors
    and plain containers only, no code from the file is ever run. It must hold a state dict of the
    registered `model` built for `dataset` (torchvision's released weights for the `tv-*` models), at
    the top level or under a training script's entry (`checkpoint_key` names one), behind a
    `module.` / `_orig_mod.` prefix or not. A classifier over other classes than the dataset's is
    refused unless `checkpoint_classes` (a file of the checkpoint's class names in output order)
    says which rows to keep. The header's `train` record names the file, `source` (e.g. the URL it
    was downloaded from), the file's sha256 and what was undone; the test accuracy is measured.
    """
    check_output(out, overwrite)
    names = read_class_names(checkpoint_classes) if checkpoint_classes is not None else None
    state, record = read_state_dict(checkpoint, checkpoint_key, source)
    info = dataset_info(dataset)
    net = create_model(model, info.image_shape[0], info.image_shape[1], info.num_classes, **(model_kwargs or {}))
    state, classes = fit_state_dict(state, net, str(checkpoint), model, list(info.class_names), names)
    net.load_state_dict(state, strict=True)
    dev = pick_device(device)
    net.to(dev).eval()
    test = load_dataset(dataset, "test")
    test_acc = accuracy(net, normalized_source(test, dev), test.labels.to(dev))
    record = dataclasses.replace(record, classes=classes)
    return save_teacher(out, net.cpu(), info, overwrite=overwrite, test_accuracy=test_acc, train=record.to_dict())


def describe_teacher(path: str | Path) -> tuple[dict, str]:
    """What `ddkit info` shows of a teacher file: its header (JSON-able) and a few lines of text.
    Only the header is read; the weights are checked when the teacher is loaded for use."""
    from ddkit.models.teacher import read_teacher_header

    h = read_teacher_header(path)
    d = {"path": str(path), "format": h.format, **dataclasses.asdict(h)}

    def pct(x):
        return f"{100 * x:.2f}%" if isinstance(x, (int, float)) else "—"

    train = ", ".join(f"{k}={v}" for k, v in sorted(h.train.items()) if not isinstance(v, (dict, list))) or "—"
    text = "\n".join([
        f"{path}: ddkit teacher (safetensors, schema {h.schema})",
        f"  model       {h.arch} {h.arch_kwargs or ''}".rstrip(),
        f"  dataset     {h.dataset}, {h.num_classes} classes, input {h.in_channels}×{h.image_size}×{h.image_size}",
        f"  accuracy    test {pct(h.test_accuracy)}, val {pct(h.val_accuracy)}",
        f"  training    {train[:300]}",
        f"  tensors     sha256 {h.tensors_sha256}",
        f"  created     {h.created} by ddkit {h.ddkit_version}",
    ])
    return d, text
