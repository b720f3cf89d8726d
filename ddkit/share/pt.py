"""The tensor formats: `pt` (ddkit's export, DD-Ranking's inputs) and `mtt` (MTT / DATM releases).

Both are `.pt` tensors in the normalization the set was trained with: `images` N×C×H×W, `labels`
(hard int, or N×K soft labels for DATM), and the learned student step size where there is one.
ddkit exports `images.pt`, `labels.pt`, `soft_labels.pt` (the stored logits) and `lr.pt`; MTT and
DATM save `images_best.pt`, `labels_best.pt` and `lr_best.pt`. Every file is read by
`safe_pt.load_plain` (weights only, plain tensors only).

MTT and DATM usually whiten their images with ZCA (`--zca`, kornia's `ZCAWhitening(eps=0.1)` fitted
on the normalized train split). Whitened pixels are not images: an `mtt` import undoes the
whitening with the parameters given (`--zca FILE` with `mean` and `transform` or `transform_inv`,
or `--zca fit` to refit MTT's whitening on the dataset), or is told there was none (`--no-zca`);
with neither it is refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ddkit.data import load_dataset
from ddkit.data.base import Normalization
from ddkit.errors import FileFormatError, InvalidInput
from ddkit.paths import kind, regular_file
from ddkit.share.exchange import (
    Exportable,
    Imported,
    as_labels,
    as_learned_lr,
    as_logits,
    read_sidecar,
    unnormalize,
)
from ddkit.share.files import load_npz
from ddkit.share.formats import EXPORTERS, IMPORTERS, ImportOptions, card_text
from ddkit.share.safe_pt import load_plain

ZCA_EPS = 0.1  # MTT's ZCAWhitening(eps=0.1)


@EXPORTERS.register(
    "pt", summary="images.pt (normalized), labels.pt, soft_labels.pt, lr.pt: what DD-Ranking / DC / MTT code reads"
)
def export_pt(src: Exportable, folder: Path) -> list[str]:
    torch.save(src.normalization.apply(src.pixels).contiguous(), folder / "images.pt")
    torch.save(torch.from_numpy(src.labels), folder / "labels.pt")
    if src.logits is not None:
        torch.save(torch.from_numpy(src.logits.astype(np.float32)), folder / "soft_labels.pt")
    if src.learned_lr is not None:
        torch.save(torch.tensor(src.learned_lr, dtype=torch.float32), folder / "lr.pt")
    src.write_sidecar(folder, "pt", exact_pixels=True)
    how = (
        "```python\nimages = torch.load('images.pt', weights_only=True)   # normalized with the mean/std above\n"
        "labels = torch.load('labels.pt', weights_only=True)\n"
        "# soft_labels.pt: the stored logits; lr.pt: the learned step size\n```"
    )
    (folder / "README.md").write_text(card_text(src, "pt", how))
    notes = []
    if src.dataset.composite is not None:
        notes.append("images.pt holds the composed instances; bases + compensators are in extras/composite")
    return notes


def _first(folder: Path, names: tuple[str, ...], follow_symlinks: bool = False) -> Path | None:
    """The first of `names` present in `folder`: a regular file, never a link (unless followed on purpose),
    FIFO or device."""
    for name in names:
        if kind(folder / name) != "missing":
            return regular_file(folder / name, f"{name} of the set", follow_symlinks=follow_symlinks)
    return None


def _tensor(path: Path, what: str) -> torch.Tensor:
    obj = load_plain(path)
    if not isinstance(obj, torch.Tensor):
        raise FileFormatError(f"{path} holds a {type(obj).__name__}, not the {what} tensor", "give the tensor file")
    return obj.detach()


def zca_inverse(params: str, options: ImportOptions, norm: Normalization) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(mean, inverse transform) of the whitening: from a parameters file, or refitted as MTT fits it."""
    if params == "fit":
        import kornia

        train = load_dataset(options.dataset, "train")
        x = norm.apply(train.pixels()).reshape(len(train), -1)
        transform, mean, inverse = kornia.enhance.zca_mean(x, dim=0, eps=ZCA_EPS, return_inverse=True)
        return mean.reshape(-1), inverse, f"refit on {options.dataset} (kornia ZCA, eps {ZCA_EPS}, unbiased)"
    path = Path(params)
    if path.suffix == ".npz":
        arrays = load_npz(path, ("mean", "mean_vector", "transform", "transform_matrix", "transform_inv"))
    else:
        arrays = load_plain(path)
        if not isinstance(arrays, dict):
            raise FileFormatError(
                f"{path} holds a {type(arrays).__name__}, not a dict of ZCA parameters",
                "save {'mean': ..., 'transform': ...} (kornia's mean_vector, transform_matrix)",
            )
    mean = _zca_array(arrays, ("mean", "mean_vector"), path)
    inverse = _zca_array(arrays, ("transform_inv",), path)
    transform = _zca_array(arrays, ("transform", "transform_matrix"), path) if inverse is None else None
    if mean is None or (inverse is None and transform is None):
        raise FileFormatError(
            f"{path} lacks the ZCA mean or transform (keys: {sorted(map(str, arrays))[:10]})",
            "give 'mean' and 'transform' (or 'transform_inv'), as kornia's ZCAWhitening holds them",
        )
    matrix = inverse if inverse is not None else transform
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise FileFormatError(f"{path}: the ZCA transform has shape {tuple(matrix.shape)}, not a square matrix",
                              "give the transform kornia's ZCAWhitening fitted (D×D for images of D values)")
    if inverse is None:
        inverse, info = torch.linalg.inv_ex(transform)
        if int(info) != 0 or not bool(torch.isfinite(inverse).all()):
            raise InvalidInput(f"{path}: the ZCA transform is singular, so the whitening cannot be undone",
                               "give the transform the set was whitened with (or its inverse as 'transform_inv')")
    return mean.reshape(-1), inverse, f"parameters from {path.name}"


def _zca_array(arrays: dict, names: tuple[str, ...], path: Path) -> torch.Tensor | None:
    """The first of `names` in a ZCA parameters file as a finite float64 tensor (None when absent)."""
    name = next((n for n in names if n in arrays), None)
    if name is None:
        return None
    value = arrays[name]
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value) if value.dtype.kind in "iuf" else value
    if not isinstance(value, torch.Tensor) or value.is_complex() or value.dtype == torch.bool:
        kind = value.dtype if isinstance(value, (torch.Tensor, np.ndarray)) else type(value).__name__
        raise FileFormatError(f"{path}: ZCA '{name}' is {kind}, not an array of numbers",
                              "store the mean and transform as float tensors (kornia's mean_vector, transform_matrix)")
    value = value.detach().double()
    if not bool(torch.isfinite(value).all()):
        raise FileFormatError(f"{path}: ZCA '{name}' holds NaN or infinite values", "give finite ZCA parameters")
    return value


def unwhiten(images: torch.Tensor, mean: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """Invert x_white = (x − mean) · T row-wise: x = x_white · T⁻¹ + mean."""
    flat = images.double().reshape(len(images), -1)
    if inverse.shape != (flat.shape[1], flat.shape[1]) or mean.numel() != flat.shape[1]:
        raise InvalidInput(
            f"ZCA parameters of size {tuple(inverse.shape)} do not fit images of {flat.shape[1]} values",
            "use the parameters fitted on this dataset",
        )
    return (flat @ inverse.double() + mean.double()).reshape(images.shape).float()


def read_tensors(
    source: Path, options: ImportOptions, names: dict[str, tuple[str, ...]], method: str, whitening_required: bool
) -> Imported:
    """Images, labels and learned lr from the files `names` lists (first present wins)."""
    folder = source if source.is_dir() else source.parent
    follow = options.follow_symlinks
    images_path = source if source.is_file() else _first(folder, names["images"], follow)
    if images_path is None:
        raise FileFormatError(
            f"{source} has none of {', '.join(names['images'])}", f"give the folder of a {method} set"
        )
    meta = read_sidecar(folder, follow)
    images = _tensor(images_path, "images")
    if images.ndim != 4:
        raise FileFormatError(
            f"{images_path} has shape {tuple(images.shape)}, expected N×C×H×W", "give the images tensor"
        )
    details: dict = {}
    if meta is None and options.zca is None and not options.no_zca and whitening_required:
        raise InvalidInput(
            f"{source}: {method} sets are usually ZCA-whitened, and whitened values are not pixels",
            "pass --zca FILE (the whitening's mean and transform), --zca fit (refit MTT's kornia ZCA, eps 0.1, on "
            "--dataset), or --no-zca if the set was distilled without --zca",
        )
    norm = (
        meta.normalization
        if meta
        else options.normalization or load_dataset(options.dataset, "train").info.normalization
    )
    if options.zca is not None:
        mean, inverse, how = zca_inverse(options.zca, options, norm)
        images = unwhiten(images, mean, inverse)
        details["undone_zca"] = how
    images = unnormalize(images, norm, details)
    labels_path = _first(folder, names["labels"], follow)
    if labels_path is None:
        raise FileFormatError(f"{folder} has none of {', '.join(names['labels'])}", "put the labels beside the images")
    raw = _tensor(labels_path, "labels")
    logits = None
    if raw.is_floating_point() and raw.ndim == 2 and raw.shape[1] > 1:  # DATM's learned soft labels
        logits = as_logits(raw, len(images), str(labels_path))
        labels = torch.from_numpy(logits).argmax(1)
    else:
        labels = as_labels(raw, str(labels_path))
    soft_path = _first(folder, names.get("soft", ()), follow)
    if soft_path is not None:
        logits = as_logits(_tensor(soft_path, "soft labels"), len(images), str(soft_path))
    if len(labels) != len(images):
        raise FileFormatError(f"{folder}: {len(images)} images but {len(labels)} labels", "give matching tensors")
    lr_path = _first(folder, names["lr"], follow)
    lr = as_learned_lr(_tensor(lr_path, "lr"), str(lr_path)) if lr_path is not None else None
    return Imported(images, labels, method=method, logits=logits, learned_lr=lr, details=details)


@IMPORTERS.register("pt", summary="images.pt + labels.pt (+ soft_labels.pt, lr.pt): ddkit exports, DD-Ranking inputs")
def import_pt(source: Path, options: ImportOptions) -> Imported:
    names = {"images": ("images.pt",), "labels": ("labels.pt",), "soft": ("soft_labels.pt",), "lr": ("lr.pt",)}
    return read_tensors(source, options, names, "pt", whitening_required=False)


@IMPORTERS.register("mtt", summary="MTT / DATM: images_best.pt, labels_best.pt, lr_best.pt (ZCA undone with --zca)")
def import_mtt(source: Path, options: ImportOptions) -> Imported:
    names = {"images": ("images_best.pt",), "labels": ("labels_best.pt",), "lr": ("lr_best.pt",)}
    return read_tensors(source, options, names, "mtt", whitening_required=True)
