"""The two sides every interchange format meets: a `.ddk.h5` read for export, a foreign set built for import.

`Exportable` is a distilled file in memory the way the field's formats see it: every training
instance as float pixels in [0, 1] (INFER's composed instances expanded), one hard label each, the
stored logits when there are any, the learned step size when there is one. Beside the format's own
files every export writes a sidecar, `ddkit.json` (the file's header, content hash and result
cards) and `extras/` (every label payload, the composite parts and, where the format's pixels are
not exact, the stored images, as `.npy`), so a ddkit import restores the file bit for bit.

`Imported` is what an importer read: pixels, labels and what the source says about itself.
`write_imported` turns it into a `.ddk.h5` whose provenance names the source, its sha256 and
"imported"; when the source carries a ddkit sidecar, the header and extras come from it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ddkit.data import load_dataset
from ddkit.data.base import Normalization
from ddkit.errors import FileFormatError, IncompatibleError, InvalidInput
from ddkit.share.files import load_npy_tree, save_npy, source_sha256
from ddkit.store import PAYLOADS, AdditiveComposite, DatasetRecord, DistilledDataset, DistilledSet, LabelPayload
from ddkit.store.payloads import GenericPayload
from ddkit.store.results import read_results
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
            "results": self.results,
        }

    def write_sidecar(self, folder: Path, fmt: str, exact_pixels: bool) -> None:
        """`ddkit.json` and `extras/` (payloads, composite, and the stored images unless the format's are exact)."""
        (folder / SIDECAR).write_text(json.dumps(self.sidecar(fmt, exact_pixels), indent=1, sort_keys=True) + "\n")
        extras = folder / EXTRAS
        save_npy(extras / "labels.npy", self.labels)
        if not exact_pixels:
            save_npy(extras / "images.npy", self.stored)
        for scheme, payload in self.dataset.soft.items():
            for name, array in payload.arrays().items():
                save_npy(extras / "soft" / scheme / f"{name}.npy", array)
        if self.dataset.composite is not None:
            for name, array in self.dataset.composite.arrays().items():
                save_npy(extras / "composite" / f"{name}.npy", array)


def read_exportable(path: str | os.PathLike) -> Exportable:
    """Open and verify a `.ddk.h5` file for export (the content hash is always checked)."""
    ds = DistilledDataset(path, verify=True)
    with ds:
        stored = ds._h5()["images"][()]
        pixels = ds.pixels()
        _ = ds.soft  # read and check the payloads while the file is open
    return Exportable(str(path), ds, stored, pixels, ds.labels.numpy().astype(np.int64), read_results(path))


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
    x = norm.invert(images.float())
    outside = ((x < 0) | (x > 1)).float().mean().item()
    details["undone_normalization"] = norm.to_dict()
    details["clipped_fraction"] = round(outside, 6)
    return x.clamp_(0.0, 1.0)


def read_sidecar(folder: Path) -> dict | None:
    path = folder / SIDECAR
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FileFormatError(f"{path} is not readable JSON ({exc})", "re-export the set") from None
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
        raise FileFormatError(f"{path} is not a ddkit export record", "remove it, or re-export the set")
    return meta


def _as_stored(images: torch.Tensor) -> torch.Tensor:
    """uint8 when the pixels are 8-bit values (PNG, or 8-bit pixels that went through float math), else float."""
    if images.dtype == torch.uint8:
        return images
    scaled = images.double() * 255.0
    if bool((scaled - scaled.round()).abs().max() < 1e-3):
        return scaled.round().to(torch.uint8)
    return images.float()


def _restore(meta: dict, folder: Path, imported: Imported) -> dict:
    """DistilledSet fields from a ddkit sidecar and its extras (exact stored images, payloads, composite)."""
    extras = load_npy_tree(folder / EXTRAS) if (folder / EXTRAS).is_dir() else {}
    num_stored = int(meta["num_stored"])
    images = torch.from_numpy(extras["images"]) if "images" in extras else imported.images[:num_stored]
    if meta["image_dtype"] == "uint8" and images.dtype != torch.uint8:
        images = (images.double() * 255.0).round().to(torch.uint8)  # pixels that went through float math
    elif images.dtype != torch.uint8:
        images = images.float()
    labels = imported.labels[:num_stored]
    soft: dict[str, LabelPayload] = {}
    for scheme, record in meta.get("soft", {}).items():
        arrays = {k.split("/", 2)[2]: v for k, v in extras.items() if k.startswith(f"soft/{scheme}/")}
        fields, payload_meta = record.get("fields", {}), record.get("meta", {})
        soft[scheme] = (
            PAYLOADS.get(scheme).from_stored(arrays, fields, payload_meta)
            if scheme in PAYLOADS
            else GenericPayload(scheme, arrays, fields, meta=payload_meta)
        )
    composite = None
    if meta.get("composite"):
        arrays = {k.split("/", 1)[1]: v for k, v in extras.items() if k.startswith("composite/")}
        extra = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("extra/")}
        composite = AdditiveComposite(arrays["compensators"], arrays["members"], extra)
    return dict(
        method=meta["method"],
        method_version=meta["method_version"],
        seed=int(meta["seed"]),
        images=images,
        labels=labels,
        ipc=int(meta["budget"]["ipc_stored"]),
        soft=soft,
        composite=composite,
        bytes_source=int(meta["budget"]["bytes_source"]),
        teachers=list(meta.get("teachers", [])),
        license_note=meta.get("license_note", ""),
        image_dtype=meta["image_dtype"],
        normalization=Normalization.from_dict(meta["normalization"]),
        original_config=meta.get("config", {}),
    )


def write_imported(
    imported: Imported,
    fmt: str,
    source: str | os.PathLike,
    dataset: str,
    out: str | os.PathLike,
    overwrite: bool = False,
    source_label: str | None = None,
) -> str:
    """Write `imported` as a `.ddk.h5` for registered dataset `dataset`; returns its content_sha256."""
    source = Path(source)
    folder = source if source.is_dir() else source.parent
    meta = read_sidecar(folder)
    if meta is not None and meta["dataset"]["name"] != dataset:
        raise IncompatibleError(
            f"{source} was exported from a {meta['dataset']['name']} set, not {dataset}",
            f"import it with --dataset {meta['dataset']['name']}",
        )
    provenance = {
        "imported": True,
        "format": fmt,
        "source": source_label or str(source),
        "source_sha256": source_sha256(source),
        **imported.details,
    }
    if meta is not None:
        fields = _restore(meta, folder, imported)
        record = DatasetRecord.from_dict(meta["dataset"])
        provenance["original_content_sha256"] = meta["content_sha256"]
        config = {**fields.pop("original_config"), "import": provenance}
        dset = DistilledSet(config=config, dataset=record, **fields)
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
        if len(labels) and int(labels.max()) >= info.num_classes:  # before any count: a label of 3e8 is no class
            raise IncompatibleError(
                f"{source} has labels up to {int(labels.max())}, dataset {dataset} has {info.num_classes} classes",
                "import into the dataset the set was distilled from",
            )
        counts = torch.bincount(labels, minlength=info.num_classes) if len(labels) else torch.zeros(1)
        config = {"import": provenance}
        if imported.learned_lr is not None:
            config["learned_lr"] = imported.learned_lr
        soft = {}
        if imported.logits is not None:
            from ddkit.store import LogitsLabels

            soft["logits"] = LogitsLabels(imported.logits, meta={"source": f"imported from {fmt}"})
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
    return write_distilled(out, dset, overwrite=overwrite)
