"""Peak memory of one MTT iteration: the constant-memory meta-gradient (TESLA) against naive
unrolling, at syn_steps 10 / 20 / 40, on Fashion-MNIST shapes (IPC 10: 100 images 1×28×28, all in
every student step), ConvNet-3 width 32 with instance norm, DSA. Optionally (`--experts-cost`) the
cost of expert training on the full Fashion-MNIST train split through `ddkit experts train`.

Each setting runs in a fresh Python process (torch's allocator keeps freed memory, so one process
cannot measure several settings); the process reports its RSS high-water mark
(`resource.getrusage`, which sees torch's native allocations, unlike tracemalloc) before and after
the iteration. Writes the `mtt-memory` section of BENCHMARKS.md.

    flock /tmp/ddkit-cpu.lock python scripts/bench_mtt_memory.py [--experts-cost]
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import ROOT, machine, run, today, write_section  # noqa: E402

STEPS = (10, 20, 40)
MODES = ("constant", "unrolled")
IPC, CLASSES, SHAPE, WIDTH = 10, 10, (1, 28, 28), 32
EXPERTS, EXPERT_EPOCHS = 2, 1


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(mode: str, syn_steps: int) -> None:
    """One MTT iteration in this (fresh) process; prints a JSON record."""
    import torch

    from ddkit.augment import build_augmentation
    from ddkit.experts import flatten_params, param_layout
    from ddkit.models import create_model
    from ddkit.synth.mtt import META_GRADIENTS, StudentSteps, minibatches

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    model = create_model("convnet", SHAPE[0], SHAPE[1], CLASSES, seed=0, width=WIDTH)
    start = flatten_params(model)
    target = start + 0.01 * torch.randn(start.shape, generator=g)
    n = IPC * CLASSES
    images = torch.randn(n, *SHAPE, generator=g)
    labels = torch.arange(n) // IPC
    augment = build_augmentation("dsa")
    batches = minibatches(n, 0, syn_steps, g)
    params = [augment.sample(torch.Size((n, *SHAPE)), g) for _ in batches]
    steps = StudentSteps(model, param_layout(model), batches, augment, params)
    before = _rss_mib()
    t0 = time.perf_counter()
    res = META_GRADIENTS[mode](steps, images, labels, torch.tensor(0.01), start, target)
    wall = time.perf_counter() - t0
    print(json.dumps({"mode": mode, "syn_steps": syn_steps, "rss_before_mib": before, "rss_peak_mib": _rss_mib(),
                      "seconds": wall, "loss": res.loss, "params": start.numel()}))


def measure() -> list[dict]:
    records = []
    for syn_steps in STEPS:
        for mode in MODES:
            _, out = run([sys.executable, __file__, "--child", mode, str(syn_steps)])
            records.append(json.loads(out.strip().splitlines()[-1]))
            print(records[-1], file=sys.stderr)
    return records


def experts_cost() -> tuple[float, float, str]:
    """Seconds per expert-epoch of `ddkit experts train` on full fashion-mnist, and the command."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "ddkit", "experts", "train", "--dataset", "fashion-mnist", "--model", "convnet",
               "--model-opt", f"width={WIDTH}", "--experts", str(EXPERTS), "--epochs", str(EXPERT_EPOCHS),
               "--out", str(Path(tmp) / "fm.experts.h5")]
        wall, out = run(cmd, env={"DDKIT_PROGRESS": "0", "PYTHONPATH": str(ROOT)})
    per_epoch = float(re.search(r"\(([\d.]+)s per expert-epoch\)", out).group(1))
    shown = "ddkit " + " ".join(cmd[3:-2]) + " --out fm.experts.h5"
    return wall, per_epoch, shown


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=2, metavar=("MODE", "STEPS"))
    parser.add_argument("--experts-cost", action="store_true", help="also time expert training on full fashion-mnist")
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    records = measure()
    by = {(r["mode"], r["syn_steps"]): r for r in records}
    rows = []
    for s in STEPS:
        c, u = by[("constant", s)], by[("unrolled", s)]
        dc, du = c["rss_peak_mib"] - c["rss_before_mib"], u["rss_peak_mib"] - u["rss_before_mib"]
        assert abs(c["loss"] - u["loss"]) <= 1e-4 * abs(u["loss"]), (c, u)
        rows.append(f"| {s} | {c['rss_peak_mib']:.0f} (+{dc:.0f}) | {u['rss_peak_mib']:.0f} (+{du:.0f}) | "
                    f"{du / max(dc, 1):.1f}× | {c['seconds']:.2f} | {u['seconds']:.2f} |")
    p = records[0]["params"]
    lines = [
        "### MTT: memory of one iteration, constant-memory meta-gradient vs unrolled (issue 13)",
        "",
        f"Machine: {machine()}. Date: {today()}. Script: `flock /tmp/ddkit-cpu.lock python scripts/bench_mtt_memory.py"
        f"{' --experts-cost' if args.experts_cost else ''}`. One fresh process per cell, 1 torch thread; Fashion-MNIST shapes, "
        f"IPC {IPC} ({IPC * CLASSES} synthetic images, all of them in every student step), ConvNet-3 width {WIDTH} with "
        f"instance norm ({p} parameters), DSA (one sampled group per student step). RSS high-water (`getrusage`) in MiB, in brackets the growth during the iteration "
        "(the process's footprint before it, ~imports + data, is the rest).",
        "",
        "| syn_steps | constant (TESLA): peak MiB (+iteration) | unrolled: peak MiB (+iteration) | unrolled / constant growth | constant s | unrolled s |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "Both modes give the same loss and gradients (tests/test_mtt.py checks them equal to 1e-10 in float64). The constant "
        "mode keeps one step's graph at a time and the N+1 parameter vectors; it pays one extra forward and gradient per "
        "step (the recomputation), so it is slower per iteration on a CPU.",
    ]
    body = "\n".join(lines)
    write_section("mtt-memory", body)  # the memory table stands even if the expert run below fails
    if args.experts_cost:
        wall, per_epoch, cmd = experts_cost()
        lines += ["", f"Expert training cost on the full Fashion-MNIST train split (60 000 images, batch 256, plain SGD lr 0.01, DSA): "
                      f"`{cmd}` took {wall:.0f} s wall for {EXPERTS} × {EXPERT_EPOCHS} expert-epochs, "
                      f"**{per_epoch:.1f} s per expert-epoch** (the CLI's own timing, data loading excluded; default torch threads). "
                      f"The paper's buffer (e.g. 5 experts × 50 epochs) would take ≈ {5 * 50 * per_epoch / 3600:.1f} h here."]
        body = "\n".join(lines)
        write_section("mtt-memory", body)
    print(body)


if __name__ == "__main__":
    main()
