"""Expert trajectories (MTT's "buffers"): N networks trained on the full train split, their
flattened parameters recorded after every epoch, in one sealed HDF5 file (`.experts.h5`).

Trajectory matching (`ddkit.synth.mtt`) starts a student at an expert's epoch-t parameters and
asks the distilled images to move it, in a few steps, to where the expert was at epoch t+M. So the
file must say exactly which network, data, normalization and optimizer made the trajectories, and
refuse to be used with anything else.

Recipe (Cazenavette et al. 2022, the buffer script): plain SGD (lr 0.01, no momentum, no weight
decay), the evaluation-style augmentation (DSA by default), every epoch a fresh shuffle of the
whole train split. Each expert's randomness comes from `derive_seed(seed, "expert", i, ...)` and
each epoch's batch order and augmentation from its own generator, so an interrupted run resumed
from its last finished epoch gives the same trajectories as an uninterrupted one.

Layout: `/params` float32 N × (E+1) × P (row e of expert i: the parameters after e epochs; e = 0 is
the initialization), chunked one vector per chunk, uncompressed (weights do not compress). Root
attrs: `format = "ddkit.experts"`, `schema = 1`, `header` (JSON of `ExpertsHeader`: arch, dataset
record, normalization, training recipe, seeds, parameter layout, sha256 of the params, version,
creation time). The file is built in memory and written atomically with ddkit's seal (see
`ddkit.store.h5io`): a truncated or edited file is refused before HDF5 reads it.

Reading is epoch by epoch: `load_experts` checks the seal and the params hash by streaming the file
(one parameter vector in memory at a time) and returns the trajectories as `ExpertParams`, which
reads one vector per `params[i, e]` from the open file. MTT reads the two vectors an iteration needs,
so a paper-scale buffer (100 experts × 50 epochs of a width-128 ConvNet: several GB) is never held.

Under torchrun (`ddkit experts train --nproc N`) the experts are shared out round robin: each rank
trains its own into the shared `OUT.work/` folder, and rank 0 writes the file after a barrier. An
expert's randomness does not depend on which rank trains it, so the file equals a one-process run's.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import ddkit
from ddkit import distributed
from ddkit.augment import build_augmentation
from ddkit.data import load_dataset
from ddkit.data.base import DatasetInfo, ImageDataset, Normalization
from ddkit.data.stream import batches_at, normalized_source
from ddkit.errors import DdkitError, FileFormatError, IncompatibleError, InvalidInput
from ddkit.fileio import atomic_output, check_output
from ddkit.models import ImageClassifier, create_model, has_batchnorm
from ddkit.progress import progress
from ddkit.provenance import utc_now
from ddkit.records import check_positive, check_value, record_fields
from ddkit.seeding import derive_seed, generator
from ddkit.store.h5io import building, check_seal, open_h5, reading
from ddkit.store.schema import attr_text, dump_json, load_json
from ddkit.training import pick_device
from ddkit.workitems import WorkItemStore, claim_workdir

EXPERTS_FORMAT = "ddkit.experts"
EXPERTS_SCHEMA = 1
EXPERTS_KIND = "ddkit experts file (.experts.h5)"
_REMEDY = "train one with `ddkit experts train` (or check the path)"
_DAMAGED = "the file is damaged or was edited; re-download or retrain the experts"
MAX_EXPERTS = 1 << 16


@dataclass
class ExpertTraining:
    """How every expert is trained: the buffer script's defaults."""

    epochs: int = 50
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 256
    augmentation: str = "dsa"  # a name of ddkit.augment.build_augmentation ("dsa", "crop-flip", "none")

    def check(self) -> None:
        if self.epochs < 1:
            raise InvalidInput(f"experts need at least 1 epoch, got {self.epochs}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InvalidInput(f"expert lr must be a positive number, got {self.lr}")
        if not 0 <= self.momentum < 1 or self.weight_decay < 0:
            raise InvalidInput(
                f"expert momentum must be in [0, 1) and weight decay ≥ 0, got {self.momentum}, {self.weight_decay}"
            )
        if self.batch_size < 1:
            raise InvalidInput(f"expert batch size must be ≥ 1, got {self.batch_size}")
        build_augmentation(self.augmentation)  # refuses an unknown name


@dataclass
class ExpertsHeader:
    """The typed record stored as the file's `header` attribute."""

    arch: str
    arch_kwargs: dict
    dataset: dict  # name, split, ids_sha256, num_classes, class_names, image_shape
    normalization: dict
    training: dict  # ExpertTraining as a dict
    num_experts: int
    seed: int
    expert_seeds: list[int]
    param_layout: list  # [[name, [shape...]], ...] in flattening order
    num_params: int
    params_sha256: str = ""
    ddkit_version: str = ddkit.__version__
    created: str = ""
    format: str = EXPERTS_FORMAT
    schema: int = EXPERTS_SCHEMA

    @property
    def epochs(self) -> int:
        return int(self.training["epochs"])

    @property
    def lr(self) -> float:
        return float(self.training["lr"])

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo.from_dict({**self.dataset, "normalization": self.normalization})

    def check(self) -> None:
        """Refuse (InvalidInput, naming the field) values the types allow but an experts file cannot
        have: a dataset record or normalization that does not hold (zero std included), a training
        recipe that does not (lr ≤ 0 included), no parameters, a layout that does not add up."""
        where = "experts header"
        DatasetInfo.from_dict({**self.dataset, "normalization": self.normalization}, f"{where}.dataset")
        ExpertTraining(**record_fields(ExpertTraining, self.training, f"{where}.training")).check()
        check_positive(self.num_experts, f"{where}.num_experts", MAX_EXPERTS)
        if len(self.expert_seeds) != self.num_experts:
            raise InvalidInput(f"{where}.expert_seeds has {len(self.expert_seeds)} seeds for "
                               f"{self.num_experts} experts")
        layout = check_value(self.param_layout, list[tuple[str, list[int]]], f"{where}.param_layout")
        if any(d < 0 for _, shape in layout for d in shape):
            raise InvalidInput(f"{where}.param_layout has a negative dimension")
        check_positive(self.num_params, f"{where}.num_params (an experts file holds at least one parameter)")
        total = sum(math.prod(shape) for _, shape in layout)
        if total != self.num_params:
            raise InvalidInput(f"{where}.param_layout adds up to {total} parameters, num_params says {self.num_params}")

    def check_architecture(self, path: str | Path) -> None:
        """Refuse a header whose architecture does not have exactly the parameters its layout lists.

        The model is built on the meta device (no memory), so `arch_kwargs` such as a width of 6000
        cost nothing to check, and the honest parameters of a small net cannot pass for a huge one."""
        c, h, _ = self.dataset["image_shape"]
        try:
            with torch.device("meta"):
                model = create_model(self.arch, c, h, self.dataset["num_classes"], seed=0, **self.arch_kwargs)
        except (DdkitError, TypeError, ValueError, RuntimeError) as exc:
            detail = exc.problem if isinstance(exc, DdkitError) else str(exc)[:200]
            raise FileFormatError(f"{path}: the header's architecture {self.arch} {self.arch_kwargs} cannot be built "
                                  f"({detail})", _DAMAGED) from None
        expected = param_layout(model)
        if expected != [[name, list(shape)] for name, shape in self.param_layout]:
            built = sum(math.prod(s) for _, s in expected)
            raise FileFormatError(
                f"{path}: the parameters ({self.num_params} in {len(self.param_layout)} tensors) do not fit the "
                f"{self.arch} {self.arch_kwargs} architecture ({built} in {len(expected)} tensors)", _DAMAGED)

    def summary(self) -> dict:
        """The short record a distilled file keeps about the experts it matched."""
        return {
            "arch": self.arch,
            "arch_kwargs": self.arch_kwargs,
            "num_experts": self.num_experts,
            "epochs": self.epochs,
            "lr": self.lr,
            "augmentation": self.training["augmentation"],
            "params_sha256": self.params_sha256,
        }


# -- parameters as one flat vector ----------------------------------------------------------------


def param_layout(model: torch.nn.Module) -> list:
    """[[name, shape], ...] of the model's parameters, in the order `flatten_params` concatenates them."""
    return [[name, list(p.shape)] for name, p in model.named_parameters()]


def flatten_params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def unflatten(flat: torch.Tensor, layout: list) -> dict[str, torch.Tensor]:
    """Views of `flat` shaped as the named parameters of `layout` (differentiable)."""
    out, offset = {}, 0
    for name, shape in layout:
        n = int(np.prod(shape)) if shape else 1
        out[name] = flat[offset : offset + n].view(shape)
        offset += n
    return out


def params_hasher(shape: tuple[int, ...]):
    """A sha256 of the params array's shape, to be fed its float32 little-endian bytes in C order
    (in any pieces: a whole array, or one parameter vector at a time)."""
    return hashlib.sha256(f"ddkit.experts.params|{tuple(int(n) for n in shape)}|".encode())


def _feed(h, part: np.ndarray) -> None:
    arr = np.ascontiguousarray(part, dtype="<f4")
    if arr.size:  # a memoryview of an empty array cannot be cast
        h.update(memoryview(arr).cast("B"))


def params_sha256(params: np.ndarray) -> str:
    """Hash of the params array's shape and float32 little-endian bytes."""
    h = params_hasher(np.shape(params))
    _feed(h, params)
    return h.hexdigest()


def dataset_record(source: ImageDataset) -> dict:
    info = source.info
    return {
        "name": info.name,
        "split": source.split,
        "ids_sha256": source.ids_sha256(),
        "num_classes": info.num_classes,
        "class_names": list(info.class_names),
        "image_shape": list(info.image_shape),
    }


# -- the file -------------------------------------------------------------------------------------


class ExpertParams:
    """The N × (E+1) × P float32 trajectories of an open, checked experts file, read one parameter
    vector at a time: `params[i, e]` is expert i's parameters after e epochs (a CPU tensor, read from
    the file on each call; negative indices count from the end). Nothing else is held in memory.
    `reads` counts the vectors read since the file was opened (the loader's check included)."""

    dtype = torch.float32

    def __init__(self, h5, path: str):
        self._h5, self._data, self.path = h5, h5["params"], path
        self.shape = tuple(int(n) for n in self._data.shape)
        self.reads = 0

    def _index(self, i: int, axis: int) -> int:
        n = self.shape[axis]
        if not isinstance(i, (int, np.integer)) or not -n <= i < n:
            raise IndexError(f"experts params index {i!r} out of range for axis {axis} of size {n}")
        return int(i) % n

    def vector(self, i: int, e: int) -> np.ndarray:
        if self._h5 is None:
            raise ValueError(f"the experts file {self.path} was closed")
        i, e = self._index(i, 0), self._index(e, 1)
        with reading(self.path):
            row = self._data[i, e]
        self.reads += 1
        return row

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        if not isinstance(key, tuple) or len(key) != 2:
            raise IndexError("experts params are read one vector at a time: params[expert, epoch]")
        return torch.from_numpy(self.vector(*key))

    def trajectory(self, i: int) -> torch.Tensor:
        """Expert i's (E+1) × P parameter vectors (one expert, not the file)."""
        return torch.stack([self[i, e] for e in range(self.shape[1])])

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = self._data = None


@dataclass
class Experts:
    """A loaded, checked experts file: `params` reads its N × (E+1) × P float32 trajectories vector by
    vector (`ExpertParams`); close it (or use `with`) when done."""

    header: ExpertsHeader
    params: ExpertParams
    path: str = ""

    @property
    def num_experts(self) -> int:
        return int(self.params.shape[0])

    def close(self) -> None:
        self.params.close()

    def __enter__(self) -> "Experts":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def build_model(self) -> ImageClassifier:
        """A fresh instance of the experts' architecture (weights to be replaced by a trajectory point)."""
        c, h, _ = self.header.dataset["image_shape"]
        return create_model(
            self.header.arch, c, h, self.header.dataset["num_classes"], seed=0, **self.header.arch_kwargs
        )

    def check_fits(
        self, source: ImageDataset | None = None, arch: str | None = None, arch_kwargs: dict | None = None
    ) -> None:
        """Refuse trajectories of another dataset, split, normalization or architecture than asked."""
        h, name = self.header, self.path or "the experts file"
        if arch is not None and (
            arch != h.arch or (arch_kwargs is not None and dict(arch_kwargs) != dict(h.arch_kwargs))
        ):
            raise IncompatibleError(
                f"{name} holds trajectories of {h.arch} {h.arch_kwargs}, not of {arch} {arch_kwargs or {}}",
                "train experts of this architecture with `ddkit experts train --model ...`, "
                "or ask for the experts' one",
            )
        if source is None:
            return
        want = dataset_record(source)
        mine = h.dataset
        fix = f"train experts on {source.info.name} with `ddkit experts train --dataset {source.info.name}`"
        if mine.get("name") != want["name"]:
            raise IncompatibleError(f"{name} was trained on dataset {mine.get('name')!r}, not on {want['name']!r}", fix)
        for key, what in (
            ("num_classes", "classes"),
            ("image_shape", "image shape"),
            ("class_names", "class order"),
            ("ids_sha256", "sample id list (another version or split of the data)"),
        ):
            if mine.get(key) != want[key]:
                raise IncompatibleError(
                    f"{name} and dataset {want['name']} differ in {what}: {mine.get(key)} vs {want[key]}", fix
                )
        if Normalization.from_dict(h.normalization) != source.info.normalization:
            raise IncompatibleError(
                f"{name} was trained with normalization {h.normalization}, but {want['name']} uses "
                f"{source.info.normalization.to_dict()}",
                fix,
            )


def write_experts(path: str | Path, header: ExpertsHeader, params, overwrite: bool = False) -> ExpertsHeader:
    """Write the experts file atomically (sealed); fills the params hash and creation time.

    `params`: the N × (E+1) × P array, or any sequence of the N experts' (E+1) × P trajectories (e.g.
    read one at a time from the work folder), written and hashed one expert at a time."""
    shape = (header.num_experts, header.epochs + 1, header.num_params)
    if len(params) != shape[0]:
        raise InvalidInput(f"{len(params)} expert trajectories do not fit the header's {shape[0]} experts")
    h = params_hasher(shape)
    with building() as (h5, image):
        data = h5.create_dataset("params", shape=shape, dtype=np.float32, chunks=(1, 1, shape[2]))
        for i, trajectory in enumerate(params):
            trajectory = np.ascontiguousarray(trajectory, dtype=np.float32)
            if trajectory.shape != shape[1:]:
                raise InvalidInput(
                    f"expert {i}'s trajectory of shape {trajectory.shape} does not fit "
                    f"{header.num_experts} experts × {header.epochs + 1} epochs × {header.num_params} parameters"
                )
            if not np.isfinite(trajectory).all():
                raise InvalidInput("expert trajectories contain NaN or inf (training diverged)", "lower --lr")
            data[i] = trajectory
            _feed(h, trajectory)
        header.params_sha256 = h.hexdigest()
        header.created = header.created or utc_now()
        h5.attrs["format"] = EXPERTS_FORMAT
        h5.attrs["schema"] = EXPERTS_SCHEMA
        h5.attrs["header"] = dump_json(asdict(header), "experts header")
    with atomic_output(path, overwrite) as tmp:
        tmp.write_bytes(image[0])
    return header


def load_experts(
    path: str | Path, source: ImageDataset | None = None, arch: str | None = None, arch_kwargs: dict | None = None
) -> Experts:
    """Open and check an experts file: seal, format, schema, header, params hash (both hashes streamed,
    one parameter vector in memory at a time); then (when asked) that it fits `source` and the
    architecture. Any problem is one FileFormatError/IncompatibleError. The file stays open for
    `Experts.params` to read from: close the result when done."""
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"experts file {path} does not exist", _REMEDY)
    check_seal(path, full=True, wanted=EXPERTS_KIND)
    h5 = open_h5(path)
    try:
        with reading(path):
            fmt = attr_text(h5.attrs.get("format", ""))
            if fmt != EXPERTS_FORMAT:
                raise FileFormatError(f"{path} is not a {EXPERTS_KIND} (format {fmt!r})", _REMEDY)
            schema = h5.attrs.get("schema")
            if not isinstance(schema, (int, np.integer)) or schema < 1:
                raise FileFormatError(f"{path} has an invalid schema attribute {schema!r}", _REMEDY)
            if schema > EXPERTS_SCHEMA:
                raise FileFormatError(
                    f"{path} was written by a newer ddkit (experts schema {int(schema)}, "
                    f"this ddkit reads {EXPERTS_SCHEMA})",
                    "upgrade ddkit: pip install -U ddkit",
                )
            data = load_json(h5.attrs["header"], "root attribute 'header'")
            if not isinstance(data, dict) or data.get("format") != EXPERTS_FORMAT:
                raise ValueError("the header is not an experts header")
            header = ExpertsHeader(**record_fields(ExpertsHeader, data, "experts header"))
            header.check()
            header.check_architecture(path)
            expected = (header.num_experts, header.epochs + 1, header.num_params)
            stored = h5["params"]
            if stored.dtype != np.float32 or stored.shape != expected:  # the declared shape, before reading
                raise FileFormatError(
                    f"{path}: /params is {stored.dtype} {stored.shape}, the header says float32 {expected}",
                    "the file is damaged; train the experts again",
                )
        params = ExpertParams(h5, str(path))
        h = params_hasher(params.shape)
        for i in range(params.shape[0]):
            for e in range(params.shape[1]):
                vector = params.vector(i, e)
                if not np.isfinite(vector).all():
                    raise FileFormatError(f"{path}: the trajectories hold NaN or infinite parameters", _DAMAGED)
                _feed(h, vector)
        if h.hexdigest() != header.params_sha256:
            raise FileFormatError(
                f"{path}: params hash mismatch — the trajectories were modified or corrupted",
                "re-download or retrain the experts",
            )
        experts = Experts(header, params, str(path))
        experts.check_fits(source, arch, arch_kwargs)
        return experts
    except BaseException:
        h5.close()
        raise


# -- training -------------------------------------------------------------------------------------


def train_epoch(
    model: ImageClassifier,
    opt: torch.optim.Optimizer,
    images,
    labels: torch.Tensor,
    batch_size: int,
    augment,
    order_gen: torch.Generator,
    aug_gen: torch.Generator,
    bar=None,
) -> float:
    """One pass in a fresh random order over `images` (`normalized_source`: the normalized tensor on the
    model's device, or the streamed views of a large source, decoded ahead); mean loss."""
    n = len(images)
    order = torch.randperm(n, generator=order_gen)
    batches = [order[s : s + batch_size] for s in range(0, n, batch_size)]
    total = 0.0
    for idx, x in zip(batches, batches_at(images, batches)):
        loss = F.cross_entropy(model(augment(x, aug_gen)), labels[idx.to(labels.device)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item() * len(idx)
        if bar is not None:
            bar.update(1)
    return total / n


def _momentum_vector(opt: torch.optim.SGD, model) -> np.ndarray:
    bufs = [opt.state.get(p, {}).get("momentum_buffer") for p in model.parameters()]
    if any(b is None for b in bufs):
        return np.zeros(0, np.float32)
    return torch.cat([b.reshape(-1) for b in bufs]).cpu().numpy()


def _set_momentum(opt: torch.optim.SGD, model, flat: np.ndarray) -> None:
    if flat.size == 0:
        return
    offset = 0
    for p in model.parameters():
        n = p.numel()
        opt.state[p]["momentum_buffer"] = torch.from_numpy(flat[offset : offset + n].copy()).view_as(p).to(p.device)
        offset += n


@dataclass
class ExpertsResult:
    path: str
    header: ExpertsHeader
    wall_seconds: float
    epochs_trained: int  # expert-epochs computed by this call (less when resumed)
    seconds_per_epoch: float = field(default=float("nan"))


def train_experts(
    out: str | Path,
    dataset: str,
    arch: str = "convnet",
    arch_kwargs: dict | None = None,
    num_experts: int = 5,
    training: ExpertTraining | None = None,
    seed: int = 0,
    device: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    log=None,
) -> ExpertsResult:
    """Train `num_experts` experts on `dataset`'s full train split and write their trajectories.

    Finished experts, and the finished epochs of the expert in progress, are kept in `OUT.work/`
    (numpy `.npz`, no pickles) and reused with `resume=True`; the folder goes once the file is written.
    Under torchrun each rank trains its share of the experts (round robin) and rank 0 writes the file;
    the result's `epochs_trained` counts this rank's expert-epochs.
    """

    training = training or ExpertTraining()
    training.check()
    arch_kwargs = dict(arch_kwargs or {})
    if num_experts < 1:
        raise InvalidInput(f"--experts must be at least 1, got {num_experts}")
    check_output(out, overwrite)  # fail before the work, not after
    dev = pick_device(device)
    source = load_dataset(dataset, "train")
    info = source.info
    probe = create_model(arch, info.image_shape[0], info.image_shape[1], info.num_classes, seed=0, **arch_kwargs)
    if has_batchnorm(probe):
        raise IncompatibleError(
            f"model {arch} has BatchNorm layers: their running statistics are not parameters, so a trajectory of "
            "parameters cannot restore the network",
            "use a model without BatchNorm, e.g. --model convnet (instance norm)",
        )
    layout = param_layout(probe)
    num_params = sum(int(np.prod(s)) for _, s in layout)
    expert_seeds = [derive_seed(seed, "expert", i) for i in range(num_experts)]
    header = ExpertsHeader(
        arch=arch,
        arch_kwargs=arch_kwargs,
        dataset=dataset_record(source),
        normalization=info.normalization.to_dict(),
        training=asdict(training),
        num_experts=num_experts,
        seed=seed,
        expert_seeds=expert_seeds,
        param_layout=layout,
        num_params=num_params,
    )
    w = distributed.init(dev)
    workdir = claim_workdir(out, resume, overwrite, is_main=w.is_main)
    distributed.barrier()
    identity = {k: v for k, v in asdict(header).items() if k not in ("params_sha256", "created", "ddkit_version")}
    store = WorkItemStore(workdir, {"kind": EXPERTS_FORMAT, **identity})

    images = normalized_source(source, dev)  # the tensor, or streamed views of a large source
    labels = source.labels.to(dev)
    augment = build_augmentation(training.augmentation)
    steps = math.ceil(len(images) / training.batch_size)
    keys = [f"expert{i:03d}" for i in range(num_experts)]
    done = store.done(keys)
    mine = [i for i in distributed.shard(list(range(num_experts)), w) if keys[i] not in done]  # round robin
    partial = {i: store.load(f"{keys[i]}-partial") for i in mine if store.has(f"{keys[i]}-partial")}
    todo_epochs = sum(training.epochs - (len(partial[i]["params"]) - 1 if i in partial else 0) for i in mine)
    if log and w.is_main and (done or partial):
        log(
            f"experts: resuming, {len(done)} of {num_experts} experts finished"
            + (f", expert {min(partial)} at epoch {len(partial[min(partial)]['params']) - 1}" if partial else "")
        )
    bar = progress(total=todo_epochs * steps, desc=f"experts {arch}")
    start, trained = time.perf_counter(), 0
    for i in mine:
        key = keys[i]
        model = create_model(
            arch, info.image_shape[0], info.image_shape[1], info.num_classes, seed=expert_seeds[i], **arch_kwargs
        )
        model.to(dev).train()
        opt = torch.optim.SGD(
            model.parameters(), lr=training.lr, momentum=training.momentum, weight_decay=training.weight_decay
        )
        points = [flatten_params(model).cpu().numpy()]
        if i in partial:  # continue after the last finished epoch
            resumed = partial.pop(i)
            points = list(resumed["params"])
            # a copy: vector_to_parameters makes the parameters views of the vector it is given
            torch.nn.utils.vector_to_parameters(torch.tensor(points[-1], device=dev), model.parameters())
            _set_momentum(opt, model, resumed["momentum"])
        for epoch in range(len(points) - 1, training.epochs):
            train_epoch(
                model,
                opt,
                images,
                labels,
                training.batch_size,
                augment,
                generator(seed, "expert-batches", i, epoch),
                generator(seed, "expert-augment", i, epoch, device=dev),
                bar,
            )
            points.append(flatten_params(model).cpu().numpy())
            trained += 1
            if epoch + 1 < training.epochs:
                store.save(f"{key}-partial", {"params": np.stack(points), "momentum": _momentum_vector(opt, model)})
        store.save(key, {"params": np.stack(points).astype(np.float32)})
        (workdir / f"{key}-partial.npz").unlink(missing_ok=True)
    bar.close()
    wall = time.perf_counter() - start
    distributed.barrier()  # every rank's experts are in the work folder
    if w.is_main:
        header.created = utc_now()
        write_experts(out, header, _StoredTrajectories(store, keys), overwrite=overwrite)
        shutil.rmtree(workdir, ignore_errors=True)
    distributed.barrier()  # rank 0's file is written
    return ExpertsResult(str(out), header, wall, trained, wall / trained if trained else float("nan"))


class _StoredTrajectories(Sequence):
    """The finished experts' trajectories in the work folder, loaded one expert at a time."""

    def __init__(self, store: WorkItemStore, keys: list[str]):
        self.store, self.keys = store, keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.store.load(self.keys[i])["params"]


def describe_experts(path: str | Path) -> str:
    """One line about an experts file (for the CLI)."""
    with load_experts(path) as experts:
        h = experts.header
    return (
        f"{path}: {h.num_experts} experts × {h.epochs} epochs of {h.arch} {json.dumps(h.arch_kwargs)} on "
        f"{h.dataset['name']} ({h.num_params} parameters, lr {h.lr:g}, {h.training['augmentation']} augmentation)"
    )
