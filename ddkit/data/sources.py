"""Registers every dataset source in `DATASETS`; the loading code lives in one module per source.

Tags: `offline=True` marks sources that never need files or a download (embedded or generated),
`arg` names what goes after the colon (`imagefolder:PATH`, `procedural:3`).
"""

from __future__ import annotations

from ddkit.data import (
    DATASETS,
    fashion_mnist,
    imagefolder,
    load_dataset,
    mini,
    procedural,
    recorded_dataset as _recorded,
    torchvision_sources,
)
from ddkit.data.base import ImageDataset
from ddkit.data.locations import no_argument
from ddkit.data.poolfile import load_pool, pool_task
from ddkit.errors import InvalidInput


@DATASETS.register(
    "fashion-mnist", offline=False,
    summary="Fashion-MNIST, 60k/10k 28×28 grayscale, 10 classes (IDX files from $DDKIT_DATA, ./data, "
            "~/.cache/ddkit or apt's dataset-fashion-mnist; else downloaded)",
)
def _fashion_mnist(split: str, arg: str | None) -> ImageDataset:
    no_argument("fashion-mnist", arg)
    return fashion_mnist.load(split)


@DATASETS.register(
    "fashion-mnist-mini", offline=True,
    summary="500/200 per class of Fashion-MNIST, embedded in ddkit (the default dataset; ids are full-set rows)",
)
def _fashion_mnist_mini(split: str, arg: str | None) -> ImageDataset:
    no_argument("fashion-mnist-mini", arg)
    return mini.load(split)


def _torchvision_factory(name: str):
    def factory(split: str, arg: str | None) -> ImageDataset:
        no_argument(name, arg)
        return torchvision_sources.load(name, split)

    factory.__name__ = f"_{name}"
    return factory


for _name, _summary in (
    ("mnist", "MNIST digits, 60k/10k 28×28 grayscale (torchvision; downloaded when absent)"),
    ("cifar10", "CIFAR-10, 50k/10k 32×32 RGB, 10 classes (torchvision; downloaded when absent)"),
    ("cifar100", "CIFAR-100, 50k/10k 32×32 RGB, 100 classes (torchvision; downloaded when absent)"),
):
    DATASETS.register(_name, summary=_summary, offline=False)(_torchvision_factory(_name))


@DATASETS.register(
    "imagefolder", offline=False, arg="PATH",
    summary="your images: imagefolder:PATH with PATH/{train,test}/<class>/ and PATH/classes.json",
)
def _imagefolder(split: str, arg: str | None) -> ImageDataset:
    return imagefolder.load(arg, split)


@DATASETS.register(
    "procedural", offline=True, arg="CHANNELS",
    summary="tiny generated gratings, 10 classes, 1×16×16 (procedural:3 for RGB), 40/20 per class; for tests",
)
def _procedural(split: str, arg: str | None) -> ImageDataset:
    return procedural.load(arg, split)


@DATASETS.register(
    "pool", offline=False, arg="PATH",
    summary="an unlabeled image pool built by `ddkit pool build` (pool:PATH; test split = the task's test set)",
)
def _pool(split: str, arg: str | None) -> ImageDataset:
    if not arg:
        raise InvalidInput("the pool dataset needs a path: pool:PATH", "build one with `ddkit pool build`")
    if split == "test":
        return load_dataset(_recorded(pool_task(arg).name, None, f"pool {arg}"), "test")
    return load_pool(arg)
