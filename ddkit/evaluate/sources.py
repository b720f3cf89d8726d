"""What the evaluator can train on, resolved to per-seed tensors: a `.ddk.h5` file, a `.sel.h5`
selection resolved against its pool, a random subset (`random:DATASET:IPC`), or a whole split.

Every source knows its dataset (for the test split, read only after training) and its budget (for
the random baseline at the same budget).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ddkit.data import ImageDataset, load_dataset, recorded_dataset
from ddkit.data.base import class_balanced_indices
from ddkit.data.stream import normalized_source
from ddkit.dbr import DBRTargets, baseline_targets, check_protocol_views, get_recipe, targets_from_payload
from ddkit.errors import IncompatibleError, InvalidInput
from ddkit.evaluate.labels import require_stored_scheme
from ddkit.evaluate.protocols import Protocol
from ddkit.evaluate.trainer import StudentData
from ddkit.registry import Registry
from ddkit.seeding import derive_seed, numpy_rng
from ddkit.training import predict_logits

# How to give a random real subset the same kind of stored labels a file carries, by scheme, so
# the baseline is trained under exactly the same label treatment:
# fn(normalized images, teachers, labels=, protocol=, seed=) -> payload rows (or DBR targets).
BASELINE_PAYLOADS = Registry("baseline payload")


def baseline_payload(scheme: str, summary: str):
    return BASELINE_PAYLOADS.register(scheme, summary=summary)


@baseline_payload("logits", summary="the teachers' mean logits on the subset's clean images")
def ensemble_logits(images: torch.Tensor, teachers: list, **_) -> torch.Tensor:
    """Static labels: the teachers' mean logits on the clean images (INFER's label recipe)."""
    if not teachers:
        raise InvalidInput("static logits for the random baseline need the teachers", "pass --teacher T")
    return torch.stack([predict_logits(t.model, images) for t in teachers]).mean(0)


@baseline_payload("dbr", summary="DBR teacher distances of the subset, on the protocol's view recipe")
def dbr_targets(images: torch.Tensor, teachers: list, labels: torch.Tensor, protocol: Protocol, seed: int, **_) -> DBRTargets:
    """DBR: the protocol's view recipe on this subset, with its own seeded views and teacher distances."""
    if not teachers:
        raise InvalidInput("DBR distances for the random baseline need the teachers", "pass --teacher T")
    recipe = get_recipe(protocol.extra.get("views") or "")
    return baseline_targets([t.model for t in teachers], len(images), recipe, derive_seed(seed, "dbr-baseline-views"))


@dataclass
class TrainSource:
    label: str
    dataset: str
    ipc: float | None
    instances: int
    make: Callable[[int], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, str | None]]
    content_sha256: str | None = None
    budget_bytes: int | None = None
    path: str | None = None
    file_teachers: list = field(default_factory=list)
    scheme: str | None = None

    def student_data(self, seed: int, device: torch.device) -> StudentData:  # images: a tensor or StreamedViews
        images, labels, payload, scheme = self.make(seed)
        return StudentData(images.to(device), labels.to(device), None if payload is None else payload.to(device), scheme)


def _with_payload(images, labels, protocol: Protocol, scheme: str | None, teachers, seed: int):
    """Attach a baseline payload of `scheme` when the protocol trains on stored labels."""
    if protocol.label_source != "stored" or scheme is None:
        return images, labels, None, scheme
    if scheme not in BASELINE_PAYLOADS:
        raise IncompatibleError(f"no random baseline can be built for stored labels of scheme {scheme!r}",
                                "evaluate with --no-baseline, or under a teacher protocol")
    payload = BASELINE_PAYLOADS.get(scheme)(images, teachers, labels=labels, protocol=protocol, seed=seed)
    return images, labels, payload, scheme


def real_subset_source(dataset: str, per_class: float, protocol: Protocol, scheme: str | None, teachers,
                       label: str = "random real") -> TrainSource:
    """Random real images at a budget: class-balanced when `per_class` is whole, else uniform."""
    train = load_dataset(dataset, "train")
    total = int(round(per_class * train.num_classes))
    if per_class <= 0 or total > len(train):
        raise InvalidInput(f"budget of {per_class:g} images per class does not fit {dataset} ({len(train)} images)")

    labeled = getattr(train, "labeled", True)  # an unlabeled pool's labels carry no information
    if not labeled and protocol.label_source != "teacher":
        raise IncompatibleError(f"{dataset} is an unlabeled pool: protocol {protocol.id} would train on placeholder labels",
                                "evaluate under a teacher protocol (e.g. --protocol teacher-cpu --teacher T)")

    def make(seed: int):
        if float(per_class).is_integer() and labeled:
            idx = class_balanced_indices(train, int(per_class), seed, salt="evaluation-baseline")
        else:
            idx = np.sort(numpy_rng(seed, "random-uniform", dataset, total).choice(len(train), total, replace=False))
        part = train.subset(idx)
        return _with_payload(part.normalized(), part.labels, protocol, scheme, teachers, seed)

    nbytes = total * train.images[0].numel() * train.images.element_size()
    return TrainSource(label, dataset, per_class, total, make, budget_bytes=nbytes, scheme=scheme)


def full_data_source(dataset: str, protocol: Protocol, scheme: str | None, teachers) -> TrainSource:
    train = load_dataset(dataset, "train")

    def make(seed: int):  # a large train split streams (decoded batch by batch while training)
        return _with_payload(normalized_source(train), train.labels, protocol, scheme, teachers, seed)

    return TrainSource("full data", dataset, len(train) / train.num_classes, len(train), make, scheme=scheme)


def _pick_scheme(available: list[str], protocol: Protocol, path: str) -> str | None:
    if protocol.label_source != "stored" or not available:
        return None
    wanted = protocol.extra.get("scheme")
    if wanted:
        if wanted not in available:
            raise IncompatibleError(f"{path} has no stored labels of scheme {wanted!r} (it has {', '.join(available)})")
        return wanted
    if len(available) == 1:
        return available[0]
    return "logits" if "logits" in available else sorted(available)[0]


def _given_matches(name: str, given: str | None, info, path: str) -> None:
    """A dataset the user passed for a file must be the one the file was made from (classes, shape)."""
    if given is None:
        return
    loaded = load_dataset(name, "train").info
    if tuple(loaded.class_names) != tuple(info.class_names) or tuple(loaded.image_shape) != tuple(info.image_shape):
        raise IncompatibleError(
            f"{path} was made from {info.name} ({info.num_classes} classes, {tuple(info.image_shape)}), "
            f"but {given} has {loaded.num_classes} classes of {tuple(loaded.image_shape)}",
            "pass the dataset the file was made from",
        )


def distilled_source(path: str, protocol: Protocol, dataset: str | None = None) -> TrainSource:
    from ddkit.store import DistilledDataset, require_valid

    reader = DistilledDataset(path)
    require_valid(reader)  # never train on what `ddkit validate` refuses
    header = reader.header
    name = recorded_dataset(header.dataset.info.name, dataset, str(path))
    _given_matches(name, dataset, header.dataset.info, path)
    scheme = _pick_scheme(sorted(reader.soft), protocol, path)
    images = reader.info.normalization.apply(reader.pixels())
    labels = reader.labels
    payload = None
    if scheme == "dbr":  # replayed views: the payload brings its own view schedule
        stored = reader.soft[scheme]
        check_protocol_views(stored.protocol, protocol.extra.get("views"), protocol.id)
        payload = targets_from_payload(stored, len(labels))
    elif scheme is not None:
        require_stored_scheme(scheme)
        payload = torch.from_numpy(np.asarray(reader.soft[scheme].values, dtype=np.float32))

    def make(seed: int):
        return images, labels, payload, scheme

    budget = header.budget
    return TrainSource(
        label=f"{header.method} ({path})", dataset=name, ipc=float(budget.ipc_stored),
        instances=len(labels), make=make, content_sha256=reader.content_sha256, budget_bytes=budget.bytes_total,
        path=str(path), file_teachers=list(header.teachers), scheme=scheme,
    )


def selection_source(path: str, protocol: Protocol, dataset: str | None = None) -> TrainSource:
    from ddkit.store import read_selection, resolve_selection

    selection = read_selection(path)
    name = recorded_dataset(selection.pool["name"], dataset, str(path))
    chosen: ImageDataset = resolve_selection(selection, load_dataset(name, selection.pool["split"]))
    if name.startswith("pool:") and protocol.label_source != "teacher":
        raise IncompatibleError(f"{path} selects from an unlabeled pool: protocol {protocol.id} would train on placeholder labels",
                                "evaluate under a teacher protocol (e.g. --protocol teacher-cpu --teacher T)")
    images, labels = chosen.normalized(), chosen.labels

    def make(seed: int):
        return images, labels, None, None

    nbytes = len(chosen) * chosen.images[0].numel() * chosen.images.element_size()
    return TrainSource(
        label=f"{selection.method} ({path})", dataset=name, ipc=len(chosen) / chosen.num_classes,
        instances=len(chosen), make=make, content_sha256=selection.content_sha256, budget_bytes=nbytes,
        path=str(path), file_teachers=list(selection.teachers),
    )


def resolve_train_set(spec: str, protocol: Protocol, teachers, dataset: str | None = None) -> TrainSource:
    """`random:DATASET:IPC`, a `.sel.h5` file, or a `.ddk.h5` file.

    `dataset` is the source a file was made from when the file names it by a path
    (`imagefolder:PATH`, `pool:PATH`): ddkit loads only what the user passes, never a path a file names.
    """
    if spec.startswith("random:"):
        _, _, rest = spec.partition(":")
        dataset_name, _, ipc = rest.rpartition(":")
        try:
            per_class = float(ipc)
        except ValueError:
            per_class = math.nan
        if not dataset_name or not math.isfinite(per_class) or per_class <= 0:
            raise InvalidInput(f"bad train set {spec!r}: IPC must be a positive number",
                               "write random:DATASET:IPC, e.g. random:fashion-mnist:10")
        if dataset is not None:
            raise InvalidInput("--dataset applies to .ddk.h5 / .sel.h5 files", f"name the dataset in the spec: {spec}")
        scheme = protocol.extra.get("scheme", "logits") if protocol.label_source == "stored" else None
        return real_subset_source(dataset_name, per_class, protocol, scheme, teachers, label=f"random real ({spec})")
    if spec.endswith(".sel.h5"):
        return selection_source(spec, protocol, dataset)
    return distilled_source(spec, protocol, dataset)
