"""Label payloads (`/soft/<scheme>`): what a file stores about its labels beyond the hard `/labels`.

Each scheme is a small dataclass registered by name. On disk a payload is a group with a `scheme`
attribute, its arrays as datasets, its non-array fields as a JSON `fields` attribute and free-form
provenance as a JSON `meta` attribute (e.g. which teachers, which temperature). A scheme this
ddkit does not know is read as a `GenericPayload` holding its arrays, so a file written by a newer
ddkit still opens and can be copied without losing the payload.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import h5py
import numpy as np

from ddkit.errors import InvalidInput
from ddkit.registry import Registry
from ddkit.store.arrays import as_array, check_finite
from ddkit.store.h5io import read_group_arrays
from ddkit.store.schema import attr_text, dump_json, load_json

PAYLOADS = Registry("label payload")


@dataclass
class LabelPayload:
    """Base of the label payloads. Subclasses declare `scheme` and their arrays as fields."""

    scheme: ClassVar[str] = ""
    meta: dict = field(default_factory=dict, kw_only=True)

    @property
    def rows(self) -> int | None:
        """Rows per training instance (must equal the file's instance count), None if not per instance."""
        return None

    def arrays(self) -> dict[str, np.ndarray]:
        """The datasets to store, by path relative to the payload's group."""
        return {f.name: v for f in dataclasses.fields(self) if isinstance(v := getattr(self, f.name), np.ndarray)}

    def fields(self) -> dict:
        """Non-array fields (JSON-able) that `from_stored` needs back."""
        return {}

    @classmethod
    def from_stored(cls, arrays: dict[str, np.ndarray], fields: dict, meta: dict) -> LabelPayload:
        return cls(**arrays, **fields, meta=meta)

    def check(self, num_instances: int, num_classes: int) -> None:
        """Refuse (InvalidInput) a payload that does not fit a set of that size and label space."""
        for name, array in self.arrays().items():
            check_finite(array, f"soft/{self.scheme}/{name}")
        if self.rows is not None and self.rows != num_instances:
            raise InvalidInput(
                f"soft/{self.scheme} has {self.rows} rows but the set has {num_instances} training instances",
                "one row per instance: the stored images first, then the composed ones",
            )

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays().values())


def register_payload(cls: type[LabelPayload]) -> type[LabelPayload]:
    """Class decorator: make `cls` the reader of its `scheme`."""
    return PAYLOADS.register(cls.scheme)(cls)


@register_payload
@dataclass
class LogitsLabels(LabelPayload):
    """Full soft labels: one logit vector per instance (N_inst × K, float16)."""

    scheme: ClassVar[str] = "logits"
    values: np.ndarray

    def __post_init__(self):
        self.values = as_array(self.values, np.float16, 2, "logits values")

    @property
    def rows(self) -> int:
        return len(self.values)

    def check(self, num_instances: int, num_classes: int) -> None:
        super().check(num_instances, num_classes)
        if self.values.shape[1] != num_classes:
            raise InvalidInput(f"soft/logits has {self.values.shape[1]} columns for {num_classes} classes")


@register_payload
@dataclass
class TopKLabels(LabelPayload):
    """Sparse soft labels: the k largest class scores per instance (indices int64 + values float16)."""

    scheme: ClassVar[str] = "topk"
    indices: np.ndarray
    values: np.ndarray

    def __post_init__(self):
        self.indices = as_array(self.indices, np.int64, 2, "topk indices")
        self.values = as_array(self.values, np.float16, 2, "topk values")
        if self.indices.shape != self.values.shape:
            raise InvalidInput(f"topk indices {self.indices.shape} and values {self.values.shape} differ in shape")

    @property
    def rows(self) -> int:
        return len(self.indices)

    def check(self, num_instances: int, num_classes: int) -> None:
        super().check(num_instances, num_classes)
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= num_classes):
            raise InvalidInput(f"soft/topk indices span [{self.indices.min()}, {self.indices.max()}], not in [0, {num_classes})")


@register_payload
@dataclass
class DBRLabels(LabelPayload):
    """NRR-DD's distance-based representative labels: two teacher distances per replayed view.

    `d_org[e, v]` / `d_aug[e, v]` are the teacher's CE distances to the two labels mixed in view v of
    epoch e (E × V, float16). `protocol` names the replay recipe and `replay` holds the arrays it
    needs (seeds or recorded augmentation parameters) exactly as the synthesizer gave them.
    """

    scheme: ClassVar[str] = "dbr"
    d_org: np.ndarray
    d_aug: np.ndarray
    protocol: str
    replay: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        self.d_org = as_array(self.d_org, np.float16, 2, "dbr d_org")
        self.d_aug = as_array(self.d_aug, np.float16, 2, "dbr d_aug")
        if self.d_org.shape != self.d_aug.shape:
            raise InvalidInput(f"dbr d_org {self.d_org.shape} and d_aug {self.d_aug.shape} differ in shape")
        self.replay = {k: as_array(v, None, None, f"dbr replay {k!r}") for k, v in self.replay.items()}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"d_org": self.d_org, "d_aug": self.d_aug, **{f"replay/{k}": v for k, v in self.replay.items()}}

    def fields(self) -> dict:
        return {"protocol": self.protocol}

    @classmethod
    def from_stored(cls, arrays, fields, meta) -> DBRLabels:
        replay = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("replay/")}
        return cls(arrays["d_org"], arrays["d_aug"], str(fields["protocol"]), replay, meta=meta)


@dataclass
class GenericPayload(LabelPayload):
    """A payload of a scheme this ddkit does not know: its arrays and attributes, kept verbatim."""

    scheme: str = field()  # an instance field here; `field()` keeps the base's "" from becoming a default
    stored_arrays: dict[str, np.ndarray]
    stored_fields: dict = field(default_factory=dict)

    def arrays(self) -> dict[str, np.ndarray]:
        return dict(self.stored_arrays)

    def fields(self) -> dict:
        return dict(self.stored_fields)


# -- storage --------------------------------------------------------------------------------------


def payload_attrs(payload: LabelPayload) -> dict[str, str]:
    """The group attributes of a stored payload (its arrays are stored as datasets)."""
    return {
        "scheme": payload.scheme,
        "fields": dump_json(payload.fields(), f"soft/{payload.scheme} fields"),
        "meta": dump_json(payload.meta, f"soft/{payload.scheme} meta"),
    }


def read_payload(group: h5py.Group) -> LabelPayload:
    """The typed payload stored in `group` (a GenericPayload for an unknown scheme).

    Raises KeyError/ValueError/InvalidInput for a malformed group; the reader reports those as a
    FileFormatError.
    """
    scheme = attr_text(group.attrs["scheme"])
    fields = load_json(group.attrs.get("fields", "{}"), f"soft/{scheme} fields")
    meta = load_json(group.attrs.get("meta", "{}"), f"soft/{scheme} meta")
    arrays = read_group_arrays(group)
    if scheme in PAYLOADS:
        return PAYLOADS.get(scheme).from_stored(arrays, fields, meta)
    return GenericPayload(scheme, arrays, fields, meta=meta)
