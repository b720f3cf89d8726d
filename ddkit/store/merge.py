"""`merge`: combine distilled files made independently (e.g. different classes by different teams)
into one, refusing parents that do not describe the same thing, and recording them as lineage.

Parents must share the schema, the method and its version, the source dataset (name, split, class
list, shape and id-list hash), the normalization, the teachers (by tensor hash) and the set of
label schemes, and the formation (decode) if any. Instances keep their order within each parent;
stored images come first, then the composed instances, exactly as a single file orders them, and
every per-instance label payload is reordered to match (with a formation, each stored image's
decoded instances stay together, so payload rows simply follow the parents in turn).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import torch

from ddkit.errors import IncompatibleError, InvalidInput
from ddkit.store.composite import AdditiveComposite
from ddkit.store.distilled import DistilledSet
from ddkit.store.payloads import LabelPayload
from ddkit.store.reader import DistilledDataset
from ddkit.store.writer import write_distilled


def _same(what: str, values: list, paths: list[str]) -> None:
    if any(v != values[0] for v in values[1:]):
        first_bad = next(i for i, v in enumerate(values) if v != values[0])
        raise IncompatibleError(
            f"cannot merge: {paths[first_bad]} differs from {paths[0]} in its {what}",
            "merge only files distilled from the same dataset, normalization, teachers and method",
        )


def _origins(content_sha256: str, seed: int, config: dict) -> list[tuple[str, int, str]]:
    """The runs a file holds: itself, or the runs listed in its merge lineage (recursively), each as
    (content hash, seed, config as JSON)."""
    lineage = config.get("merged_from") if isinstance(config, dict) else None
    if not isinstance(lineage, list):
        return [(content_sha256, seed, json.dumps(config, sort_keys=True, default=str))]
    return [o for entry in lineage for o in _origins(entry.get("content_sha256", ""), entry.get("seed"), entry.get("config", {}))]


def _refuse_repeats(parents, headers, paths: list[str]) -> None:
    """Refuse inputs that hold the same run twice: identical content (a file and its copy, or a file
    merged into another input), or the same seed with the same config (the same draws, run again)."""
    seen: dict = {}
    for path, p, h in zip(paths, parents, headers):
        for content, seed, config in _origins(p.content_sha256, h.seed, h.config):
            for key, what in ((("content", content), f"the same content (sha256 {content[:12]}…)"),
                              (("run", seed, config), f"the same run (seed {seed}, same config)")):
                if key in seen and (seen[key] != path or key[0] == "content"):
                    raise IncompatibleError(
                        f"cannot merge: {path} and {seen[key]} hold {what}; the merged set would repeat its instances",
                        "merge independent runs: different files made with different --seed")
                seen.setdefault(key, path)


def _merge_rows(arrays: list[np.ndarray], stored: list[int]) -> np.ndarray:
    """Per-instance rows of several parents in merged order: every parent's stored rows, then composed rows."""
    head = [a[:n] for a, n in zip(arrays, stored)]
    tail = [a[n:] for a, n in zip(arrays, stored)]
    return np.concatenate(head + tail)


def merge_files(paths: list[str | os.PathLike], out: str | os.PathLike, overwrite: bool = False) -> str:
    """Merge distilled files into `out` (atomic); returns the merged content_sha256."""
    paths = [str(p) for p in paths]
    if len(paths) < 2:
        raise InvalidInput("merge needs at least two files", "give two or more .ddk.h5 files")
    parents = [DistilledDataset(p, verify=True) for p in paths]
    try:
        headers = [p.header for p in parents]
        _same("schema or ddkit format", [1 for _ in parents], paths)
        _same("method", [(h.method, h.method_version) for h in headers], paths)
        _same("source dataset", [h.dataset.to_dict() for h in headers], paths)
        _same("normalization", [h.normalization.to_dict() for h in headers], paths)
        _same("teachers", [sorted(t.get("sha256", "") for t in h.teachers) for h in headers], paths)
        _same("label schemes", [p.soft_schemes for p in parents], paths)
        _same("image storage dtype", [p._h5()["images"].dtype.str for p in parents], paths)
        _same("composite kind", [p.composite is not None for p in parents], paths)
        _same("formation", [p.formation for p in parents], paths)
        _refuse_repeats(parents, headers, paths)

        stored_counts = [p.num_stored for p in parents]
        images = torch.cat([p.stored_pixels() for p in parents])
        labels = torch.cat([p.stored_labels for p in parents])
        dtype = parents[0]._h5()["images"].dtype.name

        composite = None
        if parents[0].composite is not None:
            offsets = np.cumsum([0, *stored_counts[:-1]])
            comps = [p.composite for p in parents]
            extra_keys = set(comps[0].extra)
            composite = AdditiveComposite(
                compensators=np.concatenate([c.compensators for c in comps]),
                members=np.concatenate([c.members + off for c, off in zip(comps, offsets)]),
                extra={k: np.concatenate([c.extra[k] for c in comps]) for k in extra_keys if all(k in c.extra for c in comps)},
            )

        soft: dict[str, LabelPayload] = {}
        for scheme in parents[0].soft_schemes:
            payloads = [p.soft[scheme] for p in parents]
            if payloads[0].rows is None:
                raise IncompatibleError(
                    f"cannot merge label payloads of scheme {scheme!r}: they are not one row per instance",
                    "merge the files without that payload, or re-create the labels for the merged set",
                )
            heads = [len(p) for p in parents] if parents[0].formation is not None else stored_counts
            arrays = {name: _merge_rows([pl.arrays()[name] for pl in payloads], heads)
                      for name in payloads[0].arrays()}
            soft[scheme] = type(payloads[0]).from_stored(arrays, payloads[0].fields(), dict(payloads[0].meta))

        num_classes = headers[0].num_classes
        num_stored = len(images) + (len(composite.compensators) if composite is not None else 0)
        lineage = [{"path": os.path.basename(p.path), "content_sha256": p.content_sha256, "seed": h.seed,
                    "config": h.config, "ipc": h.budget.ipc_stored} for p, h in zip(parents, headers)]
        merged = DistilledSet(
            method=headers[0].method, method_version=headers[0].method_version,
            config={"merged_from": lineage}, seed=headers[0].seed, dataset=headers[0].dataset,
            images=images, labels=labels, ipc=math.ceil(num_stored / num_classes),
            bytes_source=headers[0].budget.bytes_source, teachers=list(headers[0].teachers), soft=soft,
            composite=composite, formation=parents[0].formation, normalization=headers[0].normalization,
            license_note=headers[0].license_note,
            image_dtype=dtype,
        )
    finally:
        for p in parents:
            p.close()
    return write_distilled(out, merged, overwrite=overwrite)


__all__ = ["merge_files"]
