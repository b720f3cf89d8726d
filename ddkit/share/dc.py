"""The `dc` format: result files of the DC / DSA / DM code base (`res_<method>_<dataset>_<model>_<ipc>ipc.pt`).

Their `main.py` saves `{'data': data_save, 'accs_all_exps': accs}` where `data_save` holds one
`[image_syn, label_syn]` pair per experiment: images in the dataset's normalization (never
clipped to the pixel range), hard labels. `ImportOptions.index` picks the experiment; the
accuracies the authors recorded travel into the provenance as they were.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ddkit.data import load_dataset
from ddkit.errors import FileFormatError, InvalidInput
from ddkit.share.exchange import Imported, as_labels, unnormalize
from ddkit.share.formats import IMPORTERS, ImportOptions
from ddkit.share.safe_pt import load_plain

_FIX = "give a res_*.pt file saved by the DC/DSA/DM code ({'data': [[images, labels], ...], ...})"


def _numbers(obj):
    """The authors' accuracy record, kept only if it is plain numbers (it goes into a JSON header)."""
    if isinstance(obj, dict):
        return {str(k): _numbers(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_numbers(v) for v in obj]
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return float(obj)
    return obj if isinstance(obj, (int, float)) else None


@IMPORTERS.register("dc", summary="DC / DSA / DM result files res_*.pt ({'data': [[images, labels], ...]})")
def import_dc(source: Path, options: ImportOptions) -> Imported:
    if not source.is_file():
        raise FileFormatError(f"{source} is not a file", _FIX)
    blob = load_plain(source)
    data = blob.get("data") if isinstance(blob, dict) else None
    if not isinstance(data, (list, tuple)) or not data:
        raise FileFormatError(f"{source} has no 'data' list of [images, labels] pairs", _FIX)
    if not 0 <= options.index < len(data):
        raise InvalidInput(
            f"{source} holds {len(data)} experiment(s); --index {options.index} is out of range",
            f"pick one of 0..{len(data) - 1}",
        )
    pair = data[options.index]
    if (
        not isinstance(pair, (list, tuple))
        or len(pair) != 2
        or not all(isinstance(t, torch.Tensor) for t in pair)
        or pair[0].ndim != 4
    ):
        raise FileFormatError(f"{source}: experiment {options.index} is not an [images N×C×H×W, labels N] pair", _FIX)
    images, labels = pair
    norm = options.normalization or load_dataset(options.dataset, "train").info.normalization
    details = {"experiment": options.index, "experiments": len(data)}
    accs = _numbers(blob.get("accs_all_exps"))
    if accs:
        details["reported_accuracies"] = accs
    pixels = unnormalize(images.detach(), norm, details)
    parts = source.stem.split("_")  # res_<method>_<dataset>_<model>_<ipc>ipc
    method = parts[1].lower() if parts[0] == "res" and len(parts) > 1 else "dc"
    return Imported(pixels, as_labels(labels, f"{source} labels of experiment {options.index}"), method=method,
                    details=details)
