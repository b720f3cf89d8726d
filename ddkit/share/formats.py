"""The interchange formats by name, and what every export writes beside its own files (the card).

`EXPORTERS` maps a format to `fn(src: Exportable, folder: Path) -> list[str]` (notes on what the
format could not carry); `IMPORTERS` maps one to `fn(source: Path, options: ImportOptions) -> Imported`.
One file per format registers both sides of it (`imagefolder.py`, `pt.py`, `hf.py`, `dc.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ddkit.data.base import Normalization
from ddkit.errors import InvalidInput
from ddkit.registry import Registry
from ddkit.share.exchange import Exportable
from ddkit.store.results import summarize_card

EXPORTERS = Registry("export format")
IMPORTERS = Registry("import format")


@dataclass(frozen=True)
class ImportOptions:
    """What an importer may need beyond the source: the target dataset and how the pixels were encoded.

    `normalization` overrides the dataset's registered mean/std when the set was stored with another;
    `zca` is a file with the whitening parameters (or "fit" to refit MTT's whitening on the dataset);
    `no_zca` states that tensors from an MTT-style source were not whitened; `index` picks one
    experiment of a DC result file. `follow_symlinks` opts into reading symbolic links found in the
    source folder (by default a link or special file there is refused: it can point anywhere).
    `trusted_keys` requires a signature (`ddkit.share.sign`): the source must be a ddkit export of a
    set signed by a key in that trusted-keys file (True: the default file), and is rebuilt exactly.
    """

    dataset: str
    normalization: Normalization | None = None
    zca: str | None = None
    no_zca: bool = False
    index: int = 0
    follow_symlinks: bool = False
    trusted_keys: str | bool | None = None


def parse_normalization(mean: str | None, std: str | None) -> Normalization | None:
    """`--mean` / `--std` as typed: comma-separated numbers, both or neither (InvalidInput otherwise)."""
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        raise InvalidInput("--mean and --std go together", "give both, e.g. --mean 0.2861 --std 0.3530")
    values = []
    for name, text in (("--mean", mean), ("--std", std)):
        try:
            values.append(tuple(float(v) for v in text.split(",")))
        except ValueError:
            raise InvalidInput(f"{name} {text!r} is not a comma-separated list of numbers",
                               f"e.g. {name} 0.4914,0.4822,0.4465 (one value per channel)") from None
    return Normalization(*values)


def _percent(x) -> str:
    return f"{100 * x:.2f}%" if isinstance(x, (int, float)) else "—"


def card_text(src: Exportable, fmt: str, how_to_load: str) -> str:
    """The README of an export: what the set is, where it came from, how it was evaluated, how to load it."""
    h = src.header
    d = h.dataset.info
    teachers = ", ".join(f"{t.get('arch', '?')} sha256 {str(t.get('sha256', '?'))[:16]}" for t in h.teachers)
    lines = [
        f"# {h.method} distilled set of {d.name} ({len(src.labels)} training instances)",
        "",
        f"Exported by ddkit from `{src.path.split('/')[-1]}` (content_sha256 `{src.dataset.content_sha256}`) "
        f"to the `{fmt}` format.",
        "",
        "## Provenance",
        "",
        f"- method: {h.method} {h.method_version}, seed {h.seed}, created {h.created} by ddkit {h.ddkit_version}",
        f"- dataset: {d.name} ({h.dataset.split}), {d.num_classes} classes, "
        f"image shape {'x'.join(map(str, d.image_shape))}",
        f"- normalization (mean / std): {list(h.normalization.mean)} / {list(h.normalization.std)}",
        f"- budget: {h.budget.ipc_stored} images per class stored, {h.budget.bytes_total} bytes",
        *([f"- formation: each stored image decodes into {src.dataset.formation.per_image} training images "
           f"(multi-formation factor {src.dataset.formation.factor}: an n×n grid, each cell upsampled bilinearly); "
           "the files here hold the decoded images"] if src.dataset.formation is not None else []),
        f"- teachers: {teachers or 'none'}",
        f"- license: {h.license_note}",
        "",
        "## Results (final-step test accuracy, mean over seeds; random real subset at the same budget)",
        "",
    ]
    cards = [summarize_card(name, card) for name, card in sorted(src.results.items()) if not card.get("check")]
    if cards:
        lines += ["| protocol | accuracy | random real | gain |", "|---|---|---|---|"]
        for s in sorted(cards, key=lambda s: s["derived"] is not None):  # shortened runs last, and marked
            name = f"{s['protocol']} (shortened run, not comparable)" if s["derived"] else s["protocol"]
            lines.append(f"| {name} | {_percent(s['mean'])} | {_percent(s['random_mean'])} | {_percent(s['gain'])} |")
    else:
        lines.append("not evaluated (run `ddkit evaluate`)")
    lines += [
        "",
        "## Loading",
        "",
        how_to_load,
        "",
        "`ddkit.json` and `extras/` let `ddkit import` rebuild the original file exactly.",
        "",
    ]
    return "\n".join(lines)
