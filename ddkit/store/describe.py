"""What `ddkit info` shows about a file: `info_dict` gathers it (JSON-able), `describe` prints it.

Everything here is read with h5py and numpy (`store.meta`), never torch, so `ddkit info` starts fast;
only a `.pool.h5` loads the pool module (and torch) to read its header.
"""

from __future__ import annotations

import json
import os

import numpy as np

from ddkit.store.h5io import open_store, reading
from ddkit.store.meta import DistilledMeta, read_distilled_meta
from ddkit.store.payloads import read_payload
from ddkit.store.results import STORE_FORMATS, read_results, summarize_card
from ddkit.store.schema import DISTILLED_FORMAT, attr_text
from ddkit.store.selection import read_selection

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _unsealed_hdf5(path: str | os.PathLike) -> bool:
    """Whether `path` is a plain HDF5 file: distilled and selection files start with their seal
    instead, pools (and foreign HDF5 files) with HDF5's own signature."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE
    except OSError:
        return False


def pool_info_dict(path: str | os.PathLike) -> dict:
    """What `ddkit info` shows of a `.pool.h5` file: name, size, task, origins, provenance (with
    the recorded contamination check, if any)."""
    from ddkit.data.poolfile import open_pool

    with open_pool(path) as h5, reading(path):
        task = json.loads(h5.attrs["task"])
        out = {"path": str(path), "format": "ddkit.pool", "name": attr_text(h5.attrs["name"]), "size": int(h5.attrs["size"]),
               "task": task.get("name"), "fingerprint": attr_text(h5.attrs["fingerprint"]),
               "origins": json.loads(h5.attrs["origins"]), "provenance": json.loads(h5.attrs["provenance"]),
               "created": attr_text(h5.attrs.get("created", ""))}
    out["contamination"] = out["provenance"].get("contamination")
    return out


def info_dict(path: str | os.PathLike) -> dict:
    """Everything `describe` shows, as a JSON-able dict (the `ddkit info --json` output)."""
    if _unsealed_hdf5(path):
        from ddkit.data.poolfile import is_pool_file

        if is_pool_file(path):
            return pool_info_dict(path)
    h5, fmt = open_store(path, STORE_FORMATS)
    with h5, reading(path):
        common = {"path": str(path), "format": fmt, "schema": int(h5.attrs["schema"]),
                  "content_sha256": attr_text(h5.attrs["content_sha256"])}
        meta = read_distilled_meta(h5, path) if fmt == DISTILLED_FORMAT else None
        dbr = _dbr_summary(h5, meta) if meta is not None and "dbr" in meta.soft_schemes else None
    results = read_results(path)
    # A contamination check (`ddkit validate --against`) is stored beside the result cards.
    common["results"] = {n: c for n, c in results.items() if c.get("check") != "contamination"}
    common["contamination"] = next((c for c in results.values() if c.get("check") == "contamination"), None)
    if meta is None:
        sel = read_selection(path, verify=False)
        return common | {
            "method": sel.method, "method_version": sel.method_version, "seed": sel.seed,
            "created": sel.created, "ddkit_version": sel.ddkit_version, "pool": sel.pool,
            "kept": len(sel), "rounds": {int(r): int(c) for r, c in zip(*np.unique(sel.round, return_counts=True))},
            "class_counts": sel.class_counts or None, "extra": sorted(sel.extra),
            "teachers": sel.teachers, "config": sel.config,
        }
    h = meta.header
    labels = meta.labels
    classes = list(h.dataset.info.class_names)
    counts = np.bincount(labels, minlength=len(classes)).tolist()
    return common | {
        "method": h.method, "method_version": h.method_version, "seed": h.seed,
        "created": h.created, "ddkit_version": h.ddkit_version,
        "dataset": h.dataset.to_dict(), "normalization": h.normalization.to_dict(),
        "instances": len(labels), "stored_images": meta.num_stored,
        "compensators": len(meta.composite.compensators) if meta.composite is not None else 0,
        "instances_per_class": dict(zip(classes, counts, strict=True)),
        "budget": h.budget.to_dict(), "composite": _composite_parts(meta), "formation": _formation_parts(meta),
        "teachers": h.teachers, "config": h.config, "license_note": h.license_note,
        "dbr": dbr,
    }


def _dbr_summary(h5, meta: DistilledMeta) -> dict:
    """A DBR payload's size beside what full fp16 soft labels for the same views would take."""
    payload = read_payload(h5["soft"]["dbr"])
    views = int(payload.d_org.size)
    return {"recipe": payload.protocol, "views": views, "bytes": payload.nbytes,
            "full_soft_label_bytes": views * meta.header.num_classes * 2}


def _composite_parts(meta: DistilledMeta) -> dict | None:
    """Bytes of the compensators and of their mapping, and the budget in image-equivalents per class."""
    if meta.composite is None:
        return None
    comps = meta.composite.compensators
    classes = meta.header.num_classes
    return {
        "compensators": len(comps), "bytes_compensators": int(comps.nbytes),
        "bytes_mapping": int(meta.composite.nbytes - comps.nbytes),
        "equivalent_ipc": (meta.num_stored + len(comps)) / classes,  # stored images + compensators, per class
        "instances_per_class": len(meta.labels) / classes,
    }


def _formation_parts(meta: DistilledMeta) -> dict | None:
    """The decode and what it gives per class: stored images, instances (ipc_stored × n²)."""
    if meta.formation is None:
        return None
    return formation_summary(meta.formation.to_dict(), meta.num_stored, len(meta.labels), meta.header.num_classes)


def formation_summary(formation: dict, num_stored: int, instances: int, num_classes: int) -> dict:
    """`info`'s formation record, from the stored `/formation` attributes (also for remote headers)."""
    factor = int(formation["factor"])
    return {**formation, "instances_per_image": factor**2, "bytes_decoder": 0,
            "stored_per_class": num_stored / num_classes, "instances_per_class": instances / num_classes}


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _short(value, width: int = 60) -> str:
    text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _teachers(teachers: list) -> str:
    if not teachers:
        return "none"
    parts = []
    for t in teachers:
        accuracy = t.get("accuracy", t.get("test_accuracy"))  # teacher headers say test_accuracy
        acc = f", test acc {_percent(accuracy)}%" if isinstance(accuracy, (int, float)) else ""
        parts.append(f"{t.get('arch', '?')} (sha256 {str(t.get('sha256', '?'))[:12]}{acc})")
    return "; ".join(parts)


def _percent(x, signed: bool = False) -> str:
    """An accuracy (a fraction, as result cards and teacher headers store it) in percent, 2 decimals."""
    if not isinstance(x, (int, float)):
        return "—"
    return f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}"


def contamination_line(record: dict | None) -> str:
    """The `ddkit info` line of a recorded contamination check (or of its absence)."""
    if not record:
        return "  leakage     not checked (run `ddkit validate FILE --against DATASET`)"
    parts = ", ".join(f"{name} {p.get('flagged')}/{p.get('checked')}" for name, p in record.get("parts", {}).items())
    return (f"  leakage     {record.get('flagged')} flagged against {record.get('against')} ({parts}); "
            f"{record.get('detector')}, {record.get('created')}")


def _results_table(results: dict) -> list[str]:
    if not results:
        return ["  results     none (run `ddkit evaluate`)"]
    rows = [summarize_card(name, card) for name, card in sorted(results.items())]
    width = max(8, *(len(r["protocol"]) for r in rows))
    lines = ["  results     test accuracy (%), mean ± std over seeds; random real at the same budget; gain in points;",
             "              DD-Ranking's HLR (lower is better), IOR and LRS, where measured"]
    head = f"    {'protocol':<{width}}  {'mean ± std':>16}  {'random':>16}  {'gain':>7}  {'HLR':>6}  {'IOR':>6}  {'LRS':>6}"
    full, derived = [r for r in rows if not r["derived"]], [r for r in rows if r["derived"]]
    for title, group in ((None, full), ("  shortened or altered runs (derived protocols: not comparable with the "
                                        "protocols' own results)", derived)):
        if not group:
            continue
        lines += ([title] if title else []) + [head]
        for r in group:
            acc = f"{_percent(r['mean'])} ± {_percent(r['std'])}"
            rnd = f"{_percent(r['random_mean'])} ± {_percent(r['random_std'])}"
            lines.append(f"    {r['protocol']:<{width}}  {acc:>16}  {rnd:>16}  {_percent(r['gain'], True):>7}  "
                         f"{_percent(r.get('hlr')):>6}  {_percent(r.get('ior'), True):>6}  {_percent(r.get('lrs')):>6}")
    return lines


def describe(path: str | os.PathLike) -> str:
    """The human-readable summary of a `.ddk.h5` or `.sel.h5` file (`ddkit info`)."""
    d = info_dict(path)
    if d["format"] == "ddkit.pool":
        return "\n".join([f"{d['path']}: ddkit pool {d['name']}, {d['size']} images for task {d['task']}, "
                          f"fingerprint {d['fingerprint'][:12]}, created {d['created']}",
                          f"  origins     {', '.join(d['origins']) or '—'}", contamination_line(d["contamination"])])
    return render_info(d)


def _rounds(rounds) -> str:
    """'picked in one round (round 1)' or 'over 3 rounds (round 0: 10, round 1: 5, round 2: 5)'."""
    if not isinstance(rounds, dict):  # a header read remotely, or an older dict: the round count only
        return f"over {rounds} round(s)"
    if len(rounds) == 1:
        return f"picked in one round (round {next(iter(rounds))})"
    return f"over {len(rounds)} rounds (" + ", ".join(f"round {r}: {n}" for r, n in rounds.items()) + ")"


def _class_counts(counts) -> str:
    if not counts:
        return "not recorded (an unlabeled pool, or a file written before ddkit recorded it)"
    shown = " ".join(str(c) for c in counts) if len(counts) <= 20 else f"{' '.join(map(str, counts[:20]))} …"
    return f"{min(counts)}–{max(counts)} over {len(counts)} classes ({sum(1 for c in counts if c == 0)} empty): {shown}"


def render_info(d: dict) -> str:
    """`describe`'s text for an `info_dict`-shaped dict (also built from a remote file's header)."""
    head = f"{d['method']} {d['method_version']}, seed {d['seed']}, created {d['created']} by ddkit {d['ddkit_version']}"
    config = ", ".join(f"{k}={_short(v, 30)}" for k, v in sorted(d["config"].items())) or "—"
    if d["format"] != DISTILLED_FORMAT:
        pool = d["pool"]
        lines = [
            f"{d['path']}: ddkit selection (schema {d['schema']})",
            f"  method      {head}",
            f"  pool        {pool['name']} ({pool['split']}), {pool['size']} samples, fingerprint {pool['fingerprint'][:12]}",
            f"  kept        {d['kept']} samples, {_rounds(d['rounds'])}; per-id extras: {', '.join(d['extra']) or 'none'}",
            f"  per class   {_class_counts(d.get('class_counts'))}",
            f"  teachers    {_teachers(d['teachers'])}",
            f"  config      {_short(config, 200)}",
            f"  content     sha256 {d['content_sha256']}",
        ]
        return "\n".join(lines + [contamination_line(d.get("contamination"))] + _results_table(d["results"]))
    ds, b = d["dataset"], d["budget"]
    counts = list(d["instances_per_class"].values())
    composed = f" + {d['compensators']} compensators" if d["compensators"] else ""
    labels = ", ".join(f"{p} {human_bytes(n)}" for p, n in b["bytes_by_part"].items() if p == "labels" or p.startswith("soft/"))
    aux = ", ".join(
        f"{p} {human_bytes(n)}" for p, n in b["bytes_by_part"].items() if p not in ("images", "labels") and not p.startswith("soft/")
    )
    total = b["bytes_images"] + b["bytes_labels"] + b["bytes_aux"]
    lines = [
        f"{d['path']}: ddkit distilled dataset (schema {d['schema']})",
        f"  method      {head}",
        f"  dataset     {ds['name']} ({ds['split']}), {ds['num_classes']} classes, "
        f"{'×'.join(map(str, ds['image_shape']))}, ids sha256 {ds['ids_sha256'][:12]}",
        f"  instances   {d['instances']} from {d['stored_images']} stored images{composed}; "
        f"per class {min(counts)}–{max(counts)} (mean {b['instances_per_class']:.1f})",
        f"  budget      ipc {b['ipc_stored']}: {human_bytes(total)} = images {human_bytes(b['bytes_images'])}"
        f" + labels {human_bytes(b['bytes_labels'])} ({labels}) + aux {human_bytes(b['bytes_aux'])} ({aux or 'none'})",
        f"              {b['ratio'] * 100:.3g}% of the source ({human_bytes(b['bytes_source'])})",
    ]
    if d["composite"]:
        c = d["composite"]
        lines.append(
            f"  composite   base images {human_bytes(b['bytes_images'])} + {c['compensators']} compensators "
            f"{human_bytes(c['bytes_compensators'])} (float32) + mapping {human_bytes(c['bytes_mapping'])} + labels "
            f"{human_bytes(b['bytes_labels'])}; equivalent ipc {c['equivalent_ipc']:.3g} (images + compensators per class), "
            f"{c['instances_per_class']:.3g} instances per class"
        )
    if d.get("formation"):
        f = d["formation"]
        lines.append(
            f"  formation   multi-formation, factor {f['factor']}: each stored image decodes into {f['instances_per_image']} "
            f"instances ({f['factor']}×{f['factor']} grid, cells upsampled bilinearly); decoder {human_bytes(f['bytes_decoder'])} "
            f"(no parameters); {f['stored_per_class']:.3g} stored images × {f['instances_per_image']} = "
            f"{f['instances_per_class']:.3g} instances per class"
        )
    lines += [
        f"  teachers    {_teachers(d['teachers'])}",
        f"  config      {_short(config, 200)}",
        f"  content     sha256 {d['content_sha256']}",
        f"  license     {d['license_note']}",
    ]
    if d.get("dbr"):
        r = d["dbr"]
        lines.insert(6, f"  dbr         {r['views']} views ({r['recipe']}) × 2 fp16 distances = {human_bytes(r['bytes'])}; "
                        f"full fp16 soft labels for the same views: {human_bytes(r['full_soft_label_bytes'])} "
                        f"({r['full_soft_label_bytes'] / max(r['bytes'], 1):.1f}×)")
    return "\n".join(lines + [contamination_line(d.get("contamination"))] + _results_table(d["results"]))
