"""Synthesizers on a streamed image folder: peak memory at two folder sizes, wall time, and the check
that every file equals the one made from the same folder held in memory.

A seeded folder of N JPEGs (`--classes` classes, `--image-size` px, colour noise around a class
colour) is written once per size; a randomly initialised BN ConvNet stands in for the teacher and
one expert trained for one epoch for MTT's buffer (memory and equality do not need a good model).
Every (size, method, data mode) runs `ddkit.synth.run_synthesizer` in a fresh Python process,
watched by `benchlib.run_watched` (peak RSS of the process, peak PSS of its tree: the decoding
workers included, shared pages counted once); the streamed run's content hash is compared with the
in-memory run's. Writes the `stream-synth` section of BENCHMARKS.md.

    OMP_NUM_THREADS=1 flock /tmp/ddkit-cpu.lock python scripts/bench_stream_synth.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import machine, run, run_watched, today, write_section  # noqa: E402

METHODS = {  # small runs that still make every pass each method makes over the source
    "random-real": {},
    "herding": {},
    "dm": {"iterations": 20, "batch_real": 64},
    "infer": {"iterations": 20},
    "nrr-dd": {"mipc": 100, "iterations": 20},
    "mtt": {"iterations": 5, "syn_steps": 5, "max_start_epoch": 0, "expert_epochs": 1},
}
IPC = 10


def make_folder(root: Path, n: int, classes: int, size: int, seed: int = 0) -> Path:
    """N JPEGs in ROOT/train/<class>/ (and 2 per class in test/), written once; the class map."""
    import numpy as np
    from PIL import Image

    from ddkit.data.imagefolder import write_class_map

    names = [f"c{c:03d}" for c in range(classes)]
    if (root / "classes.json").exists():
        return root
    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 216, (classes, 3))
    for split, per_class in (("train", n // classes), ("test", 2)):
        for c, name in enumerate(names):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                px = np.clip(rng.normal(colours[c], 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(px).save(folder / f"{i:06d}.jpg", quality=90)
    write_class_map(root, names)
    return root


def child(method: str, folder: str, teacher: str, experts: str, out: str) -> None:
    """One synthesis in this fresh process; prints a JSON record."""
    import torch

    from ddkit.synth import run_synthesizer

    torch.set_num_threads(1)
    config = dict(METHODS[method], **({"experts": experts} if method == "mtt" else {}))
    t0 = time.perf_counter()
    digest = run_synthesizer(method, f"imagefolder:{folder}", [] if method == "mtt" else [teacher], IPC, config,
                             seed=0, out=out, overwrite=True)
    wall = time.perf_counter() - t0
    print(json.dumps({"digest": digest, "wall": wall}))


def prepare(root: Path, n: int, classes: int, size: int) -> tuple[Path, str, str]:
    """The folder, a random BN teacher for it and a one-epoch expert (made in memory mode)."""
    import torch

    from ddkit.data import load_dataset
    from ddkit.experts import ExpertTraining, train_experts
    from ddkit.models import create_model
    from ddkit.models.teacher import save_teacher

    folder = make_folder(root / f"folder-{n}", n, classes, size)
    teacher, experts = root / f"teacher-{n}.safetensors", root / f"experts-{n}.experts.h5"
    os.environ["DDKIT_DATA_MODE"] = "stream"
    if not teacher.exists():
        info = load_dataset(f"imagefolder:{folder}", "train").info
        torch.manual_seed(0)
        save_teacher(teacher, create_model("convnet-bn", 3, size, classes, seed=0, width=16).eval(), info)
    if not experts.exists():
        train_experts(experts, f"imagefolder:{folder}", "convnet", {"width": 16}, 1, ExpertTraining(epochs=1), seed=0)
    return folder, str(teacher), str(experts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[3000, 12000])
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "ddkit-bench-stream-synth"))
    parser.add_argument("--child", nargs=5, metavar=("METHOD", "FOLDER", "TEACHER", "EXPERTS", "OUT"))
    parser.add_argument("--prepare", type=int, metavar="N")
    args = parser.parse_args()
    root = Path(args.workdir)
    if args.child:
        child(*args.child)
        return
    if args.prepare:
        print(json.dumps([str(p) for p in prepare(root, args.prepare, args.classes, args.image_size)]))
        return
    root.mkdir(parents=True, exist_ok=True)
    env = {"OMP_NUM_THREADS": "1", "DDKIT_PROGRESS": "0", "DDKIT_CACHE": str(root / "cache"), "DDKIT_WORKERS": "2"}
    rows = []
    for n in args.sizes:
        _, out = run([sys.executable, __file__, "--prepare", str(n), "--workdir", str(root), "--classes",
                      str(args.classes), "--image-size", str(args.image_size)], env=env)
        folder, teacher, experts = json.loads(out.strip().splitlines()[-1])
        for method in args.methods:
            got = {}
            for mode in ("memory", "stream"):
                cmd = [sys.executable, __file__, "--child", method, str(folder), teacher, experts,
                       str(root / f"{method}-{n}-{mode}.ddk.h5")]
                watched = run_watched(cmd, env={**env, "DDKIT_DATA_MODE": mode})
                got[mode] = {**json.loads(watched["stdout"].strip().splitlines()[-1]),
                             "rss": watched["main_rss_mib"], "pss": watched["tree_pss_mib"]}
                print(n, method, mode, got[mode], flush=True)
            same = got["memory"]["digest"] == got["stream"]["digest"]
            rows.append((method, n, got, same))
    mib = args.image_size ** 2 * 3 / 2**20
    lines = [
        "## Synthesizers on a streamed image folder (issue 16)",
        "",
        f"`OMP_NUM_THREADS=1 flock /tmp/ddkit-cpu.lock python scripts/bench_stream_synth.py --sizes "
        f"{' '.join(map(str, args.sizes))}` — {machine()}; {today()}. Seeded folders of N JPEGs "
        f"({args.classes} classes, {args.image_size}×{args.image_size} RGB; the train split is "
        + ", ".join(f"{n * mib:.0f} MiB" for n in args.sizes)
        + " as uint8, 4× that normalized), IPC 10, a random BN ConvNet-3 (width 16) as the teacher, one "
        "one-epoch expert for MTT; configs: "
        + "; ".join(f"{m} {' '.join(f'{k}={v}' for k, v in c.items()) or '(defaults)'}" for m, c in METHODS.items()
                    if m in args.methods)
        + ". Each run is a fresh process (`DDKIT_DATA_MODE=memory` or `stream`, 2 decoding workers); wall time "
        "is the synthesis alone, RSS the process's peak, PSS the peak of its tree (the workers included, "
        "shared pages once), sampled every 0.2 s (torch and the model included). \"same file\": the streamed "
        "file's content_sha256 equals the in-memory one's.",
        "",
        "| method | N | memory: wall s | memory: RSS MiB | stream: wall s | stream: RSS MiB | stream: tree PSS MiB "
        "| same file |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for method, n, got, same in rows:
        m, s = got["memory"], got["stream"]
        lines.append(f"| {method} | {n} | {m['wall']:.1f} | {m['rss']:.0f} | {s['wall']:.1f} | {s['rss']:.0f} "
                     f"| {s['pss']:.0f} | {'yes' if same else '**no**'} |")
    write_section("stream-synth", "\n".join(lines))
    if not all(same for *_, same in rows):
        raise SystemExit("a streamed file differs from the in-memory one")


if __name__ == "__main__":
    main()
