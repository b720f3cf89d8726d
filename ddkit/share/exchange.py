"""The two sides every interchange format meets: a `.ddk.h5` read for export, a foreign set built for import.

`Exportable` is a distilled file in memory the way the field's formats see it: every training
instance as float pixels in [0, 1] (INFER's composed instances expanded, a formation's instances
decoded), one hard label each, the
stored logits when there are any, the learned step size when there is one. Beside the format's own
files every export writes a sidecar, `ddkit.json` (the file's header, content hash and result
cards, the formation) and `extras/` (every label payload, the composite parts and, where the
format's pixels are not the stored images exactly, the stored images, as `.npy`), so a ddkit
import restores the file bit for bit.

`Imported` is what an importer read: pixels, labels and what the source says about itself.
`write_imported` turns it into a `.ddk.h5` whose provenance names the source, its sha256 and
"imported"; when the source carries a ddkit sidecar, the header and extras come from it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddkit.data import load_dataset
from ddkit.data.base import Normalization
from ddkit.errors import FileFormatError, IncompatibleError, InvalidInput
from ddkit.paths import kind, read_json
from ddkit.records import check_value, record_fields
from ddkit.share.files import load_npy_tree, save_npy, source_sha256
from ddkit.store import PAYLOADS, AdditiveComposite, DatasetRecord, DistilledDataset, DistilledSet, LabelPayload
from ddkit.store.distilled import check_labels
from ddkit.store.formation import MultiFormation
from ddkit.store.hashing import header_attrs, header_sha256_of
from ddkit.store.payloads import GenericPayload
from ddkit.store.results import read_results
from ddkit.store.schema import DISTILLED_FORMAT, Budget
from ddkit.store.writer import write_distilled

SIDECAR = "ddkit.json"
EXTRAS = "extras"
SIDECAR_FORMAT = "ddkit.export"


@dataclass
class Exportable:
    """A `.ddk.h5` file read for export (see the module docstring)."""

    path: str
    dataset: DistilledDataset
    stored: np.ndarray  # the stored images at their stored dtype
    pixels: torch.Tensor  # float32 in [0, 1], one row per instance
    labels: np.ndarray  # int64, one per instance
    results: dict
    header_attrs: dict | None = None  # every header attribute, so an import can check a signature
    signature: dict | None = None  # the file's signature record, when it is signed

    @property
    def header(self):
        return self.dataset.header

    @property
    def class_names(self) -> list[str]:
        return self.dataset.classes

    @property
    def logits(self) -> np.ndarray | None:
        payload = self.dataset.soft.get("logits")
        return None if payload is None else np.asarray(payload.values)

    @property
    def learned_lr(self) -> float | None:
        lr = self.header.config.get("learned_lr")
        return float(lr) if isinstance(lr, (int, float)) else None

    @property
    def normalization(self) -> Normalization:
        return self.header.normalization

    def sidecar(self, fmt: str, exact_pixels: bool) -> dict:
        """The `ddkit.json` record: everything an import needs to rebuild the header and the extras."""
        h = self.dataset.header
        soft = {s: {"fields": p.fields(), "meta": p.meta} for s, p in self.dataset.soft.items()}
        return {
            "format": SIDECAR_FORMAT,
            "version": 1,
            "exported_to": fmt,
            "source_file": Path(self.path).name,
            "content_sha256": self.dataset.content_sha256,
            "method": h.method,
            "method_version": h.method_version,
            "config": h.config,
            "seed": h.seed,
            "dataset": h.dataset.to_dict(),
            "normalization": h.normalization.to_dict(),
            "teachers": h.teachers,
            "budget": h.budget.to_dict(),
            "license_note": h.license_note,
            "image_dtype": str(self.stored.dtype),
            "num_stored": int(len(self.stored)),
            "exact_pixels": exact_pixels,
            "soft": soft,
            "composite": self.dataset.composite is not None,
            "formation": None if self.dataset.formation is None else self.dataset.formation.to_dict(),
            "results": self.results,
            "header_attrs": self.header_attrs,
            "signature": self.signature,
        }

    def write_sidecar(self, folder: Path, fmt: str, exact_pixels: bool) -> None:
        """`ddkit.json` and `extras/` (payloads, composite, and the stored images unless the format's are exact)."""
        (folder / SIDECAR).write_text(json.dumps(self.sidecar(fmt, exact_pixels), indent=1, sort_keys=True) + "\n")
        extras = folder / EXTRAS
        save_npy(extras / "labels.npy", self.labels)
        if not exact_pixels or self.dataset.formation is not None:  # decoded instances are not the stored images
            save_npy(extras / "images.npy", self.stored)
        for scheme, payload in self.dataset.soft.items():
            for name, array in payload.arrays().items():
                save_npy(extras / "soft" / scheme / f"{name}.npy", array)
        if self.dataset.composite is not None:
            for name, array in self.dataset.composite.arrays().items():
                save_npy(extras / "composite" / f"{name}.npy", array)


def read_exportable(path: str | os.PathLike) -> Exportable:
    """Open and verify a `.ddk.h5` file for export (the content hash is always checked)."""
    from ddkit.share.sign import read_signature

    ds = DistilledDataset(path, verify=True)
    with ds:
        stored = ds._h5()["images"][()]
        pixels = ds.pixels()
        attrs = header_attrs(ds._h5())
        _ = ds.soft  # read and check the payloads while the file is open
    signature = read_signature(path)
    return Exportable(str(path), ds, stored, pixels, ds.labels.numpy().astype(np.int64), read_results(path), attrs,
                      signature.to_dict() if signature else None)


def exact_in_uint8(stored: np.ndarray) -> bool:
    """True when 8-bit pixels (PNG) reproduce the stored images exactly."""
    return stored.dtype == np.uint8


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """Float pixels in [0, 1] as uint8 (rounded), N×C×H×W."""
    return (pixels.clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()


# -- the import side ------------------------------------------------------------------------------


@dataclass
class Imported:
    """A foreign set as read by an importer: pixels in [0, 1] (float or uint8), labels, and provenance."""

    images: torch.Tensor
    labels: torch.Tensor
    method: str
    logits: np.ndarray | None = None
    learned_lr: float | None = None
    details: dict = field(default_factory=dict)  # what the importer did (undone normalization, ZCA, clipping)


def unnormalize(images: torch.Tensor, norm: Normalization, details: dict) -> torch.Tensor:
    """Normalized images back to [0, 1] pixels; values outside are clipped and the clipped share recorded."""
    if images.ndim != 4 or images.shape[1] != len(norm.mean):
        raise IncompatibleError(f"the normalization has {len(norm.mean)} channel(s), the images have shape "
                                f"{tuple(images.shape)} (N×C×H×W)",
                                "import into the dataset the set was made from, or give one --mean/--std value per "
                                "image channel")
    if images.is_complex() or images.dtype == torch.bool:
        raise InvalidInput(f"the images are {images.dtype}, not pixel values", "give real-valued image tensors")
    x = norm.invert(images.float())
    outside = ((x < 0) | (x > 1)).float().mean().item()
    details["undone_normalization"] = norm.to_dict()
    details["clipped_fraction"] = round(outside, 6)
    return x.clamp_(0.0, 1.0)


@dataclass(frozen=True)
class SoftRecord:
    """One label payload in `ddkit.json`: its stored fields and meta (the arrays are in extras/soft/)."""

    fields: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict, where: str = "soft") -> SoftRecord:
        return cls(**record_fields(cls, d, where))


IMAGE_DTYPES = ("uint8", "float16", "float32")


@dataclass(frozen=True)
class ExportSidecar:
    """`ddkit.json`, the record every export writes beside the format's files, read as a typed record:
    a stranger's folder may carry any JSON under that name, so every field is checked before use."""

    format: str
    version: int
    content_sha256: str
    method: str
    method_version: str
    seed: int
    dataset: DatasetRecord
    normalization: Normalization
    budget: Budget
    image_dtype: str
    num_stored: int
    exported_to: str = ""
    source_file: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    teachers: list[dict[str, Any]] = field(default_factory=list)
    license_note: str = ""
    exact_pixels: bool = True
    soft: dict[str, SoftRecord] = field(default_factory=dict)
    composite: bool = False
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    header_attrs: dict[str, dict[str, Any]] | None = None  # the original header, for signatures
    signature: dict[str, Any] | None = None  # the original file's signature, when it had one
    formation: dict[str, Any] | None = None  # the stored images' decoder (ddkit.store.formation), when there is one

    @classmethod
    def from_dict(cls, d: Any, where: str = SIDECAR) -> ExportSidecar:
        values = record_fields(cls, d, where, allow_extra=True)
        if values["format"] != SIDECAR_FORMAT:
            raise InvalidInput(f"{where}.format is {values['format']!r}, not {SIDECAR_FORMAT!r}")
        if not 1 <= values["version"] <= 1:
            raise InvalidInput(f"{where}.version {values['version']} is not one this ddkit reads (1)")
        if values["image_dtype"] not in IMAGE_DTYPES:
            raise InvalidInput(f"{where}.image_dtype must be one of {', '.join(IMAGE_DTYPES)}, "
                               f"got {values['image_dtype']!r}")
        if values["num_stored"] < 1:
            raise InvalidInput(f"{where}.num_stored must be at least 1, got {values['num_stored']}")
        formation = values.get("formation")
        if formation is not None:
            factor = formation.get("factor")
            if formation.get("kind") != MultiFormation.kind or isinstance(factor, bool) or not isinstance(factor, int) \
                    or not 2 <= factor <= 64:
                raise InvalidInput(f"{where}.formation must be {{'kind': 'multi', 'factor': 2..64}}, got "
                                   f"{repr(formation)[:80]}", "export the set again with this ddkit")
        return cls(**values)

    @property
    def multi_formation(self) -> MultiFormation | None:
        return None if self.formation is None else MultiFormation(self.formation["factor"])

    @property
    def source_name(self) -> str:
        return self.dataset.info.name


def read_sidecar(folder: Path, follow_symlinks: bool = False) -> ExportSidecar | None:
    """The typed `ddkit.json` of an export folder, or None when there is none; a link, special file,
    malformed JSON or a mistyped field is one FileFormatError naming the field."""
    path = folder / SIDECAR
    if kind(path) == "missing":
        return None
    fix = "re-export the set, or remove the file"
    data = read_json(path, "export record", fix=fix, follow_symlinks=follow_symlinks)
    try:
        return ExportSidecar.from_dict(data, str(path))
    except InvalidInput as exc:
        raise FileFormatError(exc.problem, fix) from None


# -- foreign values, checked before use -----------------------------------------------------------


def as_labels(raw: Any, where: str) -> torch.Tensor:
    """Hard labels from a foreign file as int64, one per instance: whole, non-negative numbers only.

    A list may hold ints (or whole floats); nulls, strings, booleans and fractional values are refused
    naming the first one (a fractional label is not silently truncated). The range against the
    dataset's classes is checked by `write_imported`, before anything is counted.
    """
    if isinstance(raw, torch.Tensor):
        if raw.dtype == torch.bool or raw.is_complex():
            raise InvalidInput(f"{where} are {raw.dtype}, not class indices", "store integer class indices")
        flat = raw.detach().reshape(-1)
        if flat.is_floating_point():
            bad = ~torch.isfinite(flat) | (flat != torch.round(flat))
            if bool(bad.any()):
                i = int(torch.nonzero(bad)[0])
                raise InvalidInput(f"{where}[{i}] is {float(flat[i])!r}, not a whole class index",
                                   "store integer class indices (soft labels go in soft_labels.pt)")
            if len(flat) and float(flat.abs().max()) >= 2**62:
                raise InvalidInput(f"{where} hold values beyond any class index", "store integer class indices")
        labels = flat.long()
    elif isinstance(raw, (list, tuple)):
        values = []
        for i, v in enumerate(raw):
            if isinstance(v, float) and math.isfinite(v) and v == int(v) and abs(v) < 2**62:
                v = int(v)
            if isinstance(v, bool) or not isinstance(v, int) or abs(v) >= 2**62:
                raise InvalidInput(f"{where}[{i}] is {v!r}, not a class index", "store integer class indices")
            values.append(v)
        labels = torch.tensor(values, dtype=torch.long)
    else:
        raise InvalidInput(f"{where} are a {type(raw).__name__}, not a list of class indices")
    if len(labels) and int(labels.min()) < 0:
        i = int(torch.nonzero(labels < 0)[0])
        raise InvalidInput(f"{where}[{i}] is {int(labels[i])}, a negative class index", "class indices start at 0")
    return labels


def as_logits(raw: Any, count: int, where: str) -> np.ndarray:
    """Stored logits from a foreign file: a rectangular N×K table of finite numbers, one row per instance."""
    try:
        if isinstance(raw, torch.Tensor):
            if raw.is_complex() or raw.dtype == torch.bool:
                raise ValueError(f"dtype {raw.dtype}")
            array = raw.detach().float().numpy()
        else:
            array = np.asarray(raw, dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"{where} are not a table of numbers ({str(exc)[:120]}): rows of different lengths, "
                           "strings or nulls", "store one row of K numbers per instance") from None
    if array.ndim != 2 or array.shape[1] < 1:
        raise InvalidInput(f"{where} have shape {array.shape}, expected N×K", "store one row of K numbers per instance")
    if len(array) != count:
        raise InvalidInput(f"{where} have {len(array)} rows for {count} instances", "store one row per instance")
    if not np.isfinite(array).all():
        raise InvalidInput(f"{where} hold NaN or infinite values", "store finite logits")
    return array


def as_learned_lr(raw: Any, where: str) -> float:
    """A learned student step size: one finite number > 0 (a negative or NaN step would be stored silently)."""
    if isinstance(raw, torch.Tensor):
        if raw.numel() != 1 or raw.is_complex() or raw.dtype == torch.bool:
            raise InvalidInput(f"{where} holds {raw.numel()} values of {raw.dtype}, not one step size",
                               "store one number, e.g. torch.save(torch.tensor(0.01), 'lr.pt')")
        raw = float(raw.reshape(-1)[0])
    value = check_value(raw, float, where) if not isinstance(raw, float) else raw
    if not math.isfinite(value) or value <= 0:
        raise InvalidInput(f"{where} is {value!r}: a learned step size must be a finite number > 0",
                           "store the positive step size the set was distilled with")
    return float(value)


def _as_stored(images: torch.Tensor) -> torch.Tensor:
    """uint8 when the pixels are 8-bit values (PNG, or 8-bit pixels that went through float math), else float."""
    if images.dtype == torch.uint8:
        return images
    scaled = images.double() * 255.0
    if bool((scaled - scaled.round()).abs().max() < 1e-3):
        return scaled.round().to(torch.uint8)
    return images.float()


def _restore(meta: ExportSidecar, folder: Path, imported: Imported, follow_symlinks: bool = False) -> dict:
    """DistilledSet fields from a ddkit sidecar and its extras (exact stored images, payloads, composite)."""
    extras = load_npy_tree(folder / EXTRAS) if kind(folder / EXTRAS) != "missing" else {}
    num_stored = meta.num_stored
    images = torch.from_numpy(extras["images"]) if "images" in extras else imported.images[:num_stored]
    if images.dtype == torch.bool or images.is_complex() or images.ndim != 4:
        raise InvalidInput(f"{EXTRAS}/images.npy is {images.dtype} of shape {tuple(images.shape)}, not N×C×H×W pixels")
    if meta.image_dtype == "uint8" and images.dtype != torch.uint8:
        images = (images.double() * 255.0).round().to(torch.uint8)  # pixels that went through float math
    elif images.dtype != torch.uint8:
        images = images.float()
    formation = meta.multi_formation
    if formation is not None:
        labels = imported.labels[:: formation.per_image][:num_stored]  # a stored image's instances share its label
    else:
        labels = imported.labels[:num_stored]
    soft: dict[str, LabelPayload] = {}
    for scheme, record in meta.soft.items():
        arrays = {k.split("/", 2)[2]: v for k, v in extras.items() if k.startswith(f"soft/{scheme}/")}
        soft[scheme] = (
            PAYLOADS.get(scheme).from_stored(arrays, record.fields, record.meta)
            if scheme in PAYLOADS
            else GenericPayload(scheme, arrays, record.fields, meta=record.meta)
        )
    composite = None
    if meta.composite:
        arrays = {k.split("/", 1)[1]: v for k, v in extras.items() if k.startswith("composite/")}
        extra = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("extra/")}
        if "compensators" not in arrays or "members" not in arrays:
            raise InvalidInput(f"{SIDECAR} says the set is composite, but {EXTRAS}/composite lacks the compensators "
                               "or members arrays")
        composite = AdditiveComposite(arrays["compensators"], arrays["members"], extra)
    return dict(
        method=meta.method,
        method_version=meta.method_version,
        seed=meta.seed,
        images=images,
        labels=labels,
        ipc=meta.budget.ipc_stored,
        soft=soft,
        composite=composite,
        formation=formation,
        bytes_source=meta.budget.bytes_source,
        teachers=list(meta.teachers),
        license_note=meta.license_note,
        image_dtype=meta.image_dtype,
        normalization=meta.normalization,
        original_config=meta.config,
    )


def write_imported(
    imported: Imported,
    fmt: str,
    source: str | os.PathLike,
    dataset: str,
    out: str | os.PathLike,
    overwrite: bool = False,
    source_label: str | None = None,
    follow_symlinks: bool = False,
    trusted_keys: str | os.PathLike | bool | None = None,
) -> str:
    """Write `imported` as a `.ddk.h5` for registered dataset `dataset`; returns its content_sha256.

    `follow_symlinks`: the source folder may hold links (the user opted in); they are hashed as what
    they point to. Otherwise a link or special file in the source folder is refused. `trusted_keys`
    (a trusted-keys file, or True for the default one) requires the source to be a ddkit export of
    a set signed by one of those keys, reproduced exactly (`verify_sidecar`).
    """
    source = Path(source)
    folder = source if source.is_dir() else source.parent
    meta = read_sidecar(folder, follow_symlinks)
    if meta is not None and meta.source_name != dataset:
        raise IncompatibleError(
            f"{source} was exported from a {meta.source_name} set, not {dataset}",
            f"import it with --dataset {meta.source_name}",
        )
    provenance = {
        "imported": True,
        "format": fmt,
        "source": source_label or str(source),
        "source_sha256": source_sha256(source, follow_symlinks),
        **imported.details,
    }
    expect_content = None
    if trusted_keys is not None:
        if meta is None:
            from ddkit.share.sign import SignatureRefused

            raise SignatureRefused(f"{source} carries no ddkit export record ({SIDECAR}), so no signature",
                                   "import a folder exported by ddkit from a signed set, or drop --require-signature")
        verify_sidecar(meta, folder / SIDECAR, trusted_keys)
        expect_content = meta.content_sha256  # the import must reproduce the signed data exactly
    if meta is not None:
        check_labels(imported.labels, meta.dataset.info.num_classes, len(imported.labels), f"{source} labels")
        try:
            fields = _restore(meta, folder, imported, follow_symlinks)
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise FileFormatError(f"{folder}: {SIDECAR} and {EXTRAS}/ do not fit together ({str(exc)[:200]})",
                                  "re-export the set") from None
        provenance["original_content_sha256"] = meta.content_sha256
        config = {**fields.pop("original_config"), "import": provenance}
        dset = DistilledSet(config=config, dataset=meta.dataset, **fields)
    else:
        source_set = load_dataset(dataset, "train")
        info = source_set.info
        if tuple(imported.images.shape[1:]) != tuple(info.image_shape):
            raise IncompatibleError(
                f"{source} holds images of shape {tuple(imported.images.shape[1:])}, "
                f"dataset {dataset} has {info.image_shape}",
                "import into the dataset the set was distilled from (--dataset NAME)",
            )
        labels = imported.labels.long()
        if len(labels) != len(imported.images):
            raise FileFormatError(f"{source}: {len(imported.images)} images but {len(labels)} labels",
                                  "give one label per image")
        if len(labels) and int(labels.max()) >= info.num_classes:  # before any count: a label of 3e8 is no class
            raise IncompatibleError(
                f"{source} has labels up to {int(labels.max())}, dataset {dataset} has {info.num_classes} classes",
                "import into the dataset the set was distilled from",
            )
        check_labels(labels, info.num_classes, len(labels), f"{source} labels")
        counts = torch.bincount(labels, minlength=info.num_classes) if len(labels) else torch.zeros(1)
        config = {"import": provenance}
        if imported.learned_lr is not None:
            config["learned_lr"] = as_learned_lr(imported.learned_lr, f"{source} learned lr")
        soft = {}
        if imported.logits is not None:
            from ddkit.store import LogitsLabels

            logits = as_logits(imported.logits, len(labels), f"{source} logits")
            soft["logits"] = LogitsLabels(logits, meta={"source": f"imported from {fmt}"})
        dset = DistilledSet.from_source(
            source_set,
            method=imported.method,
            method_version="imported",
            config=config,
            seed=0,
            images=_as_stored(imported.images),
            labels=labels,
            ipc=max(1, int(counts.max())),
            soft=soft,
            license_note=f"Imported from {source.name} ({fmt}); derived from {info.name}: the source dataset's "
            "and the set's publishers' terms apply.",
        )
    if len(dset.images) == 0:
        raise InvalidInput(f"{source} holds no images", "check the source path and --from format")
    return write_distilled(out, dset, overwrite=overwrite, expect_content=expect_content)


_SIGNED_TEXT = ("method", "method_version", "license_note")
_SIGNED_JSON = {"config": None, "teachers": None, "dataset": DatasetRecord, "normalization": Normalization,
                "budget": Budget}


def verify_sidecar(meta: ExportSidecar, where: Path, trusted_keys: str | os.PathLike | bool) -> None:
    """Refuse (SignatureRefused) an export whose `ddkit.json` does not carry a signature by a trusted
    key over the original file's identity, or whose header fields differ from the signed header.

    The original header travels as `header_attrs`; its hash is recomputed here, so the signature is
    checked against the header itself, and every field the import uses is compared with it. The data
    is checked when the imported file is built: its content hash must be the signed one.
    """
    from ddkit.share.sign import Signature, SignatureRefused, check_signature, read_trusted_keys

    trusted = read_trusted_keys(None if trusted_keys is True else trusted_keys)
    if meta.signature is None or meta.header_attrs is None:
        raise SignatureRefused(f"{where} carries no signature (the exported set was not signed)",
                               "ask for an export of a signed set (`ddkit sign FILE --key K`, then export)")
    try:
        signature = Signature.from_dict(meta.signature, f"{where} signature")
        header = header_sha256_of(meta.header_attrs)
        root = meta.header_attrs.get("", {})
        fmt = root.get("format")
        if fmt != DISTILLED_FORMAT:
            raise InvalidInput(f"header_attrs names format {fmt!r}")
    except (InvalidInput, ValueError, OverflowError) as exc:
        raise SignatureRefused(f"{where}: the signature record is malformed ({exc})",
                               "re-export the signed set") from None
    check_signature(signature, fmt, meta.content_sha256, header, trusted, str(where))
    differ = [k for k in _SIGNED_TEXT if root.get(k) != getattr(meta, k)]
    differ += [] if root.get("seed") == meta.seed else ["seed"]
    for key, record in _SIGNED_JSON.items():
        try:
            value = json.loads(root.get(key, "null"))
            value = record.from_dict(value) if record is not None else value
        except (ValueError, TypeError, InvalidInput, RecursionError):
            value = None
        if value != getattr(meta, key):
            differ.append(key)
    for scheme, soft in meta.soft.items():
        group = meta.header_attrs.get(f"soft/{scheme}", {})
        try:
            same = (json.loads(group.get("fields", "null")) == soft.fields
                    and json.loads(group.get("meta", "null")) == soft.meta)
        except (ValueError, TypeError, RecursionError):
            same = False
        if not same:
            differ.append(f"soft.{scheme}")
    if sorted(s for s in meta.header_attrs if s.startswith("soft/")) != sorted(f"soft/{k}" for k in meta.soft):
        differ.append("soft")
    if differ:
        raise SignatureRefused(f"{where}: field(s) {', '.join(differ)} differ from the signed header",
                               "do not use this export; ask for a good copy of the signed set")
