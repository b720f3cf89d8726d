"""What describes a dataset apart from its pixels: its normalization and `DatasetInfo` (name, class
names, image shape), plus the default dataset's name.

Kept free of torch (tensors are imported only when a normalization is applied), so that file
headers can be read and `ddkit info` can run without importing torch; `ddkit.data.base` re-exports
these names.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

from ddkit.errors import InvalidInput
from ddkit.records import check_positive, record_fields

DEFAULT_DATASET = "fashion-mnist-mini"  # the embedded set: every verb runs without a download
MAX_IMAGE_SIDE = 1 << 14  # a header claiming larger images is not describing real data
MAX_CHANNELS = 64


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean/std applied to [0, 1] pixels before a model sees them."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self):
        # A NaN, infinite or zero std would turn every pixel into NaN/inf and train a ~chance model.
        if len(self.mean) != len(self.std) or not self.mean:
            raise InvalidInput(f"normalization has {len(self.mean)} means and {len(self.std)} stds",
                               "give one mean and one std per channel")
        if not all(math.isfinite(m) for m in self.mean) or not all(math.isfinite(s) and s > 0 for s in self.std):
            raise InvalidInput(f"normalization mean {list(self.mean)} / std {list(self.std)} is not finite "
                               "with std > 0", "use the per-channel mean and (positive) std of the training pixels")

    def _shape(self, x):
        import torch

        view = (-1, 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(view)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(view)
        return mean, std

    def apply(self, x):
        mean, std = self._shape(x)
        return (x - mean) / std

    def invert(self, x):
        mean, std = self._shape(x)
        return x * std + mean

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict, where: str = "normalization") -> "Normalization":
        return cls(**record_fields(cls, d, where))


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and a stored file need to know about a dataset, independent of its pixels."""

    name: str
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    normalization: Normalization

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["class_names"] = list(self.class_names)
        d["image_shape"] = list(self.image_shape)
        d["num_classes"] = self.num_classes
        d["normalization"] = self.normalization.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "dataset") -> "DatasetInfo":
        """The record stored in a file header, every field typed and checked (InvalidInput names it)."""
        fields = record_fields(cls, d, where, allow_extra=True)
        check_image_shape(fields["image_shape"], f"{where}.image_shape")
        if not fields["class_names"]:
            raise InvalidInput(f"{where}.class_names is empty", "a dataset has at least one class")
        if "num_classes" in d and d["num_classes"] != len(fields["class_names"]):
            raise InvalidInput(f"{where}.num_classes is {d['num_classes']!r} but {where}.class_names has "
                               f"{len(fields['class_names'])} names")
        if len(fields["normalization"].mean) != fields["image_shape"][0]:
            raise InvalidInput(f"{where}.normalization has {len(fields['normalization'].mean)} channels, "
                               f"{where}.image_shape {fields['image_shape'][0]}")
        return cls(**fields)


def check_image_shape(shape: Sequence[int], where: str) -> tuple[int, int, int]:
    """Refuse a C×H×W shape with a zero, negative or absurd side (InvalidInput naming `where`)."""
    if len(shape) != 3:
        raise InvalidInput(f"{where} must be C×H×W (3 numbers), got {list(shape)}")
    check_positive(shape[0], f"{where}[0] (channels)", MAX_CHANNELS)
    check_positive(shape[1], f"{where}[1] (height)", MAX_IMAGE_SIDE)
    check_positive(shape[2], f"{where}[2] (width)", MAX_IMAGE_SIDE)
    return tuple(shape)
