"""Sharing benchmark (issue 15): bytes `ddkit info` reads from a remote ~100 MB file (header only,
over a local ranged HTTP server), and export / import throughput per format on a Fashion-MNIST-shaped
set. Writes BENCHMARKS.md section `sharing`.

    OMP_NUM_THREADS=1 python scripts/bench_share.py [--work /tmp/ddkit-bench-share] [--images 5000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))
from benchlib import machine, today, write_section  # noqa: E402
from http_range import serve  # noqa: E402

from ddkit.data import load_dataset  # noqa: E402
from ddkit.share import ImportOptions, export_file, import_set  # noqa: E402
from ddkit.share.remote import header_info  # noqa: E402
from ddkit.store import DistilledSet, LogitsLabels, write_distilled  # noqa: E402

DATASET = "fashion-mnist-mini"


def big_file(path: Path, source, target_bytes: int) -> int:
    """A float16 set of noise images of about `target_bytes` on disk (gzip saves about a fifth of noise in [0, 1))."""
    per_image = 2 * 28 * 28
    n = int(target_bytes * 1.25) // per_image // 10 * 10
    g = torch.Generator().manual_seed(0)
    dset = DistilledSet.from_source(source, method="noise", method_version="1", config={}, seed=0,
                                    images=torch.rand(n, 1, 28, 28, generator=g), labels=torch.arange(n) % 10,
                                    ipc=n // 10)
    write_distilled(path, dset, overwrite=True)
    return n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", default="/tmp/ddkit-bench-share")
    parser.add_argument("--images", type=int, default=5000, help="images of the export/import set")
    parser.add_argument("--remote-mb", type=int, default=100)
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    (work / "served").mkdir(parents=True)
    os.environ["DDKIT_CACHE"] = str(work / "cache")
    source = load_dataset(DATASET, "train")

    n_big = big_file(work / "served" / "big.ddk.h5", source, args.remote_mb << 20)
    size = (work / "served" / "big.ddk.h5").stat().st_size
    with serve(work / "served") as (base, counter):
        start = time.perf_counter()
        d = header_info(f"{base}/big.ddk.h5")
        info_s = time.perf_counter() - start
    assert d["instances"] == n_big
    remote_rows = [f"| {size / 2**20:.1f} MiB ({n_big} float16 images) | {counter['bytes']:,} | {counter['requests']} | "
                   f"{100 * counter['bytes'] / size:.3f}% | {info_s:.2f} s |"]

    idx = torch.arange(args.images) % len(source)
    g = torch.Generator().manual_seed(1)
    dset = DistilledSet.from_source(source, method="bench", method_version="1", config={}, seed=0,
                                    images=source.images[idx], labels=source.labels[idx],
                                    soft={"logits": LogitsLabels(torch.randn(args.images, 10, generator=g))},
                                    ipc=int(torch.bincount(source.labels[idx]).max()))
    digest = write_distilled(work / "set.ddk.h5", dset)
    rows = []
    for fmt in ("imagefolder", "pt", "hf"):
        start = time.perf_counter()
        report = export_file(work / "set.ddk.h5", fmt, work / f"out-{fmt}")
        export_s = time.perf_counter() - start
        start = time.perf_counter()
        again = import_set(work / f"out-{fmt}", fmt, work / f"back-{fmt}.ddk.h5", ImportOptions(DATASET))
        import_s = time.perf_counter() - start
        rows.append(f"| {fmt} | {report.files} | {report.bytes / 1e6:.2f} | {args.images / export_s:,.0f} | "
                    f"{args.images / import_s:,.0f} | {'yes' if again == digest else 'NO'} |")

    body = "\n".join([
        "## Sharing: remote header reads and export / import throughput (issue 15)", "",
        f"`OMP_NUM_THREADS=1 python scripts/bench_share.py` on {machine()}, {today()}. The HTTP server is the",
        "tests' ranged server (`tests/http_range.py`) on 127.0.0.1; bytes are the response bodies it sent.", "",
        "`ddkit info URL` (header, labels and result cards through 64 KiB ranged blocks; no pixels):", "",
        "| remote file | bytes read | requests | share of the file | wall |", "|---|---|---|---|---|",
        *remote_rows, "",
        f"Export then import of a {args.images}-image uint8 {DATASET} set with fp16 logits "
        "(images per second; one process):", "",
        "| format | files | MB written | export img/s | import img/s | same content hash |", "|---|---|---|---|---|---|",
        *rows, "",
        "PNG encoding dominates `imagefolder` and `hf`; `pt` writes three tensors. Every import re-checks what it",
        "reads (PNG decode, weights-only unpickling, the ddkit sidecar) and writes a sealed, hashed file.",
    ])
    write_section("sharing", body)
    print(body)


if __name__ == "__main__":
    main()
