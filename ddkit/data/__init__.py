"""Datasets by name, through one registry.

`load_dataset("fashion-mnist", split="train")` returns an `ImageDataset`. A name may carry an
argument after a colon (`imagefolder:PATH`). Every factory has the signature
`factory(split: str, arg: str | None) -> ImageDataset`, where split is "train" or "test".
"""

from __future__ import annotations

from ddkit.data.base import DatasetInfo, ImageDataset, Normalization, check_pixels, train_val_split
from ddkit.datainfo import DEFAULT_DATASET
from ddkit.errors import InvalidInput
from ddkit.registry import Registry

DATASETS = Registry("dataset")

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


def names_a_path(name: str) -> bool:
    """Whether `name` is a source whose argument is a filesystem path (`imagefolder:PATH`, `pool:PATH`)."""
    base = name.partition(":")[0]
    return base in DATASETS and DATASETS.entry(base).tags.get("arg") == "PATH"


def recorded_dataset(recorded: str, given: str | None, where: str) -> str:
    """The dataset to load for a name recorded inside a file (`where` names the file).

    A file never names a path for ddkit to read: a registry name (`fashion-mnist`, `procedural:3`)
    is used as it is, but a source whose argument is a path (`imagefolder:PATH`, `pool:PATH`) is
    resolved only from `given`, what the user passed (e.g. `--dataset imagefolder:DIR`). `given`
    must be of the same kind as the recorded source, and equal to it for registry names; the
    caller then checks the loaded data against the file (class names, shape, fingerprint).
    """
    if not isinstance(recorded, str) or not recorded:
        raise InvalidInput(f"{where} records no dataset name")
    kind = recorded.partition(":")[0]
    if given is None:
        if names_a_path(recorded):
            raise InvalidInput(
                f"{where} was made from {recorded!r}, a path named inside the file; ddkit does not open paths "
                "that a file names",
                f"pass that data yourself, e.g. --dataset {kind}:PATH (a {kind} you trust)",
            )
        return recorded
    if given.partition(":")[0] != kind or (not names_a_path(recorded) and given != recorded):
        raise InvalidInput(f"{where} was made from {recorded!r}, but {given!r} was given",
                           f"pass the dataset the file was made from (a {kind} source)")
    return given


def dataset_info(name: str) -> DatasetInfo:
    """The dataset's describing record (class names, shape, normalization)."""
    return load_dataset(name, "train").info


# Register the sources (import for side effects).
from ddkit.data import sources as _sources  # noqa: E402,F401

__all__ = [
    "DATASETS", "DEFAULT_DATASET", "DatasetInfo", "ImageDataset", "Normalization",
    "check_pixels", "dataset_info", "load_dataset", "names_a_path", "on_test_split_load", "recorded_dataset",
    "train_val_split",
]
