"""`ddkit pool dedup` at scale (issue 28): wall time and peak memory of each detector on a streamed pool.

A row is one pool folder (its train split, built into a pool for the task of `--task`) deduplicated
with one detector, both steps `ddkit` commands watched from outside (`benchlib.run_watched`: peak RSS
of the main process, peak PSS of the process tree). The pool is built once per folder and reused;
`--subset N` also makes (once) a folder holding the first N/classes images of every class of the pool
folder, so the slow detectors are timed on the same images at a size they finish.

    python scripts/make_image_folder.py --out P500 --classes 200 --train-per-class 2500 --size 64 --seed 1 --pool-only
    OMP_NUM_THREADS=1 DDKIT_PROGRESS=0 python scripts/bench_pool_dedup.py --task D100 --pool P500 \\
        --detectors descriptor-1 --subset 2000 --subset-detectors descriptor-1 pixel-align-1

The table goes into BENCHMARKS.md as the block `scale-dedup`, inside the section `scale`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import ROOT, machine, record_state, run_watched, today, write_section  # noqa: E402

STATE = ROOT / "runs" / "scale" / "dedup.json"
WORK = ROOT / "runs" / "scale" / "dedup"


def ddkit(*args: str) -> list[str]:
    return [sys.executable, "-m", "ddkit", *args]


def subset_folder(pool: Path, n: int) -> Path:
    """A folder with the first n/classes images (by name) of every class of `pool`'s train split."""
    out = WORK / f"{pool.name}-first{n}"
    if (out / "done").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    classes = sorted(p for p in (pool / "train").iterdir() if p.is_dir())
    per_class = max(1, n // len(classes))
    for c in classes:
        (out / "train" / c.name).mkdir(parents=True)
        for f in sorted(c.iterdir())[:per_class]:
            shutil.copyfile(f, out / "train" / c.name / f.name)
    shutil.copyfile(pool / "classes.json", out / "classes.json")
    (out / "done").write_text("")
    return out


def images(folder: Path) -> int:
    return sum(1 for _ in (folder / "train").rglob("*.jpg"))


def measure(task: Path, pool_folder: Path, detectors: list[str], env: dict) -> None:
    work = WORK / pool_folder.name
    work.mkdir(parents=True, exist_ok=True)
    pool = work / "pool.pool.h5"
    key = f"{pool_folder.name}/build"
    state = json.loads(STATE.read_text()) if STATE.exists() else {}
    if key not in state or not pool.exists():
        r = run_watched(ddkit("pool", "build", "--task", f"imagefolder:{task}", "--from",
                              f"imagefolder:{pool_folder}@train", "--out", str(pool), "--overwrite"), env)
        record_state(STATE, key, {**_entry(r), "images": images(pool_folder), "stage": "pool build"})
    for detector in detectors:
        r = run_watched(ddkit("pool", "dedup", str(pool), "--detector", detector, "--out",
                              str(work / f"dedup-{detector}.pool.h5"), "--overwrite", "--json"), env)
        report = json.loads(r["stdout"][r["stdout"].index("{"):])
        record_state(STATE, f"{pool_folder.name}/{detector}",
                     {**_entry(r), "images": images(pool_folder), "stage": f"pool dedup --detector {detector}",
                      "report": {k: v for k, v in report.items() if not isinstance(v, (list, dict))}})
        print(pool_folder.name, detector, f"{r['wall']:.0f} s", f"{r['main_rss_mib']:.0f} MiB", flush=True)


def _entry(r: dict) -> dict:
    return {k: r[k] for k in ("wall", "main_rss_mib", "tree_pss_mib", "command")} | {
        "date": today(), "machine": machine(), "load_average": os.getloadavg()[0]}


def render(command: str) -> None:
    state = json.loads(STATE.read_text())
    rows = sorted(state.values(), key=lambda e: (e["images"], e["stage"] != "pool build", e["stage"]))
    lines = ["### `pool dedup` of a streamed pool (issue 28)", "",
             f"Command: `{command}`. Machine: {rows[0]['machine']}. Date: {rows[-1]['date']}. Each stage is one "
             "`ddkit` command under DDKIT_DATA_MODE=stream, one torch thread, watched from outside (memory as in the "
             "table above). The machine's 2 cores were shared with other benchmarks (load average at the start of "
             "each command in the last column), so every wall time is an upper bound. *dropped*: test copies / "
             "in-pool near-duplicates. A descriptor detector's first check against a task learns that task's "
             "descriptor on its train split (or adds a later version's calibration) and caches it: the first "
             "descriptor-1 row (2,000 images) includes learning tiny-100k's descriptor; descriptor-2's calibration "
             "was added beforehand by `ddkit contamination calibrate imagefolder:…/tiny-100k` (520 s wall, 317 CPU s, "
             "2.6 GiB), so its rows do not include it.", "",
             "| pool images | command | wall s | images/s | main RSS MiB | tree PSS MiB | dropped | load |",
             "|---|---|---|---|---|---|---|---|"]
    for e in rows:
        rep = e.get("report", {})
        dropped = (f"{rep.get('dropped_test_contamination', '?')} / {rep.get('dropped_in_pool_duplicates', '?')}" if rep else "—")
        lines.append(f"| {e['images']} | `{e['stage']}` | {e['wall']:.0f} | {e['images'] / e['wall']:.0f} | "
                     f"{e['main_rss_mib']:.0f} | {e['tree_pss_mib']:.0f} | {dropped} | {e['load_average']:.1f} |")
    write_section("scale-dedup", "\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", type=Path, required=True, help="the image folder whose task (and test split) the pool serves")
    p.add_argument("--pool", type=Path, required=True, help="the pool image folder (its train split)")
    p.add_argument("--detectors", nargs="*", default=["descriptor-1"])
    p.add_argument("--subset", type=int, default=0, help="also time on a folder of about this many of the pool's images")
    p.add_argument("--subset-detectors", nargs="*", default=["descriptor-1", "pixel-align-1"])
    p.add_argument("--render-only", action="store_true")
    args = p.parse_args()
    env = {"DDKIT_DATA_MODE": "stream", "DDKIT_PROGRESS": "0", "DDKIT_CACHE": str(WORK / "cache")}
    if not args.render_only:
        if args.subset:
            measure(args.task, subset_folder(args.pool, args.subset), args.subset_detectors, env)
        measure(args.task, args.pool, args.detectors, env)
    render(re.sub(r"\s+", " ", " ".join(["python", "scripts/bench_pool_dedup.py", *sys.argv[1:]])))


if __name__ == "__main__":
    main()
