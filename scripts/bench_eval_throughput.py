"""Evaluator throughput: `ddkit evaluate --seeds 5` on an IPC-10 set vs five sequential runs of a
plain PyTorch loop (DataLoader + per-sample torchvision transforms, as the reference repositories
train students), same student, same steps, same batch size — measured side by side in one run.
Also: student training throughput as a fraction of this machine's measured fp32 matmul throughput.

    python scripts/bench_eval_throughput.py [--steps 300] [--seeds 5]

Writes the `eval-throughput` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import machine, today, write_section  # noqa: E402

from ddkit.data import load_dataset  # noqa: E402
from ddkit.data.base import class_balanced_indices  # noqa: E402
from ddkit.evaluate import get_protocol  # noqa: E402
from ddkit.evaluate.trainer import StudentData, train_students  # noqa: E402
from ddkit.models import create_model  # noqa: E402
from ddkit.seeding import derive_seed  # noqa: E402

OURS = "ddkit, default (on a CPU: seeds one at a time)"


def matmul_gflops(n: int = 2048, repeats: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def flops_per_image(protocol, info) -> float:
    """Forward+backward FLOPs of one training image of the protocol's student (torch's counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    c, h, _ = info.image_shape
    model = create_model(protocol.student, c, h, info.num_classes, **protocol.student_kwargs)
    x = torch.randn(64, c, h, h)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), torch.zeros(64, dtype=torch.long)).backward()
    return counter.get_total_flops() / 64


def reference_loop(protocol, subset, test, seed: int, num_workers: int) -> float:
    """The usual way: PIL images, per-sample transforms, a DataLoader; SGD as the protocol says."""
    import torchvision.transforms as T
    from PIL import Image

    mean, std = subset.info.normalization.mean, subset.info.normalization.std
    transform = T.Compose([T.RandomCrop(28, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    images = [Image.fromarray(img[0].numpy()) for img in subset.images]
    labels = subset.labels.tolist()

    class PILDataset(torch.utils.data.Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return transform(images[i]), labels[i]

    torch.manual_seed(seed)
    loader = torch.utils.data.DataLoader(PILDataset(), batch_size=protocol.batch_size, shuffle=True,
                                         num_workers=num_workers, drop_last=True, persistent_workers=num_workers > 0)
    c, h, _ = subset.info.image_shape
    model = create_model(protocol.student, c, h, subset.num_classes, seed=derive_seed(seed, "student"), **protocol.student_kwargs)
    opt = torch.optim.SGD(model.parameters(), lr=protocol.optim.lr, momentum=protocol.optim.momentum,
                          weight_decay=protocol.optim.weight_decay, nesterov=True)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [protocol.steps // 2, protocol.steps * 3 // 4], 0.1)
    step = 0
    while step < protocol.steps:
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
            step += 1
            if step == protocol.steps:
                break
    model.eval()
    test_loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(test.normalized(), test.labels), batch_size=1000)
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in test_loader)
    return correct / len(test)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    protocol = get_protocol("hard-cpu").with_overrides(steps=args.steps)
    train = load_dataset(args.dataset, "train")
    subset = train.subset(class_balanced_indices(train, args.ipc, 0))
    seeds = list(range(args.seeds))
    dev = torch.device("cpu")

    gflops_peak = matmul_gflops()
    per_image = flops_per_image(protocol, train.info)

    results = {}
    for label, batched in ((OURS, None), ("ddkit, seeds batched (vmap, `--batched`)", True)):
        start = time.perf_counter()
        data = [StudentData(subset.normalized(), subset.labels)] * len(seeds)
        students = train_students(protocol, data, seeds, train.info, dev, batched=batched)
        train_wall = time.perf_counter() - start
        test = load_dataset(args.dataset, "test")
        accs = students.accuracies(test.normalized(), test.labels)
        results[label] = (time.perf_counter() - start, train_wall, sum(accs) / len(accs))
    test = load_dataset(args.dataset, "test")
    for workers in (0, 2):
        label = f"reference loop, DataLoader num_workers={workers}"
        start = time.perf_counter()
        accs = [reference_loop(protocol, subset, test, s, workers) for s in seeds]
        wall = time.perf_counter() - start
        results[label] = (wall, None, sum(accs) / len(accs))

    # The CLI end to end (process start, data loading and the test pass included), one process with
    # torch's default threads vs `--nproc 2`: one rank per core, one thread each, the seeds shared out.
    spec = f"random:{args.dataset}:{args.ipc}"
    for nproc in (1, 2):
        cmd = ["ddkit", "evaluate", spec, "--protocol", "hard-cpu", "--steps", str(args.steps), "--seeds", str(args.seeds),
               "--no-baseline", "--no-full", "--no-write", "--nproc", str(nproc), "--json"]
        env = {**os.environ, "DDKIT_PROGRESS": "0", **({"OMP_NUM_THREADS": "1"} if nproc > 1 else {})}
        start = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
        card = json.loads(out[out.index("{"):])
        label = f"`{shlex.join(cmd[:2] + ['...', '--nproc', str(nproc)])}` (CLI end to end{', 1 thread per rank' if nproc > 1 else ''})"
        results[label] = (time.perf_counter() - start, None, card["result"]["mean"])

    images = args.steps * protocol.batch_size * len(seeds)
    best_reference = min(v[0] for k, v in results.items() if k.startswith("reference"))
    ours = results[OURS][0]
    rows = []
    for label, (wall, train_wall, acc) in results.items():
        rows.append(f"| {label} | {wall:.1f} | {images / wall:.0f} | {best_reference / wall:.2f}× | {100 * acc:.2f} |")
    train_ips = images / results[OURS][1]
    achieved = train_ips * per_image / 1e9
    body = "\n".join([
        "## Evaluator throughput (issue 3)",
        "",
        f"{args.seeds} seeds of the `hard-cpu` student (ConvNet-3, width 32, instance norm) on a random IPC-{args.ipc} "
        f"{args.dataset} set, {args.steps} steps × batch {protocol.batch_size} per seed, then the {len(test)}-image test "
        "split. Wall time includes the final test evaluation. The reference is the usual student loop: PIL images, "
        "per-sample torchvision `RandomCrop(28, padding=4)` + flip + `ToTensor` + `Normalize`, a shuffled DataLoader, "
        "one seed after another.",
        "",
        f"Machine: {machine()}. Date: {today()}. Command: `python scripts/bench_eval_throughput.py --steps {args.steps} --seeds {args.seeds}`.",
        "",
        "| run | wall (s) | train images/s | speed-up vs best reference | mean test acc (%) |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"Speed-up of `ddkit evaluate --seeds {args.seeds}` (default path) over the best reference variant: **{best_reference / ours:.2f}×**.",
        "",
        f"Student training throughput: {train_ips:.0f} images/s × {per_image / 1e6:.2f} MFLOP per image (forward + backward, "
        f"torch's FLOP counter) = {achieved:.1f} GFLOP/s, i.e. **{100 * achieved / gflops_peak:.0f}%** of this machine's "
        f"fp32 matmul throughput measured in the same run ({gflops_peak:.1f} GFLOP/s, 2048² `torch.mm`, 2 threads).",
    ])
    print(body)
    write_section("eval-throughput", body)


if __name__ == "__main__":
    main()
