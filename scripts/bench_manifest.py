"""What an image folder's manifest costs per image, before and after the compact layout (issue 28).

Each `--code LABEL=ROOT` indexes the folder's train split with the ddkit tree at ROOT (a fresh child
process, a fresh cache), and reports: the manifest's bytes per image in memory (every per-row array
and path table; a shape shared by all rows counted once), the cached file's bytes per image on disk,
the mean relative path length, and the fingerprint, which must be the same for every tree.

    python scripts/make_image_folder.py --out D25 --classes 200 --train-per-class 125 --test-per-class 50 --size 64
    OMP_NUM_THREADS=1 python scripts/bench_manifest.py --folder D25 --code before=/work/main --code after=.

The table goes into BENCHMARKS.md as the block `scale-manifest`, inside the section `scale`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import machine, today, write_section  # noqa: E402

CHILD = r"""
import dataclasses, json, sys, time
from pathlib import Path
import numpy as np
import ddkit
from ddkit.data.imagefolder import _manifests
from ddkit.data.manifest import _cache_path

def row_bytes(m):
    total = 0
    for f in dataclasses.fields(m):
        v = getattr(m, f.name)
        if isinstance(v, np.ndarray):
            total += v[:1].nbytes if v.ndim and v.strides[0] == 0 else v.nbytes
        elif hasattr(v, "nbytes"):
            total += v.nbytes
    return total

root = Path(sys.argv[1]).resolve()
start = time.perf_counter()
_, _, m = _manifests(root)
seconds = time.perf_counter() - start
paths = list(m.paths)
print(json.dumps({"ddkit": ddkit.__file__, "images": len(m), "memory_bytes": row_bytes(m),
                  "disk_bytes": _cache_path(root, "train").stat().st_size, "index_seconds": seconds,
                  "path_chars": sum(map(len, paths)) / max(1, len(paths)), "fingerprint": m.fingerprint()}))
"""


def measure(folder: Path, code: Path) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "PYTHONPATH": str(code), "DDKIT_CACHE": cache, "DDKIT_PROGRESS": "0"}
        proc = subprocess.run([sys.executable, "-c", CHILD, str(folder.resolve())], env=env, capture_output=True,
                              text=True, cwd=cache)  # not the caller's folder: "-c" puts it first on sys.path
    if proc.returncode != 0:
        raise SystemExit(f"indexing with {code} failed:\n{proc.stderr}")
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    if not record["ddkit"].startswith(str(code.resolve())):
        raise SystemExit(f"the child imported {record['ddkit']}, not the tree at {code}")
    commit = subprocess.run(["git", "-C", str(code), "log", "-1", "--format=%h"], capture_output=True, text=True)
    return {**record, "commit": commit.stdout.strip() or "?"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", required=True, type=Path, help="an image folder (scripts/make_image_folder.py)")
    parser.add_argument("--code", action="append", required=True, metavar="LABEL=ROOT",
                        help="a ddkit source tree to index with (repeat: before=..., after=...)")
    parser.add_argument("--no-write", action="store_true", help="print the table, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    rows = []
    for spec in args.code:
        label, _, root = spec.partition("=")
        r = measure(args.folder, Path(root or label))
        rows.append((label, r))
        print(f"{label:>8} {r['commit']}: {r['images']} images, {r['memory_bytes'] / r['images']:.0f} B/image in memory, "
              f"{r['disk_bytes'] / r['images']:.0f} B/image on disk, index {r['index_seconds']:.0f} s", flush=True)
    same = len({r["fingerprint"] for _, r in rows}) == 1
    lines = [
        "### Manifest bytes per image (issue 28)", "",
        f"Command: `OMP_NUM_THREADS=1 python scripts/bench_manifest.py --folder {args.folder.name} "
        + " ".join(f"--code {c}" for c in args.code) + f"`. Machine: {machine()}. Date: {today()}. "
        f"Folder `{args.folder.name}` from `scripts/make_image_folder.py` (its train split; relative paths as "
        "`train/<class>/<class>_NNNNNN.jpg`). *memory*: every per-row array of the manifest and its path table "
        "(a shape shared by all rows counted once); *disk*: the cached `.npz`. Index seconds are upper bounds "
        "(shared machine).", "",
        "| code | commit | images | mean path chars | memory B/image | disk B/image | index s | fingerprint |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, r in rows:
        lines.append(f"| {label} | {r['commit']} | {r['images']} | {r['path_chars']:.1f} | "
                     f"{r['memory_bytes'] / r['images']:.0f} | {r['disk_bytes'] / r['images']:.0f} | "
                     f"{r['index_seconds']:.0f} | {r['fingerprint'][:12]}… |")
    lines += ["", "The fingerprint is the same for every row." if same else
              "**The fingerprints differ: the compact layout changed what a row is.**"]
    print("\n".join(lines))
    if not same:
        raise SystemExit("fingerprints differ")
    if not args.no_write:
        write_section("scale-manifest", "\n".join(lines))


if __name__ == "__main__":
    main()
