"""Why INFER+Dyn loses to static labels here: what the teacher ensemble says on the student's views.

No student is trained and no test image is read. For the INFER instances synthesized on the train
part of the val split (`scripts/infer_val_study.py`'s cache) and for random real images of the same
budget from the same part, the script draws the student's crop-flip + mixup views (stored-cpu's and
dynamic-cpu's augmentation, one λ per batch) and compares, per kind of instance (real base image,
UFC-composed image, random real image):
- how often the ensemble's argmax on the clean instance / on a crop-flip view is the instance's class;
- the ensemble's logit margin (top-1 minus top-2) on clean instances and on views;
- on mixup views, the KL at T between the static target (stored logits mixed with λ) and the dynamic
  one (the ensemble on the mixed view), and how often each target's argmax is the view's λ-majority class.
Writes `runs/infer/label_diagnostics.json` and prints a Markdown table.

    python scripts/infer_label_diagnostics.py --cache runs/infer/val_study/ipc10-M3-base.npz
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ddkit.augment import build_augmentation, build_mix
from ddkit.data import load_dataset
from ddkit.data.base import class_balanced_indices, train_val_split
from ddkit.evaluate.sources import ensemble_logits
from ddkit.models.teacher import load_teacher
from ddkit.synth.infer import real_per_class

TEACHERS = ["convnet-bn", "resnet8", "mobilenet-w8"]


def margin(logits: torch.Tensor) -> torch.Tensor:
    top = logits.topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


def kl_rows(p_logits: torch.Tensor, q_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(p/T) ‖ softmax(q/T)) per row."""
    p = torch.log_softmax(p_logits / temperature, 1)
    q = torch.log_softmax(q_logits / temperature, 1)
    return (p.exp() * (p - q)).sum(1)


def study(name: str, images: torch.Tensor, labels: torch.Tensor, static: torch.Tensor, kinds: np.ndarray, teachers,
          views: int, temperature: float, seed: int) -> dict:
    """Statistics per kind of instance; `images` normalized, `static` the stored (clean) logits."""
    augment = build_augmentation("crop-flip")
    mix = build_mix("mixup")
    generator = torch.Generator().manual_seed(seed)
    clean = ensemble_logits(images, teachers)
    rows = {kind: {"clean_correct": [], "clean_margin": [], "view_correct": [], "view_margin": [],
                   "kl_static_dynamic": [], "static_majority": [], "dynamic_majority": []} for kind in np.unique(kinds)}
    for kind in rows:
        sel = torch.from_numpy(kinds == kind)
        rows[kind]["clean_correct"].append((clean[sel].argmax(1) == labels[sel]).float())
        rows[kind]["clean_margin"].append(margin(clean[sel]))
    for _ in range(views):
        view = augment(images, generator)
        view_logits = ensemble_logits(view, teachers)
        params = mix.sample(view.shape, generator)
        mixed = mix.apply(view, params)
        lam, perm = float(params["lam"]), params["perm"]
        dynamic = ensemble_logits(mixed, teachers)
        static_mixed = lam * static + (1 - lam) * static[perm]
        majority = torch.where(torch.tensor(lam >= 0.5), labels, labels[perm])
        kl = kl_rows(static_mixed, dynamic, temperature)
        for kind in rows:
            sel = torch.from_numpy(kinds == kind)
            rows[kind]["view_correct"].append((view_logits[sel].argmax(1) == labels[sel]).float())
            rows[kind]["view_margin"].append(margin(view_logits[sel]))
            rows[kind]["kl_static_dynamic"].append(kl[sel])
            rows[kind]["static_majority"].append((static_mixed[sel].argmax(1) == majority[sel]).float())
            rows[kind]["dynamic_majority"].append((dynamic[sel].argmax(1) == majority[sel]).float())
    out = {}
    for kind, stats in rows.items():
        out[f"{name}: {kind}"] = {"count": int((kinds == kind).sum()),
                                  **{key: float(torch.cat(values).mean()) for key, values in stats.items()}}
    return out


def markdown_table(results: dict) -> list[str]:
    rows = ["| instances | count | clean: ensemble correct | clean margin | crop-flip view: correct | view margin | "
            "mixup view: KL(static‖dynamic) at T | static target = λ-majority | dynamic target = λ-majority |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        rows.append(f"| {name} | {r['count']} | {100 * r['clean_correct']:.1f}% | {r['clean_margin']:.1f} | "
                    f"{100 * r['view_correct']:.1f}% | {r['view_margin']:.1f} | {r['kl_static_dynamic']:.4f} | "
                    f"{100 * r['static_majority']:.1f}% | {100 * r['dynamic_majority']:.1f}% |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--teachers-dir", default="runs/teachers")
    parser.add_argument("--cache", default="runs/infer/val_study/ipc10-M3-base.npz")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--views", type=int, default=20)
    parser.add_argument("--temperature", type=float, default=30.0)
    parser.add_argument("--out", default="runs/infer/label_diagnostics.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    teachers = [load_teacher(Path(args.teachers_dir) / f"{args.dataset}-{t}.safetensors") for t in TEACHERS]
    train, _ = train_val_split(load_dataset(args.dataset, "train"), 0.1, seed=0)
    info = train.info
    with np.load(args.cache, allow_pickle=False) as z:
        pixels, labels, logits = (torch.from_numpy(z[k]) for k in ("pixels", "labels", "logits"))
    k = real_per_class(args.ipc, info.num_classes, len(teachers))
    kinds = np.array(["INFER real base"] * (k * info.num_classes) + ["INFER UFC-composed"] * (len(labels) - k * info.num_classes))
    results = study("INFER", info.normalization.apply(pixels), labels, logits, kinds, teachers, args.views, args.temperature, 0)
    part = train.subset(class_balanced_indices(train, args.ipc, 0, salt="evaluation-baseline"))
    real = part.normalized()
    real_static = ensemble_logits(real, teachers)
    results.update(study("random real", real, part.labels, real_static, np.array(["images"] * len(part.labels)), teachers,
                         args.views, args.temperature, 0))
    Path(args.out).write_text(json.dumps({"views": args.views, "temperature": args.temperature, "cache": args.cache,
                                          "results": results}, indent=1))
    print("\n".join(markdown_table(results)))

if __name__ == "__main__":
    main()
