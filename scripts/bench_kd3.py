"""KD³ on a distribution-shifted Fashion-MNIST "web pool" (no crawl is reachable here, so the pool
is built from what is): Fashion-MNIST train images under strong style shifts (contrast, gamma,
inversion, blur, elastic; kornia), out-of-distribution images (scikit-learn's handwritten digits,
ddkit's procedural gratings, noise), and planted exact and lightly perturbed copies of TEST images
to check the contamination filter. The teacher was trained on the clean Fashion-MNIST train set;
the students only ever see the (deduplicated) pool, never a label.

Steps: build the pool → `dedup_pool` against the Fashion-MNIST test set (how many planted copies it
caught, how many other samples it dropped) → for each variant and seed, train a KD³ student on the
deduplicated pool and report its final-epoch Fashion-MNIST test accuracy and how many in- and
out-of-distribution samples the selection kept at the end. Variants (one code path, config
switches): plain KD (KL) on the whole pool; KD on the teacher-confidence-filtered pool; KD³ full;
KD³ without each part. Progress is saved per run (JSON), so an interrupted run resumes.

    flock /tmp/ddkit-cpu.lock python scripts/bench_kd3.py --smoke            # minutes: pipeline check, no table
    flock /tmp/ddkit-cpu.lock python scripts/bench_kd3.py --teacher runs/teachers/fashion-mnist-resnet8.safetensors
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import machine, pct, today, write_section

from ddkit.data import load_dataset
from ddkit.data.poolfile import load_pool, read_aside, read_dedup_record
from ddkit.models.teacher import load_teacher
from ddkit.pools.build import PoolPart, build_pool
from ddkit.pools.dedup import dedup_pool
from ddkit.seeding import generator
from ddkit.selectors.kd3 import KD3Config, train_kd3
from ddkit.training import accuracy, pick_device

KD = dict(selection="none", share_classifier=False, kl_weight=1.0, feature_alignment=False, mix_distribution=False)
VARIANTS = {
    "plain KD (KL), whole pool": KD,
    "KD (KL), teacher-confidence-filtered pool": dict(KD, selection="teacher"),
    "KD³ full": {},
    "KD³ − dynamic selection (whole pool)": dict(selection="none"),
    "KD³ − classifier sharing (own head + KL)": dict(share_classifier=False, kl_weight=1.0),
    "KD³ − logit-distance weights": dict(weighted_alignment=False),
    "KD³ − MixDistribution": dict(mix_distribution=False),
}
IN_DISTRIBUTION = ("fmnist-shifted",)
PLANTED = ("test-exact", "test-near")
SHIFTS = ("contrast", "gamma", "inversion", "blur", "elastic")


def style_shift(x: torch.Tensor, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """One strong style shift per image (float [0, 1], N×1×H×W), chosen and parameterized from the seed."""
    import kornia

    g = generator(seed, "bench-kd3-shift")
    kind = torch.randint(len(SHIFTS), (len(x),), generator=g)
    out = x.clone()
    for k, name in enumerate(SHIFTS):
        idx = torch.nonzero(kind == k).flatten()
        if not len(idx):
            continue
        v = x[idx]
        if name == "contrast":  # squash contrast around a random grey level
            scale = 0.25 + 0.25 * torch.rand(len(v), 1, 1, 1, generator=g)
            level = 0.3 + 0.4 * torch.rand(len(v), 1, 1, 1, generator=g)
            v = level + scale * (v - v.mean((2, 3), keepdim=True))
        elif name == "gamma":
            gamma = torch.where(torch.rand(len(v), 1, 1, 1, generator=g) < 0.5, 0.35, 2.8)
            v = v.clamp_min(1e-6) ** gamma
        elif name == "inversion":
            v = 1.0 - v
        elif name == "blur":
            v = kornia.filters.gaussian_blur2d(v, (7, 7), (1.8, 1.8))
        elif name == "elastic":
            noise = torch.rand(len(v), 2, *v.shape[2:], generator=g) * 2 - 1
            v = kornia.geometry.transform.elastic_transform2d(v, noise, kernel_size=(17, 17), sigma=(4.0, 4.0), alpha=(12.0, 12.0))
        out[idx] = v.clamp(0, 1)
    return out, kind.numpy()


def digits_28() -> torch.Tensor:
    """scikit-learn's 1,797 8×8 handwritten digits (shipped with the package), resized to 28×28."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("scikit-learn is needed for the handwritten-digit OOD images: pip install scikit-learn") from None
    d = torch.from_numpy(load_digits().images).float().div(16.0).unsqueeze(1)
    return F.interpolate(F.pad(d, (1, 1, 1, 1)), size=(28, 28), mode="bilinear", align_corners=False).clamp(0, 1)


def build(args, out: Path) -> None:
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    g = generator(args.seed, "bench-kd3-pool")
    pick = torch.randperm(len(train), generator=g)[: args.shifted]
    shifted, kinds = style_shift(train.pixels(pick), args.seed)
    ood_digits = digits_28()[: args.digits]
    grat = load_dataset("procedural", "train").pixels()
    gratings = F.interpolate(grat, size=(28, 28), mode="bilinear", align_corners=False)[: args.gratings].clamp(0, 1)
    smooth = F.interpolate(torch.rand(args.noise, 1, 7, 7, generator=g), size=(28, 28), mode="bicubic", align_corners=False)
    noise = torch.cat([torch.rand(args.noise - args.noise // 2, 1, 28, 28, generator=g), smooth[: args.noise // 2]]).clamp(0, 1)
    plant = torch.randperm(len(test), generator=g)[: args.planted]
    half = args.planted // 2
    exact = test.images[plant[:half]]
    x = test.pixels(plant[half:])
    near = (x ** 1.05 + 0.004 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    parts = [PoolPart("fmnist-shifted", shifted, train.labels[pick], train.ids[pick]),
             PoolPart("digits", ood_digits), PoolPart("gratings", gratings), PoolPart("noise", noise),
             PoolPart("test-exact", exact, test.labels[plant[:half]], test.ids[plant[:half]]),
             PoolPart("test-near", near, test.labels[plant[half:]], test.ids[plant[half:]])]
    build_pool(out, parts, train.info, name="fmnist-webpool", overwrite=True,
               provenance={"script": "scripts/bench_kd3.py", "seed": args.seed, "shift_kinds": list(SHIFTS),
                           "shift_counts": np.bincount(kinds, minlength=len(SHIFTS)).tolist()})


def run_variant(name: str, overrides: dict, seed: int, args, pool, teacher, test, origin_of_id: dict, device) -> dict:
    cfg = KD3Config(**{**args.base, **overrides})
    start = time.perf_counter()
    student, history, stats = train_kd3(pool.normalized(), teacher, cfg, seed, device)
    wall = time.perf_counter() - start
    acc = accuracy(student.to(device).eval(), test.normalized().to(device), test.labels.to(device))
    kept_ids = pool.ids.numpy()[stats["kept"]]
    kept_origins = [origin_of_id[int(i)] for i in kept_ids]
    return {"variant": name, "seed": seed, "config": asdict(cfg), "test_accuracy": acc, "wall_seconds": round(wall, 1),
            "kept_total": len(kept_ids), "kept_in_distribution": sum(o in IN_DISTRIBUTION for o in kept_origins),
            "kept_out_of_distribution": sum(o not in IN_DISTRIBUTION for o in kept_origins),
            "selected_per_epoch": [h["selected"] for h in history]}


def state_commands(work: Path, command: str) -> list[str]:
    """The commands that produced the results in `work`, this one appended if new."""
    path = work / "commands.json"
    commands = json.loads(path.read_text()) if path.exists() else []
    if command not in commands:
        commands.append(command)
        path.write_text(json.dumps(commands, indent=1))
    return commands


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--teacher", default="runs/teachers/fashion-mnist-convnet-bn.safetensors")
    parser.add_argument("--smoke", action="store_true", help="tiny pool, 2 epochs, 1 seed; writes no BENCHMARKS.md table")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--shifted", type=int, default=20000)
    parser.add_argument("--digits", type=int, default=1797)
    parser.add_argument("--gratings", type=int, default=400)
    parser.add_argument("--noise", type=int, default=1000)
    parser.add_argument("--planted", type=int, default=400)
    parser.add_argument("--threshold", type=float, default=0.1)
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--student-width", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--variants", default="all", help="comma-separated variant indices (0-based) or all")
    parser.add_argument("--seed", type=int, default=0, help="pool-building seed")
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-table", action="store_true", help="write report.md in the workdir only, not BENCHMARKS.md")
    args = parser.parse_args()
    if args.smoke:
        args.seeds, args.epochs, args.shifted, args.digits, args.gratings, args.noise, args.planted = 1, 2, 600, 100, 50, 50, 40
        args.student_width = 8
    work = Path(args.workdir or ("runs/bench_kd3-smoke" if args.smoke else "runs/bench_kd3"))
    work.mkdir(parents=True, exist_ok=True)
    args.base = dict(epochs=args.epochs, batch_size=args.batch_size, student=args.student, student_width=args.student_width)
    device = pick_device(args.device)

    raw, clean = work / "pool.pool.h5", work / "pool.dedup.pool.h5"
    if not raw.exists():
        build(args, raw)
    report_path = work / "dedup.json"
    if not clean.exists():
        report = dedup_pool(raw, args.teacher, clean, test_dataset="fashion-mnist", threshold=args.threshold, overwrite=True,
                            detector="teacher")  # the detector its recorded numbers were measured with
        report_path.write_text(json.dumps(report, indent=1))
    report = json.loads(report_path.read_text())
    aside = read_aside(raw)
    origin_of_id = dict(zip(aside["ids"].tolist(), aside["origin_name"].tolist()))
    record = read_dedup_record(clean)
    dropped = [origin_of_id[int(i)] for i in record["dropped_ids"]]
    counts = {o: int(n) for o, n in zip(aside["origins"], np.bincount(aside["origin"], minlength=len(aside["origins"])))}
    dropped_by_origin = {o: dropped.count(o) for o in aside["origins"]}

    teacher = load_teacher(args.teacher, device)
    test = load_dataset("fashion-mnist", "test")
    pool = load_pool(clean)
    results_path = work / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else []
    done = {(r["variant"], r["seed"]) for r in results}
    names = list(VARIANTS) if args.variants == "all" else [list(VARIANTS)[int(i)] for i in args.variants.split(",")]
    for name in names:
        for seed in range(args.seeds):
            if (name, seed) in done:
                continue
            print(f"[{time.strftime('%H:%M:%S')}] {name}, seed {seed}", flush=True)
            results.append(run_variant(name, VARIANTS[name], seed, args, pool, teacher, test, origin_of_id, device))
            results_path.write_text(json.dumps(results, indent=1))
            print(f"    test accuracy {100 * results[-1]['test_accuracy']:.2f}%, kept {results[-1]['kept_total']}", flush=True)

    lines = [f"## KD³ on a shifted Fashion-MNIST web pool ({'SMOKE — not a benchmark' if args.smoke else today()}{', preliminary' if args.no_table else ''})", "",
             f"Machine: {machine()}. Teacher `{args.teacher}` (clean Fashion-MNIST train; recorded test accuracy "
             f"{pct(teacher.header.test_accuracy or float('nan'))}%). Pool before dedup: "
             + ", ".join(f"{o} {n}" for o, n in counts.items()) + ".", "",
             f"Dedup (`dedup_pool`, {report['embedding']}, threshold {report['threshold']:g}, against the Fashion-MNIST test set): "
             f"dropped {report['dropped_test_contamination']} as test contamination and {report['dropped_in_pool_duplicates']} "
             f"in-pool near-duplicates. Planted test copies caught: exact {dropped_by_origin.get('test-exact', 0)}/{counts.get('test-exact', 0)}, "
             f"lightly perturbed {dropped_by_origin.get('test-near', 0)}/{counts.get('test-near', 0)}; other samples dropped: "
             + ", ".join(f"{o} {dropped_by_origin[o]}" for o in aside["origins"] if o not in PLANTED) + ".", "",
             f"Students: kd3-student ({args.student} width {args.student_width} + projector + head), {args.epochs} epochs, batch "
             f"{args.batch_size}, final-epoch Fashion-MNIST test accuracy, mean ± std over seeds; kept = samples the final "
             "selection pass keeps (in-distribution = shifted Fashion-MNIST; out = digits, gratings, noise).", "",
             "| variant | test acc. (%) | seeds | kept ID | kept OOD | wall s/run |", "|---|---|---|---|---|---|"]
    for name in VARIANTS:  # every variant measured so far (a run may have measured only some of them)
        rs = [r for r in results if r["variant"] == name]
        if not rs:
            continue
        acc = np.array([r["test_accuracy"] for r in rs])
        lines.append(f"| {name} | {pct(acc.mean(), acc.std(ddof=1) if len(acc) > 1 else 0.0)} | {len(rs)} | "
                     f"{np.mean([r['kept_in_distribution'] for r in rs]):.0f} | {np.mean([r['kept_out_of_distribution'] for r in rs]):.0f} | "
                     f"{np.mean([r['wall_seconds'] for r in rs]):.0f} |")
    commands = state_commands(work, shlex.join(["python", "scripts/bench_kd3.py", *sys.argv[1:]]))
    lines += ["", "Commands (in order; each run resumes from the results file of the previous ones):", "",
              *(f"- `{c}`" for c in commands)]
    text = "\n".join(lines)
    (work / "report.md").write_text(text + "\n")
    print(text)
    if not (args.smoke or args.no_table):
        write_section("kd3", text)


if __name__ == "__main__":
    main()
