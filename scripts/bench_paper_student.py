"""How fast a `hard-paper@2` student trains on this machine, and which way of running it is fastest:
one seed at a time (eager), one at a time through `torch.compile`, or the seeds batched as one vmapped model.

Each variant trains the protocol's student (ConvNet-3 width 128, instance norm, 32-px padded input, DSA per
batch, SGD) for a fixed number of steps on a random class-balanced Fashion-MNIST subset at IPC 1, 10 and 50
(batches of 10, 100 and 256 + 244), after warm-up steps that absorb compilation. It reports time per step
(wall and the process's CPU time, which is less disturbed by other jobs on the machine), projects one whole
student (1000 epochs: 1000 / 1000 / 2000 steps), and gives students per hour on one core. Writes the
`paper-student` section of BENCHMARKS.md.

    OMP_NUM_THREADS=1 python scripts/bench_paper_student.py [--steps 30] [--warmup 6]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from benchlib import machine, today, write_section  # noqa: E402

from ddkit.data import load_dataset  # noqa: E402
from ddkit.evaluate import get_protocol  # noqa: E402
from ddkit.evaluate.sources import real_subset_source  # noqa: E402
from ddkit.evaluate.trainer import train_students  # noqa: E402

VARIANTS = {  # name -> (seeds trained together, batched, compile)
    "eager, one seed": (1, False, False),
    "torch.compile, one seed": (1, False, True),
    "vmap, 3 seeds batched": (3, True, False),
}


def time_variant(ipc: int, seeds: int, batched: bool, compile_: bool, steps: int, warmup: int) -> dict:
    protocol = get_protocol("hard-paper@2")
    source = real_subset_source("fashion-mnist", ipc, protocol, None, [])
    info = load_dataset("fashion-mnist", "train").info
    data = [source.student_data(s, torch.device("cpu")) for s in range(seeds)]
    cpu = torch.device("cpu")

    def train(n: int) -> tuple[float, float]:
        p = protocol.with_overrides(steps=n, epochs=0)
        wall, proc = time.perf_counter(), time.process_time()
        train_students(p, data, list(range(seeds)), info, cpu, batched=batched, compile=compile_, desc="timing")
        return time.perf_counter() - wall, time.process_time() - proc

    train(warmup)  # compilation and first-touch costs, not measured
    w0, c0 = train(warmup)  # what every run pays before its steps (models, optimizer, first steps)
    w1, c1 = train(warmup + steps)
    per_step_wall, per_step_cpu = (w1 - w0) / steps / seeds, (c1 - c0) / steps / seeds  # per student
    student_steps = protocol.total_steps(10 * ipc)
    return {"wall_ms": 1000 * per_step_wall, "cpu_ms": 1000 * per_step_cpu, "student_steps": student_steps,
            "student_min": per_step_cpu * student_steps / 60,
            "images_per_s": 10 * ipc * protocol.epochs / student_steps / per_step_cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=6)
    parser.add_argument("--ipcs", default="1,10,50")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    load = os.getloadavg()[0]
    lines = [
        "## A `hard-paper@2` student on this CPU: eager, compiled, batched (issue 25)",
        "",
        f"Machine: {machine()}; torch threads {torch.get_num_threads()}. Date: {today()}. Load average at the start: "
        f"{load:.1f} (other jobs shared the 2 cores, so these are upper bounds; CPU time is the process's own and "
        f"moves less with the load than wall time). Command: `OMP_NUM_THREADS=1 python scripts/bench_paper_student.py "
        f"--steps {args.steps} --warmup {args.warmup}`. Per student and optimizer step, measured as the difference between runs of "
        f"{args.warmup} and {args.warmup} + {args.steps} steps, after one unmeasured run (compilation); a whole student is the protocol's steps at that size (1000 "
        "epochs of ⌈n/256⌉ batches); students per hour on one core follow from CPU time.",
        "",
        "| IPC | batch | variant | wall ms / step | CPU ms / step | images / CPU-s | one student (CPU min) | students / hour |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for ipc in (int(v) for v in args.ipcs.split(",")):
        for name, (seeds, batched, compile_) in VARIANTS.items():
            r = time_variant(ipc, seeds, batched, compile_, args.steps, args.warmup)
            print(ipc, name, r, flush=True)
            lines.append(f"| {ipc} | {min(10 * ipc, 256)} | {name} | {r['wall_ms']:.0f} | {r['cpu_ms']:.0f} | "
                         f"{r['images_per_s']:.0f} | {r['student_min']:.1f} | {60 / r['student_min']:.1f} |")
    write_section("paper-student", "\n".join(lines))


if __name__ == "__main__":
    main()
