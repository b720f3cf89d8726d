"""The typed header records of ddkit's files and how they map onto HDF5 root attributes.

DESIGN §4 fixes the root attributes of a `.ddk.h5` file. Each one is a field of `DistilledHeader`;
plain strings and integers are stored as HDF5 attributes of that type, everything structured as a
JSON string. The same codec serves the selection file, so both kinds read and write their headers
one way.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ddkit.datainfo import DatasetInfo, Normalization
from ddkit.errors import InvalidInput
from ddkit.fileio import attr_text  # noqa: F401  (part of this module's reading helpers)
from ddkit.records import check_value, record_fields

if TYPE_CHECKING:  # the schema reads headers without torch; only writers pass an ImageDataset
    from ddkit.data.base import ImageDataset

DISTILLED_FORMAT = "ddkit.distilled"
SELECTION_FORMAT = "ddkit.selection"
SCHEMA = 2  # the newest schema this ddkit reads, for both file kinds
# A file is written at the lowest schema that holds what it stores, so an older ddkit still reads
# every file it could read correctly and refuses ("upgrade ddkit") the others:
# 1 = the layout of DESIGN §4; 2 = adds `/formation` (stored images decode into several instances).
BASE_SCHEMA = 1

# A structured attribute larger than this is refused on write and on read: it is certainly not a
# header, and parsing an arbitrary-size JSON string from an untrusted file is a memory hazard.
MAX_JSON_ATTR_BYTES = 1 << 20


# -- records nested in the header -----------------------------------------------------------------


@dataclass(frozen=True)
class DatasetRecord:
    """The source dataset of a distilled file: its describing record, split and id-list hash."""

    info: DatasetInfo
    split: str
    ids_sha256: str

    @classmethod
    def from_dataset(cls, dataset: ImageDataset) -> DatasetRecord:
        return cls(dataset.info, dataset.split, dataset.ids_sha256())

    def to_dict(self) -> dict:
        return {**self.info.to_dict(), "split": self.split, "ids_sha256": self.ids_sha256}

    @classmethod
    def from_dict(cls, d: dict, where: str = "dataset") -> DatasetRecord:
        info = DatasetInfo.from_dict(d, where)
        split, ids_sha256 = (check_value(d.get(k), str, f"{where}.{k}") for k in ("split", "ids_sha256"))
        return cls(info, split, ids_sha256)


@dataclass(frozen=True)
class Budget:
    """What a distilled file costs, in stored images and in bytes.

    Byte counts are the uncompressed sizes of the stored arrays at their stored dtype (compression
    level does not change the budget). `bytes_labels` covers `/labels` and every `/soft` payload,
    `bytes_aux` everything else (e.g. `/composite`); `bytes_by_part` breaks both down.
    """

    ipc_stored: int
    instances: int
    instances_per_class: float
    bytes_images: int
    bytes_labels: int
    bytes_aux: int
    bytes_source: int
    ratio: float
    bytes_by_part: dict[str, int] = field(default_factory=dict)

    @property
    def bytes_total(self) -> int:
        return self.bytes_images + self.bytes_labels + self.bytes_aux

    @classmethod
    def compute(
        cls, ipc_stored: int, instances: int, num_classes: int, parts: dict[str, int], bytes_source: int
    ) -> Budget:
        """The budget of a file whose datasets have the byte counts `parts` (see `budget_parts`)."""
        images = parts.get("images", 0)
        labels = sum(n for p, n in parts.items() if p == "labels" or p.startswith("soft/"))
        aux = sum(parts.values()) - images - labels
        return cls(
            ipc_stored=int(ipc_stored),
            instances=int(instances),
            instances_per_class=instances / num_classes,
            bytes_images=images,
            bytes_labels=labels,
            bytes_aux=aux,
            bytes_source=int(bytes_source),
            ratio=(images + labels + aux) / bytes_source,
            bytes_by_part=dict(sorted(parts.items())),
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "budget") -> Budget:
        """The stored budget, every field typed (a string where a count belongs is refused, naming it)."""
        values = record_fields(cls, d, where, allow_extra=True)
        for name in ("ipc_stored", "instances", "bytes_images", "bytes_labels", "bytes_aux", "bytes_source"):
            if values[name] < 0:
                raise InvalidInput(f"{where}.{name} must not be negative, got {values[name]}")
        return cls(**values)


def budget_parts(datasets: Iterable[tuple[str, int]]) -> dict[str, int]:
    """Sum dataset byte counts per budget part: `images`, `labels`, `soft/<scheme>`, `composite`, ...

    `datasets` yields (path, nbytes) with paths relative to the root; `/results` is not part of
    the budget. The writer feeds it the arrays it is about to store, `validate_file` the datasets
    it finds, so the recorded budget can be checked against the file.
    """
    parts: dict[str, int] = {}
    for path, nbytes in datasets:
        head = path.strip("/").split("/")
        if head[0] == "results":
            continue
        key = "/".join(head[:2]) if head[0] == "soft" and len(head) > 1 else head[0]
        parts[key] = parts.get(key, 0) + int(nbytes)
    return parts


# -- the distilled-file header --------------------------------------------------------------------


@dataclass(frozen=True)
class DistilledHeader:
    """The root attributes of a `.ddk.h5` file (DESIGN §4), one field per attribute."""

    FORMAT: ClassVar[str] = DISTILLED_FORMAT
    SCHEMA: ClassVar[int] = SCHEMA

    ddkit_version: str
    created: str
    method: str
    method_version: str
    config: dict
    seed: int
    dataset: DatasetRecord
    normalization: Normalization
    teachers: list[dict]
    budget: Budget
    license_note: str

    @property
    def info(self) -> DatasetInfo:
        """The dataset record with the normalization this file is trained with."""
        return dataclasses.replace(self.dataset.info, normalization=self.normalization)

    @property
    def num_classes(self) -> int:
        return self.dataset.info.num_classes


# -- attribute codec ------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dump_json(value: Any, what: str) -> str:
    """Strict JSON (no NaN) of `value`, refusing what cannot be stored as a header attribute."""
    try:
        text = json.dumps(value, default=_jsonable, allow_nan=False, sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(
            f"{what} cannot be stored as JSON ({exc})",
            "use only dicts, lists, strings, finite numbers, booleans and None (None for a missing number)",
        ) from None
    if len(text.encode()) > MAX_JSON_ATTR_BYTES:
        raise InvalidInput(
            f"{what} is {len(text.encode())} bytes as JSON, over the {MAX_JSON_ATTR_BYTES} byte limit",
            "store large arrays as datasets, not in a header attribute",
        )
    return text


def load_json(text: Any, what: str) -> Any:
    """Parse a JSON attribute; raises ValueError (turned into FileFormatError by the reader)."""
    if isinstance(text, bytes):
        text = text.decode()
    if not isinstance(text, str):
        raise ValueError(f"{what} is not a string attribute")
    if len(text) > MAX_JSON_ATTR_BYTES:
        raise ValueError(f"{what} is over the {MAX_JSON_ATTR_BYTES} byte limit for a JSON attribute")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} is not valid JSON ({exc})") from None
    except RecursionError:
        raise ValueError(f"{what} nests JSON values too deeply") from None


def encode_attrs(record: Any, names: Iterable[str] | None = None) -> dict[str, Any]:
    """The attributes for `record`'s fields (all, or `names`): str/int as is, the rest as JSON."""
    out: dict[str, Any] = {}
    for name in names if names is not None else [f.name for f in fields(record)]:
        value = getattr(record, name)
        if isinstance(value, str) or (isinstance(value, (int, np.integer)) and not isinstance(value, bool)):
            out[name] = value if isinstance(value, str) else int(value)
        else:
            out[name] = dump_json(value, f"header field {name!r}")
    return out


def decode_attrs(cls: type, attrs: typing.Mapping, names: Iterable[str] | None = None) -> dict[str, Any]:
    """Field values of `cls` (all fields, or `names`) from stored attributes, typed by annotation.

    Raises KeyError for a missing attribute and ValueError/TypeError for a malformed one; the
    readers turn both into a FileFormatError naming the file.
    """
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for name in names if names is not None else [f.name for f in fields(cls)]:
        if name not in attrs:
            raise KeyError(f"root attribute {name!r} is missing")
        raw, hint = attrs[name], hints[name]
        if hint is str:
            if not isinstance(raw, (str, bytes)):
                raise ValueError(f"root attribute {name!r} is not a string")
            out[name] = attr_text(raw)
        elif hint is int:
            if not isinstance(raw, (int, np.integer)):
                raise ValueError(f"root attribute {name!r} is not an integer")
            out[name] = int(raw)
        else:
            value = load_json(raw, f"root attribute {name!r}")
            value = check_value(value, hint, name)
            out[name] = value
    return out
