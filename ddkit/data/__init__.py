"""Datasets by name, through one registry.

`load_dataset("fashion-mnist", split="train")` returns an `ImageDataset`. A name may carry an
argument after a colon (`imagefolder:PATH`). Every factory has the signature
`factory(split: str, arg: str | None) -> ImageDataset`, where split is "train" or "test".
"""

from __future__ import annotations

from ddkit.data.base import DatasetInfo, ImageDataset, Normalization, check_pixels, train_val_split
from ddkit.errors import InvalidInput
from ddkit.registry import Registry

DATASETS = Registry("dataset")

DEFAULT_DATASET = "fashion-mnist-mini"
SPLITS = ("train", "test")

# Observers of test-split loads: the evaluator's tests use this to prove that nothing reads the
# test split before the final evaluation.
_test_split_listeners: list = []


def on_test_split_load(callback) -> None:
    _test_split_listeners.append(callback)


def load_dataset(name: str, split: str = "train") -> ImageDataset:
    """Load a registered dataset's split ("train" or "test")."""
    if split not in SPLITS:
        raise InvalidInput(f"unknown split {split!r}", f"use one of {', '.join(SPLITS)}")
    base, _, arg = name.partition(":")
    factory = DATASETS.get(base)
    if split == "test":
        for callback in list(_test_split_listeners):
            callback(name)
    return factory(split, arg or None)


def dataset_info(name: str) -> DatasetInfo:
    """The dataset's describing record (class names, shape, normalization)."""
    return load_dataset(name, "train").info


# Register the sources (import for side effects).
from ddkit.data import sources as _sources  # noqa: E402,F401

__all__ = [
    "DATASETS", "DEFAULT_DATASET", "DatasetInfo", "ImageDataset", "Normalization",
    "check_pixels", "dataset_info", "load_dataset", "on_test_split_load", "train_val_split",
]
