"""Large-data benchmark (issue 16): the seed methods, a selector, the evaluator and the pool passes on
image folders far larger than the in-memory path could hold, with memory measured per command.

Every stage is one `ddkit` command run under DDKIT_DATA_MODE=stream, watched from outside
(`benchlib.run_watched`): peak RSS of the main process and peak PSS of the whole process tree
(main + decoding workers, shared pages counted once). Two folder sizes show whether memory grows
with N. Decoding is compared with PIL's single-core rate on the same files × the cores.

    python scripts/make_image_folder.py --out D25 --classes 200 --train-per-class 125 --test-per-class 50 --size 64
    python scripts/make_image_folder.py --out D100 --classes 200 --train-per-class 500 --test-per-class 50 --size 64
    python scripts/make_image_folder.py --out P500 --classes 200 --train-per-class 2500 --size 64 --seed 1 --pool-only
    OMP_NUM_THREADS=2 DDKIT_PROGRESS=0 flock /tmp/ddkit-cpu.lock python scripts/bench_scale.py \\
        --folders D25 D100 [--pool P500] [--stages ...] ; python scripts/bench_scale.py --render

The synthesizers run with reduced iteration counts (see CONFIGS): this benchmark measures memory and
throughput at scale, not the methods' accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import BENCHMARKS, ROOT, machine, record_state, run_watched, today, write_section  # noqa: E402

STATE = ROOT / "runs" / "scale" / "state.json"
STAGES = ("index", "teacher", "teacher-import", "random-real", "infer", "nrr-dd", "select", "evaluate", "pool-build", "pool-score")
CONFIGS = {
    "random-real": [],
    "infer": ["iterations=10"],
    "nrr-dd": ["iterations=10", "mipc=50", "refine=true", "per_image=confidence"],  # the refinement pass too
}
TEACHER = ["--model", "convnet-bn", "--model-opt", "width=32", "--epochs", "1", "--batch-size", "256"]
EVAL = ["--protocol", "hard-cpu@2", "--seeds", "1", "--no-full", "--no-ranking", "--steps", "300"]


def ddkit(*args: str) -> list[str]:
    return [sys.executable, "-m", "ddkit", *args]


def count_images(folder: Path, split: str = "train") -> int:
    return sum(1 for p in (folder / split).rglob("*") if p.is_file())


def pil_rate(folder: Path, n: int = 2000) -> float:
    """Images/s of PIL decoding (to RGB uint8) on one core, over the first `n` train files."""
    from ddkit.data.decode import decode_image

    files = sorted(p for p in (folder / "train").rglob("*.jpg"))[:n]
    start = time.perf_counter()
    for f in files:
        decode_image(f)
    return len(files) / (time.perf_counter() - start)


def stage_commands(stage: str, folder: Path, work: Path, pool: Path | None) -> list[list[str]]:
    ds = f"imagefolder:{folder}"
    teacher = work / "teacher.safetensors"
    if stage == "index":  # the first load of each split builds its manifest (cache emptied before)
        code = ("import sys,time; from ddkit.data import load_dataset; t=time.perf_counter(); "
                f"n=sum(len(load_dataset({ds!r}, s)) for s in ('train','test')); "
                "print(n, time.perf_counter()-t)")
        return [[sys.executable, "-c", code]]
    if stage == "teacher":
        return [ddkit("teacher", "train", "--dataset", ds, *TEACHER, "--out", str(teacher), "--overwrite")]
    if stage == "teacher-import":  # the first folder's teacher weights, imported for this folder (same classes)
        first = ROOT / "runs" / "scale" / Path(FOLDERS[0]).name / "teacher.safetensors"
        state = work / "imported-state.pt"
        code = ("import torch; from safetensors.torch import load_file; "
                f"torch.save(load_file({str(first)!r}), {str(state)!r})")
        return [[sys.executable, "-c", code],
                ddkit("teacher", "import", str(state), "--dataset", ds, *TEACHER[:4], "--out", str(teacher),
                      "--overwrite")]
    if stage in CONFIGS:
        cfg = sum((["--config", c] for c in CONFIGS[stage]), [])
        t = [] if stage == "random-real" else ["--teacher", str(teacher)]
        return [ddkit("synthesize", "--method", stage, "--dataset", ds, *t, "--ipc", "10", *cfg,
                      "--out", str(work / f"{stage}.ddk.h5"), "--overwrite")]
    if stage == "select":
        return [ddkit("select", "--method", "pcoreset-teacher", "--pool", ds, "--teacher", str(teacher),
                      "--budget", "2000", "--out", str(work / "select.sel.h5"), "--overwrite")]
    if stage == "evaluate":
        return [ddkit("evaluate", str(work / "random-real.ddk.h5"), *EVAL, "--dataset", ds, "--json")]
    pool_work = work if pool == folder else work.parent / pool.name  # a pool of another folder: its own files
    if stage == "pool-build":
        pool_work.mkdir(parents=True, exist_ok=True)
        return [ddkit("pool", "build", "--task", ds, "--from", f"imagefolder:{pool}@train",
                      "--out", str(pool_work / "pool.pool.h5"), "--overwrite")]
    if stage == "pool-score":
        return [ddkit("pool", "score", str(pool_work / "pool.pool.h5"), "--teacher", str(teacher),
                      "--out", str(pool_work / "pool.scores.h5"), "--overwrite")]
    raise SystemExit(f"unknown stage {stage}")


def run_stage(stage: str, folder: Path, work: Path, pool: Path | None, env: dict) -> dict:
    cmds = stage_commands(stage, folder, work, pool)
    results = [run_watched(c, env) for c in cmds]
    r = results[-1]
    entry = {k: r[k] for k in ("wall", "main_rss_mib", "tree_pss_mib", "tree_rss_mib", "processes", "command")}
    if stage == "index":
        n, seconds = r["stdout"].split()[-2:]
        entry.update(images=int(n), index_seconds=float(seconds), decode_rate=int(n) / float(seconds))
    if stage == "pool-build":
        entry["images"], entry["pool_folder"] = count_images(pool), pool.name
    return entry


FOLDERS: list[str] = []


def measure(args) -> None:
    FOLDERS[:] = args.folders if not args.first_folder else [args.first_folder, *args.folders]
    env = {"DDKIT_DATA_MODE": "stream", "DDKIT_PROGRESS": "0"}
    cores = os.cpu_count() or 1
    for folder in map(Path, args.folders):
        n = count_images(folder)
        work = ROOT / "runs" / "scale" / folder.name
        work.mkdir(parents=True, exist_ok=True)
        cache = work / "cache"
        env_f = {**env, "DDKIT_CACHE": str(cache)}
        for stage in args.stages:
            if stage.startswith("pool") and (not args.pool or folder != Path(args.folders[-1])):
                continue  # the pool stages run once, against the largest folder's task and teacher
            if stage == "index" and cache.exists():
                import shutil

                shutil.rmtree(cache)
            entry = run_stage(stage, folder, work, Path(args.pool) if args.pool else None, env_f)
            if stage == "index":
                entry["pil_single_core"] = pil_rate(folder)
                entry["cores"] = cores
            entry.update(folder=folder.name, train_images=n)
            if stage.startswith("pool") and Path(args.pool).name != folder.name:  # a column of its own
                entry.update(folder=Path(args.pool).name, train_images=count_images(Path(args.pool)),
                             task_folder=folder.name)
            record_state(STATE, f"{entry['folder']}/{stage}", entry)
            print(f"{folder.name:>12} {stage:>12}  {entry['wall']:7.1f} s  main RSS {entry['main_rss_mib']:6.0f} MiB  "
                  f"tree PSS {entry['tree_pss_mib']:6.0f} MiB  ({entry['processes']} processes)", flush=True)
    STATE.parent.mkdir(parents=True, exist_ok=True)
    meta = json.loads(STATE.read_text()) if STATE.exists() else {}
    commands = sorted(set(meta.get("_meta", {}).get("commands", [])) | {shlex.join(["python", *sys.argv])})
    record_state(STATE, "_meta", {**meta.get("_meta", {}), "commands": commands, "machine": machine(),
                                  "date": today(), "threads": os.environ.get("OMP_NUM_THREADS", "default"),
                                  "workers": os.environ.get("DDKIT_WORKERS", f"default (min(4, {cores}))")})


def render(note: str | None = None) -> None:
    state = json.loads(STATE.read_text())
    meta = state.pop("_meta")
    folders = sorted({v["folder"] for v in state.values()}, key=lambda f: min(v["train_images"] for v in state.values()
                                                                              if v["folder"] == f))
    lines = [
        "## Scale: streamed image folders (issue 16)", "",
        "Commands (each run with `DDKIT_PROGRESS=0` and `OMP_NUM_THREADS=2`, or 1 where the findings say so; a later run of a stage replaces its row): "
        + "; ".join(f"`{c}`" for c in meta.get("commands", [meta.get("command", "")])) + ". "
        "Folders from `scripts/make_image_folder.py` (200 classes, 64×64 JPEG q90). "
        f"Machine: {meta['machine']}. Date: {meta['date']}. Torch threads: {meta['threads']}; decoding workers: "
        f"{meta['workers']}. Every command ran with DDKIT_DATA_MODE=stream.", "",
        "Memory is sampled every 0.2 s from /proc: *main RSS* is the ddkit process alone; *tree PSS* sums the "
        "main process and its decoding workers, counting shared pages once (RSS would count torch's libraries "
        "once per worker). Importing torch alone costs ~500 MiB RSS.", "",
        "| stage | " + " | ".join(f"{f}: wall s | main RSS MiB | tree PSS MiB" for f in folders) + " |",
        "|---|" + "---|---|---|" * len(folders),
    ]
    for stage in STAGES:
        cells = []
        for f in folders:
            e = state.get(f"{f}/{stage}")
            cells.append("— | — | —" if e is None else
                         f"{e['wall']:.0f} | {e['main_rss_mib']:.0f} | {e['tree_pss_mib']:.0f}")
        if any(c != "— | — | —" for c in cells):
            lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    lines += ["", "| folder | train images | test images | index (decode + hash + stats) | decode rate, images/s | "
                  "PIL single core × cores |", "|---|---|---|---|---|---|"]
    for f in folders:
        e = state.get(f"{f}/index")
        if e:
            lines.append(f"| {f} | {e['train_images']} | {e['images'] - e['train_images']} | {e['index_seconds']:.0f} s | "
                         f"{e['decode_rate']:.0f} | {e['pil_single_core']:.0f} × {e['cores']} = "
                         f"{e['pil_single_core'] * e['cores']:.0f} |")
    for pool in (v for k, v in state.items() if k.endswith("/pool-build")):
        task = pool.get("task_folder", pool["folder"])
        lines += ["", f"Pool stages, column {pool['folder']}: the {pool['images']} train images of "
                      f"`{pool.get('pool_folder', pool['folder'])}` (`--from imagefolder:…@train`) built into a pool "
                      f"for the task of {task}, then scored with {task}'s teacher."]
    lines += ["", "Configs: teacher " + " ".join(TEACHER) + "; " + "; ".join(
        f"{k}: {' '.join(v) or 'defaults'}" for k, v in CONFIGS.items()) + "; select: pcoreset-teacher, budget 2000; "
        "evaluate: " + " ".join(EVAL) + " (random-real file)."]
    if note:
        lines += ["", Path(note).read_text().strip()]
    for block in ("scale-manifest", "scale-dedup"):  # scripts/bench_manifest.py's and bench_pool_dedup.py's tables
        kept = re.search(rf"<!-- BEGIN {block} -->.*?<!-- END {block} -->", BENCHMARKS.read_text(), re.S)
        if kept:
            lines += ["", kept.group(0)]
    write_section("scale", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folders", nargs="+", default=[])
    parser.add_argument("--first-folder", default=None,
                        help="the folder whose teacher `teacher-import` imports (default: the first of --folders)")
    parser.add_argument("--pool", default=None, help="a --pool-only folder for the pool stages")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--render", action="store_true")
    parser.add_argument("--note", default=None, help="a file of findings appended to the rendered section")
    args = parser.parse_args()
    if args.folders:
        measure(args)
    if args.render:
        render(args.note)


if __name__ == "__main__":
    main()
