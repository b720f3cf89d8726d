"""Train the Fashion-MNIST teachers with `ddkit teacher train` and write their table into
BENCHMARKS.md (section `teachers`). Three BatchNorm teachers of different architectures, as INFER
needs; each row's command reproduces it.

    python scripts/bench_teachers.py [--out runs/teachers] [--epochs 8]
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import machine, pct, run, today, write_section  # noqa: E402

TEACHERS = [
    ("convnet-bn", ["--model-opt", "width=64"]),
    ("resnet8", []),
    ("mobilenet", []),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="runs/teachers")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--dataset", default="fashion-mnist")
    args = parser.parse_args()
    from ddkit.models.teacher import read_teacher_header

    rows = []
    for model, opts in TEACHERS:
        path = Path(args.out) / f"{args.dataset}-{model}.safetensors"
        cmd = ["ddkit", "teacher", "train", "--dataset", args.dataset, "--model", model, *opts,
               "--epochs", str(args.epochs), "--seed", "0", "--out", str(path), "--overwrite"]
        wall, out = run(cmd)
        print(out.strip(), flush=True)
        h = read_teacher_header(path)
        rows.append(f"| {model} {' '.join(opts[1::2])} | {args.epochs} | {h.train['train_size']} | {pct(h.val_accuracy)} | "
                    f"{pct(h.test_accuracy)} | {wall / 60:.1f} | `{shlex.join(cmd)}` |")
    body = "\n".join([
        f"## Teachers on {args.dataset}",
        "",
        f"Trained on the training split minus a deterministic 10% validation split (seed 0); the test split is read",
        "once after training. SGD (lr 0.05, momentum 0.9, nesterov, wd 5e-4), cosine schedule, batch 128,",
        "random crop (pad 4) + horizontal flip. Final-epoch accuracies.",
        "",
        f"Machine: {machine()}. Date: {today()}. Script: `python scripts/bench_teachers.py --epochs {args.epochs}`.",
        "",
        "| model | epochs | train images | val acc (%) | test acc (%) | wall (min) | command |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ])
    write_section("teachers", body)


if __name__ == "__main__":
    main()
