"""Train the Fashion-MNIST teachers with `ddkit teacher train` and write their table into
BENCHMARKS.md (section `teachers`). Three BatchNorm teachers of different architectures, as INFER
needs; each row's command reproduces it.

    python scripts/bench_teachers.py [--out runs/teachers] [--reuse]
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import machine, pct, run, today, write_section  # noqa: E402

# (file name, model, options, epochs): the epochs fit the 2-core CPU budget. MobileNet's depthwise
# convolutions are the slowest per image here: the default width (32) did 1.5 epochs in 56 minutes on
# the shared machine, so the third teacher is a width-8 MobileNet with fewer epochs.
TEACHERS = [
    ("convnet-bn", "convnet-bn", ["--model-opt", "width=32"], 5),
    ("resnet8", "resnet8", [], 5),
    ("mobilenet-w8", "mobilenet", ["--model-opt", "width=8", "--model-opt", "head=128"], 3),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="runs/teachers")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--reuse", action="store_true", help="keep teacher files that exist; report them from their headers")
    parser.add_argument("--models", default=",".join(t[0] for t in TEACHERS), help="comma-separated subset to train/report")
    args = parser.parse_args()
    from ddkit.models.teacher import read_teacher_header

    rows = []
    for name, model, opts, epochs in (t for t in TEACHERS if t[0] in args.models.split(",")):
        path = Path(args.out) / f"{args.dataset}-{name}.safetensors"
        cmd = ["ddkit", "teacher", "train", "--dataset", args.dataset, "--model", model, *opts,
               "--epochs", str(epochs), "--seed", "0", "--out", str(path), "--overwrite"]
        if not (args.reuse and path.exists()):
            _, out = run(cmd)
            print(out.strip(), flush=True)
        h = read_teacher_header(path)
        assert h.train["epochs"] == epochs, f"{path} was trained for {h.train['epochs']} epochs, not {epochs}"
        rows.append(f"| {model} {' '.join(opts[1::2])} | {epochs} | {h.train['train_size']} | {pct(h.val_accuracy)} | "
                    f"{pct(h.test_accuracy)} | {h.train['wall_seconds'] / 60:.1f} | `{shlex.join(cmd)}` |")
    body = "\n".join([
        f"## Teachers on {args.dataset}",
        "",
        "Trained on the training split minus a deterministic 10% validation split (seed 0); the test split is read",
        "once after training. SGD (lr 0.05, momentum 0.9, nesterov, wd 5e-4), cosine schedule, batch 128,",
        "random crop (pad 4) + horizontal flip. Final-epoch accuracies.",
        "",
        f"Machine: {machine()}. Date: {today()}. Script: `python scripts/bench_teachers.py`. Wall times:",
        "training with the 2 cores mostly to itself (`wall_seconds` from each file's header).",
        "",
        "| model | epochs | train images | val acc (%) | test acc (%) | wall (min) | command |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ])
    write_section("teachers", body)


if __name__ == "__main__":
    main()
