"""Teacher files: safetensors weights plus a typed JSON header — never a pickle.

The header says how to rebuild the model (registered arch + constructor args), what it was trained
on (dataset id, class names, input shape, normalization), how good it is (val/test accuracy) and a
sha256 of the tensors, so a teacher can be checked against a dataset before it is used.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

import ddkit
from ddkit.data.base import DatasetInfo, Normalization, check_image_shape
from ddkit.errors import DdkitError, FileFormatError, IncompatibleError, InvalidInput
from ddkit.fileio import atomic_output
from ddkit.models import ImageClassifier, create_model, has_batchnorm
from ddkit.provenance import utc_now
from ddkit.records import check_positive, record_fields

TEACHER_FORMAT = "ddkit.teacher"
TEACHER_SCHEMA = 1
_MAX_HEADER_BYTES = 1 << 20


@dataclass(frozen=True)
class TeacherRecord:
    """What a file made with a teacher records about it (distilled, selection, pool-scores and student
    files): enough to name the teacher and to check a teacher file is the same one (its tensors' sha256)."""

    arch: str
    arch_kwargs: dict
    sha256: str
    dataset: str
    test_accuracy: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TeacherHeader:
    arch: str
    arch_kwargs: dict
    in_channels: int
    image_size: int
    num_classes: int
    class_names: list[str]
    dataset: str
    normalization: dict
    test_accuracy: float | None = None
    val_accuracy: float | None = None
    train: dict = field(default_factory=dict)
    tensors_sha256: str = ""
    ddkit_version: str = ddkit.__version__
    created: str = ""
    format: str = TEACHER_FORMAT
    schema: int = TEACHER_SCHEMA

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)

    def check(self) -> None:
        """Refuse (InvalidInput) values the types allow but a teacher cannot have."""
        check_image_shape(self.input_shape, "teacher header in_channels/image_size")
        check_positive(self.num_classes, "teacher header num_classes", 1 << 20)
        if self.class_names and len(self.class_names) != self.num_classes:
            raise InvalidInput(f"teacher header class_names has {len(self.class_names)} names for {self.num_classes} classes")
        norm = Normalization.from_dict(self.normalization, "teacher header normalization")
        if len(norm.mean) != self.in_channels:
            raise InvalidInput(f"teacher header normalization has {len(norm.mean)} channels for {self.in_channels} input channels")
        for name in ("test_accuracy", "val_accuracy"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise InvalidInput(f"teacher header {name} must be in [0, 1], got {value}")

    def record(self) -> TeacherRecord:
        return TeacherRecord(self.arch, self.arch_kwargs, self.tensors_sha256, self.dataset, self.test_accuracy)

    def summary(self) -> dict:
        """The teacher's record as JSON-ready dict (what files made with it store)."""
        return self.record().to_dict()


@dataclass
class Teacher:
    """A loaded teacher: the model in eval mode and its header."""

    model: ImageClassifier
    header: TeacherHeader
    path: str = ""

    @property
    def normalization(self) -> Normalization:
        return Normalization.from_dict(self.header.normalization)

    def check_fits(self, info: DatasetInfo) -> None:
        """Refuse a teacher whose classes, input shape or normalization differ from the dataset's."""
        h = self.header
        name = self.path or h.arch
        if h.num_classes != info.num_classes:
            raise IncompatibleError(
                f"teacher {name} predicts {h.num_classes} classes but dataset {info.name} has {info.num_classes}",
                "use a teacher trained on this dataset (`ddkit teacher train --dataset ...`)",
            )
        if tuple(h.input_shape) != tuple(info.image_shape):
            raise IncompatibleError(
                f"teacher {name} takes inputs of shape {tuple(h.input_shape)} but dataset {info.name} has {tuple(info.image_shape)}",
                "use a teacher trained on images of this shape",
            )
        if Normalization.from_dict(h.normalization) != info.normalization:
            raise IncompatibleError(
                f"teacher {name} was trained with normalization {h.normalization} but dataset {info.name} uses {info.normalization.to_dict()}",
                "train the teacher on this dataset's normalization",
            )
        if h.class_names and list(h.class_names) != list(info.class_names):
            raise IncompatibleError(
                f"teacher {name} class order {h.class_names} differs from the dataset's {list(info.class_names)}",
                "use a teacher trained with the same class-name ↔ index map",
            )

    def require_batchnorm(self) -> None:
        if not has_batchnorm(self.model):
            raise IncompatibleError(
                f"teacher {self.path or self.header.arch} has no BatchNorm layers, which this method needs",
                "train a BN teacher, e.g. `ddkit teacher train --model convnet-bn` (or resnet8, resnet20, resnet18, mobilenet)",
            )


def tensors_sha256(state: dict[str, torch.Tensor]) -> str:
    """Hash of every tensor's name, dtype, shape and bytes, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_teacher(path: str | Path, model: ImageClassifier, info: DatasetInfo, overwrite: bool = False, **fields) -> TeacherHeader:
    """Write `model` as a teacher file (atomic); `fields` fill the header (accuracies, train config)."""
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    header = TeacherHeader(
        arch=model.arch,
        arch_kwargs=dict(model.arch_kwargs),
        in_channels=info.image_shape[0],
        image_size=info.image_shape[1],
        num_classes=info.num_classes,
        class_names=list(info.class_names),
        dataset=info.name,
        normalization=info.normalization.to_dict(),
        tensors_sha256=tensors_sha256(state),
        created=utc_now(),
        **fields,
    )
    text = json.dumps(asdict(header))
    with atomic_output(path, overwrite) as tmp:
        save_file(state, str(tmp), metadata={"ddkit": text, "ddkit_sha256": hashlib.sha256(text.encode()).hexdigest()})
    return header


def read_teacher_header(path: str | Path) -> TeacherHeader:
    """Read and check only the header (cheap)."""
    return _open(path)[0]


def _open(path: str | Path, load_tensors: bool = False):
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"teacher file {path} does not exist", "train one with `ddkit teacher train` or fix the path")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = _parse_header(path, fh.metadata() or {})
            state = None
            if load_tensors:
                # Check the tensors' names and shapes against the architecture the header names
                # before any tensor or model is allocated: a header cannot make ddkit build a
                # network larger than the weights the file really holds.
                _check_architecture(path, header, {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()})
                state = {k: fh.get_tensor(k) for k in fh.keys()}
    except DdkitError:
        raise
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise FileFormatError(
            f"{path} is not a readable safetensors teacher file ({type(exc).__name__}: {exc})",
            "the file is truncated or corrupt, or not a teacher; re-download or retrain it",
        ) from None
    return header, state


def _parse_header(path: Path, meta: dict) -> TeacherHeader:
    """The typed, checked header of a teacher file from its safetensors metadata."""
    raw = meta.get("ddkit")
    if raw is None:
        raise FileFormatError(
            f"{path} is a safetensors file without a ddkit teacher header",
            "save teachers with `ddkit teacher train` (foreign checkpoints must be imported first)",
        )
    if len(raw) > _MAX_HEADER_BYTES:
        raise FileFormatError(f"{path}: teacher header is larger than 1 MiB", "the file is not a ddkit teacher")
    if hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest() != meta.get("ddkit_sha256"):
        raise FileFormatError(f"{path}: teacher header hash mismatch — the header was modified or corrupted",
                              "re-download or retrain the teacher")
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise InvalidInput(f"the header must be a JSON object, got {type(data).__name__}")
        if data.get("format") != TEACHER_FORMAT:
            raise FileFormatError(f"{path} is not a ddkit teacher (format {data.get('format')!r})")
        schema = data.get("schema", 0)
        if isinstance(schema, int) and schema > TEACHER_SCHEMA:
            raise FileFormatError(
                f"{path} was written by a newer ddkit (teacher schema {data['schema']}, this ddkit reads {TEACHER_SCHEMA})",
                "upgrade ddkit: pip install -U ddkit",
            )
        header = TeacherHeader(**record_fields(TeacherHeader, data, "teacher header"))
        header.check()
    except FileFormatError:
        raise
    except InvalidInput as exc:
        raise FileFormatError(f"{path}: malformed teacher header: {exc.problem}",
                              "the file is corrupt or was not written by ddkit; re-download or retrain it") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise FileFormatError(f"{path}: malformed teacher header ({exc})", "the file is corrupt; re-download or retrain it") from None
    return header


def _check_architecture(path: Path, header: TeacherHeader, shapes: dict[str, tuple[int, ...]]) -> None:
    """Refuse weights whose names or shapes are not those of the header's architecture (built on the
    meta device, which allocates no memory)."""
    try:
        with torch.device("meta"):
            model = create_model(header.arch, header.in_channels, header.image_size, header.num_classes, **header.arch_kwargs)
    except DdkitError as exc:
        raise FileFormatError(f"{path}: the header's architecture cannot be built: {exc.problem}",
                              "the file is corrupt or needs a newer ddkit") from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if expected != shapes:
        wrong = sorted(k for k in set(expected) | set(shapes) if expected.get(k) != shapes.get(k))
        detail = ", ".join(f"{k}: header {expected.get(k)} vs file {shapes.get(k)}" for k in wrong[:3])
        raise FileFormatError(f"{path}: weights do not fit the {header.arch} {header.arch_kwargs} architecture ({detail})",
                              "the file is corrupt")


def load_teacher(path: str | Path, device: str | torch.device = "cpu") -> Teacher:
    """Rebuild the registered model from the header, check the tensors' hash, load, eval mode."""
    header, state = _open(path, load_tensors=True)
    if tensors_sha256(state) != header.tensors_sha256:
        raise FileFormatError(f"{path}: tensor hash mismatch — the weights were modified or corrupted", "re-download or retrain the teacher")
    model = create_model(header.arch, header.in_channels, header.image_size, header.num_classes, **header.arch_kwargs)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise FileFormatError(f"{path}: weights do not fit the {header.arch} architecture ({str(exc)[:300]})", "the file is corrupt") from None
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return Teacher(model, header, str(path))
