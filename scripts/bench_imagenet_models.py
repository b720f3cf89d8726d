"""The ImageNet-style models at 224 px on this machine's CPU, and `ddkit teacher import` of a
1000-class torchvision checkpoint: what a user planning an INFER / NRR-DD run with these teachers
needs to know about their cost.

- per model: parameters, multiply-accumulates per 224-px image (torch's FlopCounterMode on the meta
  device), eval forward throughput, and the synthesizers' inner step (forward with the BN-statistics
  hooks + backward to the pixels), images/s on one thread (median of `--reps` after a warm-up);
- import: a randomly initialised torchvision ResNet-18 with 1000 classes saved as released (plain
  state dict), imported for a 10-class 224-px image folder with `--checkpoint-classes` (wall time of
  the whole command, the checkpoint's size).

Writes the `imagenet-models` section of BENCHMARKS.md.

    PYTHONPATH=. OMP_NUM_THREADS=1 nice -n 5 python scripts/bench_imagenet_models.py --batch 4 --reps 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import machine, run, today, write_section  # noqa: E402

from ddkit.models import create_model  # noqa: E402
from ddkit.synth.bn_stats import BNStatisticsLoss  # noqa: E402

MODELS = ["resnet18", "tv-resnet18", "tv-mobilenet-v2", "tv-efficientnet-b0"]


def macs(name: str) -> float:
    with torch.device("meta"):
        model = create_model(name, 3, 224, 1000).eval()
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, 224, 224))
    return counter.get_total_flops() / 2


def rate(fn, batch: int, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def model_row(name: str, batch: int, reps: int) -> str:
    model = create_model(name, 3, 224, 1000, seed=0).eval()
    x = torch.rand(batch, 3, 224, 224)

    def forward():
        with torch.no_grad():
            model(x)

    def synth_step():
        pixels = x.clone().requires_grad_(True)
        with BNStatisticsLoss(model) as bn:
            loss = torch.nn.functional.cross_entropy(model(pixels), torch.zeros(batch, dtype=torch.long)) + bn.loss()
        loss.backward()

    params = sum(p.numel() for p in model.parameters())
    return (f"| {name} | {params / 1e6:.2f} | {macs(name) / 1e9:.2f} | {rate(forward, batch, reps):.1f} | "
            f"{rate(synth_step, batch, reps):.1f} |")


def import_row(tmp: Path) -> str:
    import torchvision
    from PIL import Image

    classes = [f"n{i:08d}" for i in range(1000)]
    root = tmp / "folder"
    rng = np.random.default_rng(0)
    kept = classes[::100]  # 10 of the 1000, scattered over the head's rows
    for split, n in (("train", 2), ("test", 2)):
        for name in kept:
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(root / split / name / f"{i}.png")
    (root / "classes.json").write_text(json.dumps(kept))
    (tmp / "wnids.txt").write_text("\n".join(classes) + "\n")
    torch.manual_seed(0)
    ckpt = tmp / "resnet18-random.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), ckpt)
    cmd = [sys.executable, "-m", "ddkit", "teacher", "import", str(ckpt), "--model", "tv-resnet18", "--dataset",
           f"imagefolder:{root}", "--checkpoint-classes", str(tmp / "wnids.txt"), "--source", "random init (benchmark)",
           "--out", str(tmp / "t.safetensors")]
    wall, _ = run(cmd)
    return (f"| tv-resnet18, 1000 → 10 classes by name, 224 px | {ckpt.stat().st_size / 2**20:.1f} MiB | "
            f"{(tmp / 't.safetensors').stat().st_size / 2**20:.1f} MiB | {wall:.1f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [model_row(name, args.batch, args.reps) for name in MODELS]
    with tempfile.TemporaryDirectory() as tmp:
        imported = import_row(Path(tmp))
    body = f"""## ImageNet-style models at 224 px on CPU (issue 16)

`PYTHONPATH=. OMP_NUM_THREADS=1 nice -n 5 python scripts/bench_imagenet_models.py --batch {args.batch} --reps {args.reps}`
— {machine()}, one thread, {today()}; a machine shared with other jobs, so rates are lower bounds.
Images/s are medians of {args.reps} batches of {args.batch} after a warm-up. "Synthesis step" is INFER's and
NRR-DD's inner step: forward with the BN-statistics hooks, cross-entropy + BN loss, backward to the pixels.

| model | params (M) | GMACs / image | eval forward (img/s) | synthesis step (img/s) |
|---|---|---|---|---|
{chr(10).join(rows)}

`resnet18` is ResNet-18-modified (3×3 stride-1 stem, no max-pool), the student of `teacher-paper@1` /
`stored-paper@1`; at 224 px it costs {macs("resnet18") / macs("tv-resnet18"):.0f}× torchvision's ResNet-18, which is why
`teacher-imagenet@1` / `stored-imagenet@1` train `tv-resnet18` instead.

| import (`ddkit teacher import`, whole command) | checkpoint | teacher file | wall |
|---|---|---|---|
{imported}

The wall time includes starting Python, importing torch and torchvision, hashing the checkpoint and
measuring the test accuracy on the folder's 20 test images.
"""
    write_section("imagenet-models", body)
    print(body)


if __name__ == "__main__":
    main()
