"""INFER choices studied on the validation split only (never the test split).

The source is Fashion-MNIST's training split minus the deterministic 10% val split
(`ddkit.data.train_val_split`, seed 0 — the teachers were trained on the same part); students are
trained under a registered protocol by the evaluator's own trainer and scored on the val split.
Each variant is compared with random real images of the same budget drawn from the same part,
labeled the same way by the same teachers. Results go to `runs/infer/val_study.json`, which
`scripts/bench_infer.py` renders into BENCHMARKS.md.

    flock /tmp/ddkit-cpu.lock python scripts/infer_val_study.py --variant base --variant clamp_in_loop=true ...
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ddkit.config import build_config
from ddkit.data import load_dataset
from ddkit.data.base import class_balanced_indices, train_val_split
from ddkit.evaluate import get_protocol
from ddkit.evaluate.card import mean_std
from ddkit.evaluate.trainer import StudentData, train_students
from ddkit.fileio import atomic_output
from ddkit.models import parse_model_options
from ddkit.models.teacher import load_teacher
from ddkit.store.reader import to_unit_float
from ddkit.synth.base import static_labels
from ddkit.synth.infer import Infer, InferConfig, real_per_class

TEACHERS = ["convnet-bn", "resnet8", "mobilenet-w8"]


def student_accuracy(protocol, images, labels, payload, seeds, info, val, teachers):
    scheme = "logits" if payload is not None else None
    data = [StudentData(images, labels, payload, scheme) for _ in seeds]
    students = train_students(protocol, data, seeds, info, torch.device("cpu"), [t.model for t in teachers])
    return students.accuracies(val.normalized(), val.labels)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--teachers-dir", default="runs/teachers")
    parser.add_argument("--teachers", type=int, default=3)
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--protocol", default="stored-cpu@1")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--variant", action="append", default=[], help="'base' or KEY=VALUE[,KEY=VALUE] infer options")
    parser.add_argument("--protocol-opt", action="append", default=[], metavar="KEY=VALUE",
                        help="a derived protocol (renamed, e.g. stored-cpu[steps=3000]) for this study only")
    parser.add_argument("--instances", choices=("all", "real-bases"), default="all",
                        help="real-bases: train on the K·C real base images only (the UFC-composed instances left out)")
    parser.add_argument("--baseline-only", action="store_true", help="only the random-real row at this IPC (no synthesis)")
    parser.add_argument("--out", default="runs/infer/val_study.json")
    args = parser.parse_args()
    seeds = list(range(args.seeds))
    teachers = [load_teacher(Path(args.teachers_dir) / f"{args.dataset}-{t}.safetensors") for t in TEACHERS[: args.teachers]]
    train, val = train_val_split(load_dataset(args.dataset, "train"), 0.1, seed=0)
    info = train.info
    protocol = get_protocol(args.protocol).with_overrides(**parse_model_options(args.protocol_opt))
    cache = Path(args.out).with_suffix("")  # synthesized sets, reused across protocols
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}

    def record(key, entry):
        results[key] = entry
        merged = {**(json.loads(out.read_text()) if out.exists() else {}), key: entry}  # another lane may have written
        with atomic_output(out, overwrite=True) as tmp:
            tmp.write_text(json.dumps(merged, indent=1))
        print(key, json.dumps(entry), flush=True)

    base_key = f"random-real ipc{args.ipc} M{len(teachers)} {protocol.id}"
    if base_key not in results:
        accs = []
        for s in seeds:  # one random subset per seed, as the evaluator's baseline does
            part = train.subset(class_balanced_indices(train, args.ipc, s, salt="evaluation-baseline"))
            images = part.normalized()
            payload = static_labels(teachers, part.pixels(), info.normalization, "cpu") if protocol.label_source == "stored" else None
            accs += student_accuracy(protocol, images, part.labels, payload, [s], info, val, teachers)
        record(base_key, {"val_accuracies": accs, "mean": mean_std(accs)[0], "std": mean_std(accs)[1]})

    for variant in [] if args.baseline_only else args.variant or ["base"]:
        overrides = {} if variant == "base" else parse_model_options(variant.split(","))
        key = f"infer ipc{args.ipc} M{len(teachers)} {protocol.id} {variant}" + (" real bases only" if args.instances == "real-bases" else "")
        if key in results:
            continue
        pixels, labels, logits, meta = synthesized(cache / f"ipc{args.ipc}-M{len(teachers)}-{variant}.npz", train, teachers,
                                                   args.ipc, build_config(InferConfig, overrides, owner="infer"))
        if args.instances == "real-bases":  # the reader's order: the K·C bases first, then the composites
            bases = real_per_class(args.ipc, info.num_classes, len(teachers)) * info.num_classes
            pixels, labels, logits = pixels[:bases], labels[:bases], logits[:bases]
        payload = logits if protocol.label_source == "stored" else None
        accs = student_accuracy(protocol, info.normalization.apply(pixels), labels, payload, seeds, info, val, teachers)
        record(key, {"val_accuracies": accs, "mean": mean_std(accs)[0], "std": mean_std(accs)[1], **meta,
                     "overrides": overrides})


def synthesized(path: Path, train, teachers, ipc: int, cfg: InferConfig):
    """INFER's instances (pixels, labels, static logits) for this variant, synthesized once and cached."""
    if not path.exists():
        start = time.perf_counter()
        dset = Infer().synthesize(train, teachers, ipc, cfg, 0, torch.device("cpu"))
        wall = time.perf_counter() - start
        pixels = Infer.instance_pixels(to_unit_float(dset.stored_images()), dset.composite)
        loss = dset.composite.extra["final_loss"]
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, pixels=pixels.numpy(), labels=dset.instance_labels().numpy(),
                 logits=dset.soft["logits"].values.astype(np.float32),
                 meta=np.array([wall, loss[:, 0].mean(), loss[:, 1].mean()], np.float64))
    with np.load(path, allow_pickle=False) as z:
        wall, ce, bn = (float(v) for v in z["meta"])
        return (torch.from_numpy(z["pixels"]), torch.from_numpy(z["labels"]), torch.from_numpy(z["logits"]),
                {"synthesis_seconds": wall, "final_ce_mean": ce, "final_bn_mean": bn})


if __name__ == "__main__":
    sys.exit(main())
