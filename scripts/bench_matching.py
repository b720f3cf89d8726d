"""The matching family and the coreset baselines on Fashion-MNIST at IPC 1 / 10 / 50 under `hard-cpu`,
3 student seeds, each beside random real images of the same budget under the same protocol. Writes the
`matching` section of BENCHMARKS.md (with the DM val study from `scripts/dm_val_study.py`).

Each row's synthesis runs as its own `ddkit synthesize` process (wall time and peak RSS measured around
it); students are trained by the library's `evaluate`. Rows already measured are kept (runs/matching/
bench.json), so the script can be rerun to fill in what is missing; run it alone on the machine.

    flock /tmp/ddkit-cpu.lock python scripts/bench_matching.py --teacher runs/teachers/fashion-mnist-convnet-bn.safetensors
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import machine, pct, today, write_section  # noqa: E402

from ddkit.evaluate import evaluate  # noqa: E402

# Published Fashion-MNIST, ConvNet-3 (width 128), hard labels, DSA-augmented long evaluation (DC/DSA/MTT papers).
PUBLISHED = {"random": (51.4, 73.8, 82.5), "DC": (70.5, 82.3, 83.6), "DSA": (70.6, 84.6, 88.7), "MTT": (75.1, 87.2, 88.3)}
CORESETS = ("herding", "kcenter")


def synth_command(method: str, dataset: str, ipc: int, out: Path, teacher: str, options: dict) -> list[str]:
    cmd = ["ddkit", "synthesize", "--method", method, "--dataset", dataset, "--ipc", str(ipc), "--out", str(out), "--overwrite"]
    if method in CORESETS:
        cmd += ["--teacher", teacher]
    for key, value in options.get(method, {}).items():
        cmd += ["--config", f"{key}={value}"]
    return cmd


def timed(cmd: list[str]) -> tuple[float, float]:
    """Run `cmd`; return (wall seconds, peak RSS in MiB) of that process alone."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "MAXRSS_KB %M", *cmd], capture_output=True, text=True,
                          env={**os.environ, "DDKIT_PROGRESS": "0"})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"command failed ({proc.returncode}): {shlex.join(cmd)}")
    rss = [line for line in proc.stderr.splitlines() if line.startswith("MAXRSS_KB ")]
    return wall, int(rss[-1].split()[1]) / 1024


def processed_images(method: str, ipc: int, options: dict, source_size: int, num_classes: int) -> int:
    """Source images a synthesis run pushes through a network (for images/s)."""
    if method == "dm":
        dm = options.get("dm", {})
        return int(dm.get("iterations", 1000)) * int(dm.get("batch_real", 64)) * num_classes
    if method in CORESETS:
        return source_size
    return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--teacher", required=True, help="the teacher whose feature space the coresets use")
    parser.add_argument("--ipcs", default="1,10,50")
    parser.add_argument("--methods", default="random-real,herding,kcenter,dm")
    parser.add_argument("--option", action="append", default=[], metavar="METHOD:KEY=VALUE",
                        help="a synthesis option, e.g. dm:iterations=600 (part of the row's key)")
    parser.add_argument("--protocol", default="hard-cpu@1")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--note", dest="notes", action="append", default=[])
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--state", default="runs/matching/bench.json")
    parser.add_argument("--val-study", default="runs/matching/dm_val_study.json")
    args = parser.parse_args()
    options: dict[str, dict] = {}
    for opt in args.option:
        method, _, pair = opt.partition(":")
        key, _, value = pair.partition("=")
        options.setdefault(method, {})[key] = value
    state_path = Path(args.state)
    state = json.loads(state_path.read_text()) if state_path.exists() else {"rows": {}}
    files = state_path.parent / "files"
    files.mkdir(parents=True, exist_ok=True)
    from ddkit.data import load_dataset

    source = load_dataset(args.dataset, "train")
    for ipc in ([] if args.render_only else [int(v) for v in args.ipcs.split(",")]):
        for method in args.methods.split(","):
            opts = options.get(method, {})
            key = f"{method}/{ipc}/{args.protocol}/" + ",".join(f"{k}={v}" for k, v in sorted(opts.items()))
            if key in state["rows"]:
                continue
            out = files / f"{method}-ipc{ipc}.ddk.h5"
            cmd = synth_command(method, args.dataset, ipc, out, args.teacher, options)
            print("$", shlex.join(cmd), flush=True)
            wall, rss = timed(cmd)
            card = evaluate(str(out), args.protocol, seeds=list(range(args.seeds)), full_reference=not state.get("full"))
            if card.full_data is not None:
                state["full"] = {"mean": card.full_data.mean, "std": card.full_data.std}
            images = processed_images(method, ipc, options, len(source), source.info.num_classes)
            state["rows"][key] = {
                "method": method, "ipc": ipc, "options": opts, "protocol": card.protocol["id"],
                "accuracies": card.result.accuracies, "mean": card.result.mean, "std": card.result.std,
                "random": card.random_baseline.accuracies, "random_mean": card.random_baseline.mean,
                "random_std": card.random_baseline.std, "synthesis_seconds": wall, "peak_rss_mib": rss,
                "images_per_second": images / wall if images else None, "command": shlex.join(cmd),
                "bytes": card.budget_bytes, "evaluate_seconds": card.wall_seconds,
            }
            print(json.dumps(state["rows"][key]), flush=True)
            state_path.write_text(json.dumps(state, indent=1))
    if args.notes:
        state["notes"] = args.notes
        state_path.write_text(json.dumps(state, indent=1))
    write_section("matching", render(state, args))


def render(state: dict, args) -> str:
    rows = sorted(state["rows"].values(), key=lambda r: (r["ipc"], r["method"] != "random-real", r["method"]))
    lines = [
        "## Matching family and coreset baselines (Fashion-MNIST, hard labels)",
        "",
        f"Machine: {machine()}. Date: {today()}. Command: "
        f"`flock /tmp/ddkit-cpu.lock python scripts/bench_matching.py --teacher {args.teacher}` "
        "(rows measured so far are kept in runs/matching/bench.json; each row's synthesis command is in the table). "
        "Accuracy is the final-step test accuracy of the protocol's student, mean ± std over 3 student seeds; "
        "'random real' is the evaluator's random subset at the same budget under the same protocol; the gain is "
        "the set's mean minus random's mean, in points. Coresets use the teacher's feature space. "
        "Synthesis wall time and peak RSS are of the `ddkit synthesize` process alone; images/s counts the real "
        "images the method pushes through a network (DM: iterations × batch_real × classes; coresets: the train split). "
        "Wall times are upper bounds: other jobs shared the 2 cores during these runs.",
        "",
        "| method | IPC | protocol | accuracy (%) | random real (%) | gain | vs best coreset | synthesis s | peak MiB | images/s | command |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    best_coreset = {}
    for r in rows:
        if r["method"] in CORESETS:
            best_coreset[r["ipc"]] = max(best_coreset.get(r["ipc"], -1.0), r["mean"])
    for r in rows:
        gain = 100 * (r["mean"] - r["random_mean"])
        vs = f"{100 * (r['mean'] - best_coreset[r['ipc']]):+.2f}" if r["ipc"] in best_coreset else "-"
        ips = f"{r['images_per_second']:.0f}" if r.get("images_per_second") else "-"
        lines.append(f"| {r['method']} {','.join(f'{k}={v}' for k, v in r['options'].items())} | {r['ipc']} | {r['protocol']} | "
                     f"{pct(r['mean'], r['std'])} | {pct(r['random_mean'], r['random_std'])} | {gain:+.2f} | {vs} | "
                     f"{r['synthesis_seconds']:.0f} | {r['peak_rss_mib']:.0f} | {ips} | `{r['command']}` |")
    if state.get("full"):
        lines += ["", f"Full training split under the same protocol: {pct(state['full']['mean'], state['full']['std'])}."]
    lines += ["", "Published Fashion-MNIST numbers (ConvNet-3 width 128, hard labels, long DSA-augmented evaluation — "
              "not the same protocol as hard-cpu's 1000 crop-flip steps on a width-32 student):", "",
              "| | IPC 1 | IPC 10 | IPC 50 |", "|---|---|---|---|"]
    lines += [f"| {name} | {a} | {b} | {c} |" for name, (a, b, c) in PUBLISHED.items()]
    lines += val_study(Path(args.val_study))
    for note in state.get("notes", []):
        lines += ["", note]
    return "\n".join(lines)


def val_study(path: Path) -> list[str]:
    """The DM val-split table (choices of iterations / batch_real), if the study has run."""
    if not path.exists():
        return []
    study = json.loads(path.read_text())
    lines = ["", "### DM's CPU defaults, chosen on the val split (never test)", "",
             "`python scripts/dm_val_study.py --ipc IPC --batch-real B --milestones ...`: one DM run per (IPC, batch_real) "
             "on Fashion-MNIST's train split minus its seeded 10% val split, students trained under hard-cpu at each "
             "milestone and scored on the val split (3 seeds), beside random real from the same part.", "",
             "| run | val accuracy (%) | synthesis s (cumulative) | DM loss (last 10 iterations) |", "|---|---|---|---|"]
    for key, r in study.items():
        secs = f"{r['synthesis_seconds']:.0f}" if "synthesis_seconds" in r else "-"
        loss = f"{r['loss_last10']:.2f}" if "loss_last10" in r else "-"
        lines.append(f"| {key} | {pct(r['mean'], r['std'])} | {secs} | {loss} |")
    return lines


if __name__ == "__main__":
    main()
