"""How often a teacher agrees with a distilled file's own labels: per file, the share of its training
instances whose teacher argmax is the instance's class, and the teacher's mean top-1 probability.

A diagnostic for teacher-relabeling protocols (`teacher-cpu`): where the teacher disagrees with a
set's classes, relabeling teaches the student other classes (BENCHMARKS.md `seed-methods-v2`, DM at
IPC 1). No student is trained and no test image is read.

    python scripts/teacher_agreement.py --teacher runs/teachers/fashion-mnist-convnet-bn.safetensors \\
        runs/protocols/files/dm-ipc1.ddk.h5 runs/protocols/files/herding-ipc1.ddk.h5
"""

from __future__ import annotations

import argparse

import torch

from ddkit.evaluate import get_protocol
from ddkit.evaluate.sources import resolve_train_set
from ddkit.models.teacher import load_teacher


def agreement(path: str, teacher) -> tuple[int, float, float]:
    """(instances, share whose teacher argmax is their label, mean top-1 probability) of one file."""
    source = resolve_train_set(path, get_protocol("hard-cpu@2"), [])
    images, labels, _, _ = source.make(0)
    with torch.no_grad():
        probs = torch.softmax(teacher.model.eval()(images), 1)
    return len(labels), float((probs.argmax(1) == labels).float().mean()), float(probs.max(1).values.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    teacher = load_teacher(args.teacher, torch.device("cpu"))
    print("| file | instances | teacher argmax = label (%) | mean top-1 probability |\n|---|---|---|---|")
    for path in args.files:
        n, agree, top1 = agreement(path, teacher)
        print(f"| {path} | {n} | {100 * agree:.0f} | {top1:.2f} |")


if __name__ == "__main__":
    main()
