"""`DistilledSet`: the in-memory distilled dataset a synthesizer returns and the writer stores.

It holds the header fields the caller knows (method, config, seed, source, teachers, budget in IPC)
and the data (images, labels, label payloads, composite or formation). Everything derivable — byte counts,
instance counts, versions, the creation time — is computed when the file is written, so a
synthesizer cannot record a budget that disagrees with what the file stores.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch

import ddkit
from ddkit.data.base import ImageDataset, Normalization, check_pixels
from ddkit.errors import InvalidInput
from ddkit.provenance import utc_now
from ddkit.store.composite import AdditiveComposite, instance_labels
from ddkit.store.formation import FORMATION_SCHEMA, MultiFormation
from ddkit.store.meta import IMAGE_DTYPES, check_labels, check_provenance  # noqa: F401  (shared checks)
from ddkit.store.payloads import LabelPayload, payload_attrs
from ddkit.store.schema import BASE_SCHEMA, Budget, DatasetRecord, DistilledHeader, budget_parts


@dataclass
class DistilledSet:
    """A distilled dataset in memory; `write_distilled` stores it as a `.ddk.h5` file.

    `images` are N×C×H×W in [0, 1] (float, or uint8 0..255), `labels` int N. `soft` maps a scheme
    name to its payload (rows per *instance*: N stored images, then the composite's; or, with a
    `formation`, the n² decoded instances of each stored image in turn). `ipc` is the
    budget in stored images per class (compensators count as stored images); `bytes_source` is
    the size of the source split in bytes, for the compression ratio. `image_dtype` is "float16"
    (default for float images) or "uint8" (default for uint8 images; float images must then be
    exact multiples of 1/255, so storing is lossless).
    """

    method: str
    method_version: str
    config: dict
    seed: int
    dataset: DatasetRecord
    images: torch.Tensor
    labels: torch.Tensor
    ipc: int
    bytes_source: int
    teachers: list = field(default_factory=list)
    soft: dict[str, LabelPayload] = field(default_factory=dict)
    composite: AdditiveComposite | None = None
    formation: MultiFormation | None = None
    normalization: Normalization | None = None
    license_note: str = ""
    image_dtype: str | None = None

    def __post_init__(self):
        if dataclasses.is_dataclass(self.config) and not isinstance(self.config, type):
            self.config = dataclasses.asdict(self.config)
        self.images = torch.as_tensor(self.images).detach().cpu()
        self.labels = torch.as_tensor(self.labels).detach().cpu()
        if self.normalization is None:
            self.normalization = self.dataset.info.normalization

    @classmethod
    def from_source(cls, source: ImageDataset, **fields) -> DistilledSet:
        """A set distilled from `source`: fills `dataset` and `bytes_source` from it."""
        fields.setdefault("bytes_source", source.images.element_size() * source.images.numel())
        return cls(dataset=DatasetRecord.from_dataset(source), **fields)

    # -- derived quantities ----------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.dataset.info.num_classes

    @property
    def num_instances(self) -> int:
        if self.formation is not None:
            return self.formation.num_instances(len(self.images))
        return len(self.images) + (self.composite.num_instances if self.composite else 0)

    @property
    def num_stored(self) -> int:
        """Stored images counted against the IPC budget: images plus compensators."""
        return len(self.images) + (len(self.composite.compensators) if self.composite else 0)

    def instance_labels(self) -> torch.Tensor:
        if self.formation is not None:
            return self.formation.labels(self.labels)
        return instance_labels(self.labels, self.composite)

    @property
    def schema(self) -> int:
        """The schema the file is written at: the lowest that holds what it stores."""
        return FORMATION_SCHEMA if self.formation is not None else BASE_SCHEMA

    # -- validation ------------------------------------------------------------------------------
    def check(self) -> None:
        """Refuse (InvalidInput) anything the file must not contain; writes nothing."""
        check_provenance(self.method, self.config, self.teachers)
        info = self.dataset.info
        check_pixels(self.images, info.image_shape, "distilled images")
        if len(self.images) == 0:
            raise InvalidInput("the distilled set has no images", "store at least one image")
        check_labels(self.labels, info.num_classes, len(self.images))
        if len(self.normalization.mean) != info.image_shape[0] or len(self.normalization.std) != info.image_shape[0]:
            raise InvalidInput(f"normalization {self.normalization} does not have {info.image_shape[0]} channels")
        if self.composite is not None:
            self.composite.check(len(self.images), info.image_shape)
        if self.formation is not None:
            if not isinstance(self.formation, MultiFormation):
                raise InvalidInput(f"formation must be a MultiFormation, got {type(self.formation).__name__}")
            if self.composite is not None:
                raise InvalidInput("a set stores either a composite (composed instances) or a formation "
                                   "(decoded instances), not both", "drop one of them")
            self.formation.check(info.image_shape)
        for key, payload in self.soft.items():
            if key != payload.scheme:
                raise InvalidInput(f"soft payload stored under {key!r} has scheme {payload.scheme!r}", "key soft by scheme")
            payload.check(self.num_instances, info.num_classes)
        if self.ipc < 1 or self.num_stored > self.ipc * info.num_classes:
            raise InvalidInput(
                f"{self.num_stored} stored images (and compensators) exceed the budget of ipc={self.ipc} "
                f"× {info.num_classes} classes",
                "store fewer images or raise the budget",
            )
        if self.bytes_source <= 0:
            raise InvalidInput(f"bytes_source must be the source split's size in bytes, got {self.bytes_source}")

    # -- what the writer stores ------------------------------------------------------------------
    def stored_images(self) -> np.ndarray:
        """The images at their stored dtype (float16, or lossless uint8)."""
        x = self.images
        dtype = self.image_dtype or ("uint8" if x.dtype == torch.uint8 else "float16")
        if dtype not in IMAGE_DTYPES:
            raise InvalidInput(f"image_dtype must be one of {', '.join(IMAGE_DTYPES)}, got {dtype!r}")
        if dtype == "float16":
            return (x.float() / 255.0 if x.dtype == torch.uint8 else x).to(torch.float16).numpy()
        if x.dtype != torch.uint8:
            quantized = (x.double() * 255.0).round()
            if (quantized / 255.0 - x.double()).abs().max() > 1e-6:
                raise InvalidInput(
                    "uint8 storage would change these images (they are not multiples of 1/255)",
                    "store them as float16 (the default) or pass uint8 images",
                )
            x = quantized.to(torch.uint8)
        return x.numpy()

    def layout(self) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
        """The datasets to store by path, and the attributes of the groups that hold payloads."""
        arrays = {"images": self.stored_images(), "labels": self.labels.long().numpy()}
        groups: dict[str, dict] = {}
        for scheme, payload in self.soft.items():
            arrays.update({f"soft/{scheme}/{k}": a for k, a in payload.arrays().items()})
            groups[f"soft/{scheme}"] = payload_attrs(payload)
        if self.composite is not None:
            arrays.update({f"composite/{k}": a for k, a in self.composite.arrays().items()})
            groups["composite"] = self.composite.attrs()
        if self.formation is not None:
            groups["formation"] = self.formation.attrs()  # no arrays: the decoder has no parameters
        return arrays, groups

    def header(self, arrays: dict[str, np.ndarray]) -> DistilledHeader:
        """The file header for this set stored as `arrays` (see `layout`)."""
        budget = Budget.compute(
            self.ipc, self.num_instances, self.num_classes,
            budget_parts((p, a.nbytes) for p, a in arrays.items()), self.bytes_source,
        )
        record = self.dataset
        return DistilledHeader(
            ddkit_version=ddkit.__version__,
            created=utc_now(),
            method=self.method,
            method_version=str(self.method_version),
            config=self.config,
            seed=int(self.seed),
            dataset=record,
            normalization=self.normalization,
            teachers=list(self.teachers),
            budget=budget,
            license_note=self.license_note
            or f"Derived from {record.info.name} ({record.split}); the source dataset's license and terms apply.",
        )
