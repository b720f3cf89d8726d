"""DM's CPU defaults chosen on the validation split only (never the test split).

The source is Fashion-MNIST's training split minus the deterministic 10% val split
(`ddkit.data.train_val_split`, seed 0). One DM run per (IPC, batch_real) is scored at several iteration
milestones: students are trained on the images as they stand under a registered protocol (the
evaluator's own trainer) and scored on the val split, beside random real images of the same budget
drawn from the same part. Results go to `runs/matching/dm_val_study.json`, which
`scripts/bench_matching.py` renders into BENCHMARKS.md.

    flock /tmp/ddkit-cpu.lock python scripts/dm_val_study.py --ipc 10 --batch-real 64 [--lr-img 1] --milestones 0,100,300,600,1000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ddkit.config import build_config
from ddkit.data import load_dataset
from ddkit.data.base import class_balanced_indices, train_val_split
from ddkit.evaluate import get_protocol
from ddkit.evaluate.card import mean_std
from ddkit.evaluate.trainer import StudentData, train_students
from ddkit.fileio import atomic_output
from ddkit.synth.dm import DMConfig, initial_state, optimize


def val_accuracy(protocol, images, labels, seeds, info, val) -> list[float]:
    """Final-step val accuracy of one student per seed trained on normalized `images`."""
    data = [StudentData(images, labels) for _ in seeds]
    students = train_students(protocol, data, seeds, info, torch.device("cpu"), [])
    return students.accuracies(val.normalized(), val.labels)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--batch-real", type=int, default=64)
    parser.add_argument("--lr-img", type=float, default=1.0)
    parser.add_argument("--milestones", default="0,100,300,600,1000")
    parser.add_argument("--protocol", default="hard-cpu@1")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="runs/matching/dm_val_study.json")
    args = parser.parse_args()
    seeds = list(range(args.seeds))
    milestones = sorted(int(m) for m in args.milestones.split(","))
    train, val = train_val_split(load_dataset(args.dataset, "train"), 0.1, seed=0)
    info = train.info
    protocol = get_protocol(args.protocol)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def record(key, entry):
        merged = {**(json.loads(out.read_text()) if out.exists() else {}), key: entry}  # another lane may have written
        with atomic_output(out, overwrite=True) as tmp:
            tmp.write_text(json.dumps(merged, indent=1))
        print(key, json.dumps(entry), flush=True)

    done = json.loads(out.read_text()) if out.exists() else {}
    base_key = f"random-real ipc{args.ipc} {protocol.id}"
    if base_key not in done:
        accs = []
        for s in seeds:  # one random subset per seed, as the evaluator's baseline does
            part = train.subset(class_balanced_indices(train, args.ipc, s, salt="evaluation-baseline"))
            accs += val_accuracy(protocol, part.normalized(), part.labels, [s], info, val)
        record(base_key, {"val_accuracies": accs, "mean": mean_std(accs)[0], "std": mean_std(accs)[1]})

    config = build_config(DMConfig, {"iterations": milestones[-1], "batch_real": args.batch_real, "lr_img": args.lr_img})
    state, picked = initial_state(train, args.ipc, config, 0, torch.device("cpu"))
    labels = picked.labels
    elapsed, losses = 0.0, []
    for milestone in milestones:
        start = time.perf_counter()
        losses += [float(t.sum()) for t in optimize(train, state, config, 0, torch.device("cpu"), stop=milestone)]
        elapsed += time.perf_counter() - start
        lr = "" if args.lr_img == 1.0 else f" lr_img{args.lr_img:g}"
        key = f"dm ipc{args.ipc} batch_real{args.batch_real}{lr} iterations{milestone} {protocol.id}"
        if key in done:
            continue
        accs = val_accuracy(protocol, state.images.clone(), labels, seeds, info, val)
        record(key, {"val_accuracies": accs, "mean": mean_std(accs)[0], "std": mean_std(accs)[1],
                     "synthesis_seconds": elapsed, "loss_last10": sum(losses[-10:]) / max(1, len(losses[-10:]))})


if __name__ == "__main__":
    main()
