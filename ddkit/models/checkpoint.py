"""Foreign PyTorch checkpoints read as state dicts, never as code, and fitted to a registered model.

A checkpoint is read with `torch.load(weights_only=True)`: tensors and plain containers only (plus
`argparse.Namespace`, the `args` that torchvision's and timm's training scripts store beside the
weights; it holds values, not code). What people actually download comes in a few shapes, and
each is undone and recorded:

- a plain state dict (torchvision's released weights), or one under a training script's entry:
  `state_dict` / `model` / `module`, and EMA weights under `model_ema` / `state_dict_ema` / `ema`
  (taken only when named, or when they are the only weights in the file);
- every key behind one wrapper prefix: `module.` (DataParallel / DDP, torch's AveragedModel EMA,
  whose `n_averaged` counter is dropped) or `_orig_mod.` (torch.compile);
- a classifier over more (or differently ordered) classes than the dataset: refused, unless the
  checkpoint's class names are given, and then the rows of the dataset's classes are kept, in the
  dataset's order (an ImageNet-1K teacher for a 200-class ImageNet subset).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ddkit.errors import FileFormatError, IncompatibleError, InvalidInput
from ddkit.fileio import sha256_file

LOADER = "torch.load(weights_only=True)"
ENTRIES = ("state_dict", "model", "module")  # where training scripts put the weights, in order of preference
EMA_ENTRIES = ("model_ema", "state_dict_ema", "ema")
PREFIXES = ("module.", "_orig_mod.")
_DROPPED = ("n_averaged",)  # torch.optim.swa_utils.AveragedModel's counter, not a weight


@dataclass(frozen=True)
class CheckpointSource:
    """Where an imported teacher's weights came from and what was undone to load them (the teacher
    header's `train` record of an import)."""

    imported_from: str  # the checkpoint's file name
    source: str  # what the user says it is (a URL it was downloaded from), else the file name
    checkpoint_sha256: str  # of the file's bytes: check it against the publisher's hash
    checkpoint_bytes: int
    entry: str = ""  # the key the weights were under ("" = the top level)
    prefix_removed: str = ""
    classes: str = "as in the checkpoint"
    loader: str = LOADER

    def to_dict(self) -> dict:
        return asdict(self)


def read_state_dict(path: str | os.PathLike, entry: str | None = None, source: str | None = None
                    ) -> tuple[dict[str, torch.Tensor], CheckpointSource]:
    """The weights in checkpoint `path` as a flat state dict, and the record of how they were found.

    `entry`: the key holding the weights in a training checkpoint (default: the first of `ENTRIES`
    present, else the EMA weights when they are the only ones)."""
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"checkpoint {path} does not exist", "check the path")
    try:
        allow = getattr(torch.serialization, "safe_globals", None)  # absent before torch 2.5: plain weights_only
        with allow([argparse.Namespace]) if allow else contextlib.nullcontext():
            blob = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for anything beyond tensors and containers, or a corrupt file
        raise FileFormatError(
            f"{path} cannot be loaded with {LOADER}: {str(exc).splitlines()[0][:300]}",
            "ddkit imports plain state dicts only (nothing in a checkpoint is executed); re-save the weights with "
            "torch.save(model.state_dict(), path) where you trust the file",
        ) from None
    state, where = _find_weights(path, blob, entry)
    state, prefix = _strip_prefix(state)
    record = CheckpointSource(path.name, source or path.name, sha256_file(path), path.stat().st_size, where, prefix)
    return state, record


def _is_state_dict(value) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                           for k, v in value.items())


def _find_weights(path: Path, blob, entry: str | None) -> tuple[dict, str]:
    found, where = blob, ""
    if entry:
        if not isinstance(blob, dict) or entry not in blob:
            keys = sorted(map(str, blob)) if isinstance(blob, dict) else []
            raise FileFormatError(f"{path} has no entry {entry!r}",
                                  f"its top-level keys are: {', '.join(keys) or 'none'}")
        found, where = blob[entry], entry
    for _ in range(3):  # {"model": {"state_dict": ...}} and the like
        if _is_state_dict(found) or not isinstance(found, dict):
            break
        key = next((k for k in ENTRIES if isinstance(found.get(k), dict)), None)
        if key is None:  # EMA weights only when they are the only weights in the file
            ema = [k for k in EMA_ENTRIES if _is_state_dict(found.get(k))]
            others = [k for k, v in found.items() if k not in ema and _is_state_dict(v)]
            key = ema[0] if len(ema) == 1 and not others else None
        if key is None:
            break
        found, where = found[key], f"{where}.{key}" if where else key
    if not _is_state_dict(found):
        keys = sorted(map(str, found)) if isinstance(found, dict) else []
        held = f"keys: {', '.join(keys[:8])}{', …' if len(keys) > 8 else ''}" if keys else type(found).__name__
        raise FileFormatError(
            f"{path}{f' entry {where!r}' if where else ''} does not hold a state dict of tensors ({held})",
            "name the entry that holds the weights (--checkpoint-key KEY), or save model.state_dict()",
        )
    return {k: v for k, v in found.items() if k not in _DROPPED}, where


def _strip_prefix(state: dict) -> tuple[dict, str]:
    removed = ""
    while (prefix := next((p for p in PREFIXES if all(k.startswith(p) for k in state)), None)) is not None:
        state = {k[len(prefix):]: v for k, v in state.items()}
        removed += prefix
    return state, removed


def read_class_names(path: str | os.PathLike) -> list[str]:
    """A checkpoint's class names in output order: a JSON list of strings, or a text file with one
    name per line (ImageNet's wnids: `cut -d' ' -f1 LOC_synset_mapping.txt`)."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read class names from {path}: {exc}",
                           "pass a JSON list or a text file, one name per line") from None
    if path.suffix == ".json":
        try:
            names = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{path} is not valid JSON ({exc})", "pass a JSON list of class names") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InvalidInput(f"{path} must hold a JSON list of class names (strings)")
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names or len(set(names)) != len(names):
        raise InvalidInput(f"{path} must list each class name once "
                           f"(found {len(names)} names, {len(set(names))} distinct)")
    return names


def classifier_keys(model: nn.Module) -> tuple[str, str | None]:
    """The state-dict keys of `model.classifier`'s weight and bias (found by identity, so they are
    right whatever the model calls its head)."""
    by_id = {id(t): k for k, t in model.state_dict(keep_vars=True).items()}
    head = model.classifier
    return by_id[id(head.weight)], by_id[id(head.bias)] if head.bias is not None else None


def fit_state_dict(state: dict[str, torch.Tensor], model: nn.Module, what: str, model_name: str,
                   class_names: list[str], checkpoint_classes: list[str] | None) -> tuple[dict[str, torch.Tensor], str]:
    """`state` checked against `model` (built for the dataset) and fitted to its classes.

    Returns the state to load with strict=True and a note on the classes. Refuses (one error each) a
    checkpoint of another architecture, one whose classifier predicts other classes than the dataset
    without `checkpoint_classes`, and dataset classes the checkpoint does not know."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = dict(state)
    for key in expected:  # BatchNorm fills the counter that pre-0.4.1 checkpoints lack (torchvision's first releases)
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.tensor(0)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    fix = f"pass the --model (and --model-opt) the checkpoint was trained as (`ddkit list models`; not {model_name!r})"
    if missing or unexpected:
        raise FileFormatError(f"{what} is not a {model_name} state dict: {_few('missing', missing)}"
                              f"{'; ' if missing and unexpected else ''}{_few('unexpected', unexpected)}", fix)
    weight_key, bias_key = classifier_keys(model)
    _check_shapes(state, expected, (weight_key, bias_key), what, model_name)  # the body first: input channels
    rows = state[weight_key].shape[0]
    note = "as in the checkpoint"
    if state[weight_key].ndim != 2:
        pass  # not a linear layer's weight: the shape check below names it
    elif checkpoint_classes is not None:
        if len(checkpoint_classes) != rows:
            raise IncompatibleError(f"{what}'s classifier predicts {rows} classes but the class-name list has "
                                    f"{len(checkpoint_classes)}",
                                    "pass the checkpoint's own class names, in its output order")
        index = {name: i for i, name in enumerate(checkpoint_classes)}
        unknown = [n for n in class_names if n not in index]
        if unknown:
            raise IncompatibleError(f"{len(unknown)} of the dataset's classes are not among the checkpoint's: "
                                    f"{', '.join(unknown[:5])}{', …' if len(unknown) > 5 else ''}",
                                    "name the dataset's classes as the checkpoint's list does (e.g. ImageNet wnids)")
        keep = torch.tensor([index[n] for n in class_names])
        for key in (weight_key, bias_key):
            if key is not None:
                state[key] = state[key][keep].contiguous()
        note = f"the rows of the dataset's {len(class_names)} classes, by name, of the checkpoint's {rows}"
    elif rows != len(class_names):
        raise IncompatibleError(
            f"{what}'s classifier predicts {rows} classes but the dataset has {len(class_names)}",
            "pass --checkpoint-classes FILE (the checkpoint's class names in output order, e.g. ImageNet's wnids) "
            "to keep the rows of the dataset's classes, or import it for a dataset with the checkpoint's classes",
        )
    _check_shapes(state, expected, (), what, model_name)
    return state, note


def _check_shapes(state: dict, expected: dict, skip: tuple, what: str, model_name: str) -> None:
    wrong = [k for k in expected if k not in skip and tuple(state[k].shape) != expected[k]]
    if wrong:
        detail = ", ".join(f"{k}: checkpoint {tuple(state[k].shape)} vs model {expected[k]}" for k in wrong[:3])
        raise FileFormatError(f"{what} does not fit {model_name} for this dataset ({detail})",
                              "import it for a dataset with the input channels it was trained on, with the --model and "
                              "--model-opt it was trained as")


def _few(label: str, keys: list[str]) -> str:
    if not keys:
        return ""
    return f"{len(keys)} {label} key(s) ({', '.join(keys[:4])}{', …' if len(keys) > 4 else ''})"
