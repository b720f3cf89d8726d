"""Active learning with a weak teacher on Fashion-MNIST (PCoreSet / ActiveKD, issue 6).

The pool is a seeded random subset of the Fashion-MNIST train split with its labels behind the
oracle; the "zero-shot-like" teacher is a small net trained on a small labeled slice held out of
the pool (its pool logits go through the precomputed-logits file path, as a VLM teacher's would).
1 seed label per class, Q = 10 queries per round, R rounds, 3 seeds, every selector with and without
the distillation terms; each round's labeled set is judged under an evaluation protocol (`--protocol`,
default active-cpu@1, as `ddkit active-learn` does). Each finished run is appended to
runs/pcoreset/runs.jsonl, so an interrupted benchmark resumes where it stopped. Writes the `pcoreset` section of BENCHMARKS.md
and the plot docs/pcoreset-fashion-mnist.png.

    flock /tmp/ddkit-cpu.lock python scripts/bench_pcoreset.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import ROOT, machine, today, write_section  # noqa: E402

from ddkit.data import load_dataset  # noqa: E402
from ddkit.data.base import class_balanced_indices  # noqa: E402
from ddkit.evaluate import get_protocol  # noqa: E402
from ddkit.models import create_model  # noqa: E402
from ddkit.models.teacher import load_teacher, save_teacher  # noqa: E402
from ddkit.pools.logits import load_teacher_logits, save_teacher_logits, teacher_pool_logits  # noqa: E402
from ddkit.seeding import numpy_rng  # noqa: E402
from ddkit.selectors.acquisition import get_rule  # noqa: E402
from ddkit.selectors.active import LoopResult, run_loop, seed_set, split_pool  # noqa: E402
from ddkit.selectors.activekd import ActiveKDConfig  # noqa: E402
from ddkit.training import OptimConfig, TrainConfig, accuracy, train_supervised  # noqa: E402
from ddkit.workflows.active_learning import DEFAULT_PROTOCOL, DEFAULT_RULES, EvaluatedRun, protocol_accuracies  # noqa: E402
from ddkit.workflows.curves import curves, plot_curves, results_table  # noqa: E402

WORK = ROOT / "runs" / "pcoreset"
PLOT = ROOT / "docs" / "pcoreset-fashion-mnist.png"


def make_teacher(train, test, per_class: int, epochs: int, device) -> tuple[Path, list[int]]:
    """A small BN ConvNet trained on `per_class` labeled images per class held out of the pool."""
    slice_pos = class_balanced_indices(train, per_class, 0, salt="pcoreset-teacher-slice")
    path = WORK / f"teacher-{per_class}pc.safetensors"
    if not path.exists():
        data = train.subset(slice_pos)
        model = create_model("convnet-bn", 1, 28, 10, seed=0, width=32)
        cfg = TrainConfig(epochs=epochs, batch_size=64, augmentation="crop-flip",
                          optim=OptimConfig("sgd", lr=0.05, weight_decay=5e-4))
        train_supervised(model, data.normalized(), data.labels, cfg, seed=0, device=device, desc="teacher")
        acc = accuracy(model, test.normalized(), test.labels)
        save_teacher(path, model, train.info, overwrite=True, test_accuracy=acc,
                     train={"images": len(slice_pos), "per_class": per_class, **cfg.to_dict()})
    return path, slice_pos.tolist()


def choose_lr(cfg: ActiveKDConfig, lrs: list[float], pool, logits, val, device) -> tuple[ActiveKDConfig, list[str]]:
    """Pick the learning rate on a validation slice of the train split (outside the pool and the
    teacher's slice; never the test split): mean accuracy over |L| ∈ {10, 100} × distillation on/off."""
    from ddkit.selectors.activekd import student_accuracy, train_student

    cache = WORK / "lr-choice.json"
    key = json.dumps({"cfg": dataclasses.asdict(cfg), "lrs": lrs, "pool": len(pool), "val": len(val)}, sort_keys=True)
    stored = json.loads(cache.read_text()) if cache.exists() else {}
    if stored.get("key") != key:
        scores = {}
        for lr in lrs:
            accs = []
            for n_labeled in (10, 100):
                labeled = class_balanced_indices(pool, n_labeled // pool.num_classes, 0, salt="lr-choice")
                for kd in (True, False):
                    c = dataclasses.replace(cfg, lr=lr, distill=kd)
                    student = train_student(pool.normalized(), labeled, pool.labels.numpy()[labeled], logits, c,
                                            pool.num_classes, 0, 1, device)
                    accs.append(student_accuracy(student, val, c))
            scores[str(lr)] = accs
            print(f"lr {lr}: val accuracies {[round(100 * a, 1) for a in accs]}", flush=True)
        stored = {"key": key, "scores": scores}
        cache.write_text(json.dumps(stored))
    scores = stored["scores"]
    best = max(scores, key=lambda lr: np.mean(scores[lr]))
    rows = [f"| {lr}{' (chosen)' if lr == best else ''} | {' | '.join(f'{100 * a:.1f}' for a in accs)} | {100 * np.mean(accs):.2f} |"
            for lr, accs in scores.items()]
    return dataclasses.replace(cfg, lr=float(best)), rows


def load_runs(path: Path, key: dict) -> dict:
    """Finished runs of this exact setup (pool, teacher, rounds, queries, config)."""
    runs = {}
    if path.exists():
        for line in path.read_text().splitlines():
            d = json.loads(line)
            if any(d.get(field) != value for field, value in key.items()):
                continue
            loop = LoopResult(d["rule"], d["distill"], d["seed"], d["sizes"], d["seconds"], np.array(d["labeled"]),
                              np.array(d["rounds"]), np.array(d["scores"], dtype=float),
                              np.array(d["min_distance"], dtype=float))
            runs[(d["rule"], d["distill"], d["seed"])] = EvaluatedRun(loop, d["accuracies"])
    return runs


def append_run(path: Path, run: EvaluatedRun, meta: dict) -> None:
    loop = run.loop
    record = {"rule": run.rule, "distill": run.distill, "seed": run.seed, "sizes": run.sizes, "accuracies": run.accuracies,
              "seconds": loop.seconds, "labeled": loop.labeled.tolist(), "rounds": loop.rounds.tolist(),
              "scores": [float(v) for v in loop.scores], "min_distance": [float(v) for v in loop.min_distance], **meta}
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def verdicts(data: dict, rules: list[str], kd: bool) -> list[str]:
    """PCoreSet vs each other rule at each |L|: win / tie / loss by 2 standard errors of the difference."""
    if ("pcoreset", kd) not in data:
        return []
    mine = data[("pcoreset", kd)]
    pm, ps, pn = mine.mean, mine.std, mine.seeds
    lines = []
    for other in rules:
        if other == "pcoreset" or (other, kd) not in data:
            continue
        theirs = data[(other, kd)]
        om, os_, on = theirs.mean, theirs.std, theirs.seeds
        se = np.sqrt(ps**2 / pn + os_**2 / on)
        diff = pm - om
        marks = ["W" if d > 2 * s and d > 0 else "L" if d < -2 * s and d < 0 else "·" for d, s in zip(diff[1:], se[1:])]
        lines.append(f"| {other} | {'on' if kd else 'off'} | {' '.join(marks)} | {marks.count('W')} / {marks.count('·')} / "
                     f"{marks.count('L')} | {100 * diff[1:].mean():+.2f} | {100 * diff[-1]:+.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pool-size", type=int, default=10_000)
    parser.add_argument("--teacher-per-class", type=int, default=30)
    parser.add_argument("--teacher-epochs", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rules", default=",".join(DEFAULT_RULES))
    parser.add_argument("--protocol", default=DEFAULT_PROTOCOL, help="evaluation protocol that judges each labeled set")
    parser.add_argument("--config", nargs="*", default=["width=16", "min_steps=200", "augmentation=crop-flip"],
                        help="ActiveKD overrides (KEY=VALUE)")
    parser.add_argument("--lrs", default="0.001,0.003", help="learning rates to choose from on a validation slice")
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--only-seeds", default=None, help="comma-separated seeds this process runs (several processes can share a benchmark)")
    parser.add_argument("--report-only", action="store_true", help="write the section from the runs measured so far")
    parser.add_argument("--smoke", action="store_true", help="check the script: its own work folder, no BENCHMARKS.md/plot")
    args = parser.parse_args()
    global WORK
    if args.smoke:
        WORK = WORK.with_name("pcoreset-smoke")
    torch.manual_seed(0)
    # One torch thread: on this shared 2-vCPU machine two intra-op threads made a student step ~20×
    # slower (spin-waiting OpenMP threads; measured 580 vs 30 ms per step).
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    WORK.mkdir(parents=True, exist_ok=True)
    from ddkit.config import build_config
    from ddkit.models import parse_model_options

    cfg = build_config(ActiveKDConfig, parse_model_options(args.config), owner="ActiveKD")
    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    protocol = get_protocol(args.protocol)

    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    teacher_path, slice_pos = make_teacher(train, test, args.teacher_per_class, args.teacher_epochs, device)
    teacher = load_teacher(teacher_path, device)
    rest = np.setdiff1d(np.arange(len(train)), slice_pos)
    pool = train.subset(np.sort(numpy_rng(0, "pcoreset-bench-pool").choice(rest, args.pool_size, replace=False)))
    logits_path = WORK / f"pool-logits-{args.pool_size}.h5"
    if not logits_path.exists():
        save_teacher_logits(logits_path, teacher_pool_logits(teacher, pool, device).numpy(), pool)
    logits, _ = load_teacher_logits(logits_path, pool)
    teacher_pool_acc = float((logits.argmax(1) == pool.labels).float().mean())
    val_pos = np.sort(numpy_rng(0, "pcoreset-bench-val").choice(np.setdiff1d(rest, pool.ids.numpy()), args.val_size, replace=False))
    cfg, lr_rows = choose_lr(cfg, [float(v) for v in args.lrs.split(",")], pool, logits, train.subset(val_pos), device)
    key = {"pool_size": args.pool_size, "teacher": teacher.header.tensors_sha256[:16], "rounds": args.rounds,
           "queries": args.queries, "config": dataclasses.asdict(cfg), "protocol": protocol.id}
    runs_path = WORK / "runs.jsonl"
    runs = load_runs(runs_path, json.loads(json.dumps(key)))
    cache: dict = {}
    start = time.perf_counter()
    own_seeds = [int(v) for v in args.only_seeds.split(",")] if args.only_seeds else range(args.seeds)
    for seed in own_seeds:
        if args.report_only:
            break
        initial = seed_set(pool, 1, seed)
        for kd in (True, False):
            run_cfg = dataclasses.replace(cfg, distill=kd)
            for rule in rules:
                if (rule, kd, seed) in runs:
                    continue
                view, oracle = split_pool(pool)
                loop = run_loop(view, oracle, initial, get_rule(rule), logits, run_cfg, args.rounds, args.queries, seed, device,
                                cache)
                run = EvaluatedRun(loop, protocol_accuracies([loop], pool, test, protocol, device=device)[0][0])
                runs[(rule, kd, seed)] = run
                append_run(runs_path, run, key)
                print(f"{rule:<17} kd={'on ' if kd else 'off'} seed={seed}: "
                      + " ".join(f"{100 * a:.1f}" for a in run.accuracies)
                      + f"  ({sum(loop.seconds):.0f}s, {time.perf_counter() - start:.0f}s total)", flush=True)

    done = list(runs.values())
    data = {(s.rule, s.distill): s for s in curves(done)}
    seeds_done = {k: s.seeds for k, s in data.items()}
    plot_curves(done, WORK / "accuracy.png", overwrite=True,
                title=f"Fashion-MNIST, pool {args.pool_size}, weak teacher {100 * teacher.header.test_accuracy:.1f}%: "
                      f"accuracy under {protocol.id} vs |L| (solid: KD, dashed: no KD; bands: ±std)")
    if not args.smoke:
        PLOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(WORK / "accuracy.png", PLOT)
    kd_effect = []
    for rule in rules:
        if (rule, True) in data and (rule, False) in data:
            on, off = data[(rule, True)].mean, data[(rule, False)].mean
            kd_effect.append(f"| {rule} | {100 * (on - off).mean():+.2f} | {100 * (on[-1] - off[-1]):+.2f} |")
    total_s = sum(sum(r.loop.seconds) for r in done)
    complete = all(seeds_done.get((r, kd), 0) == args.seeds for r in rules for kd in (True, False))
    progress_note = ", ".join(f"{r}/{'kd' if kd else 'nokd'}: {n} seeds" for (r, kd), n in sorted(seeds_done.items()))
    body = "\n".join([
        "## Active learning with a weak teacher: PCoreSet / ActiveKD on Fashion-MNIST (issue 6)",
        "",
        f"Machine: {machine()}. Date: {today()}. Script: `flock /tmp/ddkit-cpu.lock python scripts/bench_pcoreset.py` "
        f"(runs resume from `runs/pcoreset/runs.jsonl`; torch threads: {args.threads}). Total compute of the runs: "
        f"{total_s / 60:.0f} min.",
        "",
        f"- **Pool:** {args.pool_size:,} images drawn (seeded) from the 60,000 Fashion-MNIST training images, minus the "
        f"teacher's slice; labels hidden behind the oracle (the loop sees a label-free view of the pool and reads a label "
        "only by querying it). Test: the full 10,000-image test split, read only to report each round's accuracy.",
        f"- **Judge:** protocol `{protocol.id}` ({protocol.summary}); one fresh student per seed on each round's "
        "labeled set with its oracle labels; the ActiveKD student below only drives acquisition.",
        f"- **Teacher (weak, \"zero-shot-like\"):** ConvNet-BN width 32 trained on {args.teacher_per_class} labeled images "
        f"per class ({len(slice_pos)} images) held out of the pool, {args.teacher_epochs} epochs: test accuracy "
        f"**{100 * teacher.header.test_accuracy:.2f}%**, {100 * teacher_pool_acc:.2f}% on the pool. Its pool logits go "
        "through the precomputed-logits file (`--teacher-logits`).",
        f"- **Protocol:** 1 seed label per class, {args.queries} queries per round, {args.rounds} rounds, "
        f"{args.seeds} seeds (seed set, student init and batches change with the seed). Acquisition student: ConvNet-3 width "
        f"{cfg.width}, {cfg.norm} norm, dual head, re-initialized every round; AdamW lr {cfg.lr:g} (chosen on val among {args.lrs}; the paper: 1e-3), wd {cfg.weight_decay}, "
        f"{int(100 * cfg.warmup_fraction)}% warm-up then linear decay; batches of {cfg.batch_size} labeled + "
        f"{cfg.batch_size} unlabeled; KD T = {cfg.temperature}, p(x) with α = {cfg.alpha}, β = {cfg.beta}. "
        f"**CPU scale-down, stated plainly:** steps per round = max({cfg.min_steps}, {cfg.steps_per_label:g}·|L|) "
        f"(the paper's 200·|L|/64 = 3.125·|L| with a floor, since a from-scratch student needs more steps to absorb the "
        f"teacher); a width-{cfg.width} student; augmentation `{cfg.augmentation}` (pad-4 crop + flip) instead of "
        "random-resized-crop (kornia's resized crop costs more than the student on this CPU); a small ConvNet from "
        f"scratch instead of an ImageNet-pretrained ResNet-18; a pool of {args.pool_size:,} instead of the full 60k.",
        "- Without distillation the acquisition student trains on the labeled samples only (CE) and predicts with its CE head; "
        "selectors that look at the student (entropy, coreset-features, pcoreset, class-balanced) then see that student.",
        "",
        "" if complete else f"**Incomplete:** not every selector × distillation has all seeds yet; cells average the seeds done ({progress_note}).",
        "",
        f"Final-step test accuracy (%) under {protocol.id}, mean ± sample std over seeds, per labeled-set size:",
        "",
        results_table(done),
        "",
        f"Learning rate chosen on a validation slice of {args.val_size:,} train images (outside the pool and the "
        "teacher's slice; the test split is not used for any choice): val accuracy (%) of one round's student "
        "trained on a class-balanced labeled set.",
        "",
        "| lr | \\|L\\|=10, KD | \\|L\\|=10, no KD | \\|L\\|=100, KD | \\|L\\|=100, no KD | mean |",
        "|---|---|---|---|---|---|",
        *lr_rows,
        "",
        "**Distillation effect** (acquisition student with KD − without, same selector, judged under the same protocol; "
        "percentage points):",
        "",
        "| selector | mean over rounds | at the last round |",
        "|---|---|---|",
        *kd_effect,
        "",
        "**PCoreSet vs each other selector**, per acquisition round (|L| after round 1 … R): W = PCoreSet higher by more "
        f"than 2 standard errors of the difference of means ({args.seeds} seeds), L = lower by more than that, · = tie within noise.",
        "",
        "| other selector | distillation | rounds 1…R | W / tie / L | mean Δ (pp) | Δ at last round (pp) |",
        "|---|---|---|---|---|---|",
        *verdicts(data, rules, True),
        *verdicts(data, rules, False),
        "",
        f"Plot: `docs/{PLOT.name}` (accuracy vs |L|, solid = KD, dashed = no KD).",
    ])
    if not args.smoke:
        write_section("pcoreset", body)
    print(body)


if __name__ == "__main__":
    main()
