"""INFER on Fashion-MNIST with three BN teachers of different architectures: static labels
(`stored-cpu`) and INFER+Dyn (`dynamic-cpu`) at IPC 10 and 50, beside random real images at the same
budget under the same protocol (3 seeds); an IPC-10 ablation with 1, 2 and 3 teachers; synthesis
wall time and peak memory; bytes stored vs the same instances stored as composed images plus
per-instance soft labels. Writes the `infer` section of BENCHMARKS.md.

    flock /tmp/ddkit-cpu.lock python scripts/bench_infer.py [--iterations 1000] [--ipcs 10,50]

INFER+Dyn is the static file's instances trained under `dynamic-cpu`: a `labels=dynamic` file holds
bitwise the same instances and no labels (tests/test_infer.py checks that), so synthesizing it
again would only repeat the same work.
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
from ddkit.models.teacher import read_teacher_header  # noqa: E402
from ddkit.store import info_dict  # noqa: E402

# Teacher files `{dataset}-{name}.safetensors` in --teachers-dir, in the order the ablation adds them.
TEACHERS = ["convnet-bn", "resnet8", "mobilenet-w8"]


def timed(cmd: list[str]) -> tuple[float, float, str]:
    """Run `cmd`; (wall seconds, peak resident memory in MiB of that process, stderr)."""
    import tempfile

    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env={**os.environ, "DDKIT_PROGRESS": "0"})
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (ru_maxrss in KiB on Linux)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        sys.stderr.write(stdout + stderr)
        raise SystemExit(f"command failed ({proc.returncode}): {shlex.join(cmd)}")
    return wall, usage.ru_maxrss / 1024, stderr


def synthesize(dataset: str, ipc: int, teachers: list[str], iterations: int, out: Path, seed: int = 0) -> dict:
    cmd = ["ddkit", "synthesize", "--method", "infer", "--dataset", dataset, *sum((["--teacher", t] for t in teachers), []),
           "--ipc", str(ipc), "--config", f"iterations={iterations}", "--seed", str(seed), "--out", str(out), "--overwrite"]
    if out.exists() and json.loads(os.environ.get("BENCH_INFER_REUSE", "0")):
        return {"cmd": cmd, "wall": float("nan"), "rss": float("nan"), "log": "(reused)"}
    wall, rss, err = timed(cmd)
    log = next((line for line in err.splitlines() if line.startswith("infer: ipc")), "")
    print(f"synthesized {out} in {wall:.0f}s, peak {rss:.0f} MiB: {log}", flush=True)
    return {"cmd": cmd, "wall": wall, "rss": rss, "log": log}


def composed_bytes(d: dict) -> int:
    """The same instances stored the plain way: composed float16 images, int64 labels, float16 logits."""
    n = d["instances"]
    pixels = 1
    for s in d["dataset"]["image_shape"]:
        pixels *= s
    return n * (pixels * 2 + 8 + d["dataset"]["num_classes"] * 2)


def random_real_bytes(d: dict, ipc: int) -> int:
    """Random real images at the same IPC as the file stores them: uint8 pixels, int64 labels, float16 logits."""
    n = ipc * d["dataset"]["num_classes"]
    pixels = 1
    for s in d["dataset"]["image_shape"]:
        pixels *= s
    return n * (pixels + 8 + d["dataset"]["num_classes"] * 2)


def arm(card, which: str) -> str:
    a = getattr(card, which)
    return "—" if a is None else pct(a.mean, a.std)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--teachers-dir", default="runs/teachers")
    parser.add_argument("--teachers", default=",".join(TEACHERS), help="teacher file names, in ablation order")
    parser.add_argument("--out", default="runs/infer")
    parser.add_argument("--ipcs", default="10,50")
    parser.add_argument("--ablation-ipc", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="smoke runs only: fewer student steps (a renamed protocol)")
    parser.add_argument("--val-study", default="runs/infer/val_study.json", help="results of scripts/infer_val_study.py to include")
    parser.add_argument("--diagnostics", default="runs/infer/label_diagnostics.json", help="results of scripts/infer_label_diagnostics.py to include")
    parser.add_argument("--render-only", action="store_true", help="re-render the last run's rows (e.g. after the val study)")
    parser.add_argument("--note", dest="notes", action="append", default=[], help="with --render-only: a paragraph appended to the section (kept in the state)")
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing BENCHMARKS.md")
    parser.add_argument("--resume", action="store_true", help="keep the rows of configurations the last run finished; run only the rest")
    args = parser.parse_args()
    out = Path(args.out)
    state_file = out / f"{args.dataset}-bench-state.json"
    if args.render_only:
        state = json.loads(state_file.read_text())
        if args.notes:
            state["notes"] = args.notes
            state_file.write_text(json.dumps(state, indent=1))
    else:
        state = run_all(args, out)
        state_file.write_text(json.dumps(state, indent=1))
    render(state, args)


def run_all(args, out: Path) -> dict:
    """Synthesize and evaluate every configuration; the table rows (rendered by `render`)."""
    seeds = list(range(args.seeds))
    paths = [str(Path(args.teachers_dir) / f"{args.dataset}-{t}.safetensors") for t in args.teachers.split(",")]
    headers = [read_teacher_header(p) for p in paths]
    out.mkdir(parents=True, exist_ok=True)

    teacher_rows = [f"| {h.arch} {h.arch_kwargs or ''} | {pct(h.val_accuracy) if h.val_accuracy is not None else '—'} | {pct(h.test_accuracy) if h.test_accuracy is not None else '—'} | `{p}` |"
                    for h, p in zip(headers, paths)]
    ipcs = [int(v) for v in args.ipcs.split(",")]
    runs = [(ipcs[0], 3)] + [(args.ablation_ipc, m) for m in (1, 2) if args.ablation_ipc] + [(ipc, 3) for ipc in ipcs[1:]]
    main_rows, ablation_rows, cost_rows, byte_rows, full_rows = [], [], [], [], {}
    state_file = out / f"{args.dataset}-bench-state.json"
    notes = []
    if args.resume and state_file.exists():
        done = json.loads(state_file.read_text())
        notes = done.get("notes", [])
        main_rows, cost_rows, byte_rows, full_rows = done["main_rows"], done["cost_rows"], done["byte_rows"], done["full_rows"]
        ablation_rows = [(int(row.split("|")[3]), row) for row in done["ablation_rows"]]

    def state() -> dict:
        return {"command": shlex.join(sys.argv), "threads": os.environ.get("OMP_NUM_THREADS", "default"), "iterations": args.iterations, "seeds": args.seeds, "date": today(),
                "machine": machine(), "teacher_rows": teacher_rows, "main_rows": main_rows,
                "ablation_rows": [row for _, row in sorted(ablation_rows)], "full_rows": full_rows,
                "cost_rows": cost_rows, "byte_rows": byte_rows, "notes": notes}

    for ipc, m in runs:
        if any(row.startswith(f"| {ipc} | {m} |") for row in cost_rows):
            print(f"ipc {ipc}, {m} teacher(s): kept from the last run", flush=True)
            continue
        teachers = paths[:m]
        file = out / f"{args.dataset}-infer-m{m}-ipc{ipc}.ddk.h5"
        syn = synthesize(args.dataset, ipc, teachers, args.iterations, file)
        d = info_dict(file)
        k = d["config"]["k_per_class"]
        protocols = ["stored-cpu@1", "dynamic-cpu@1"] if m == 3 else ["stored-cpu@1"]  # the section is @1
        for protocol in protocols:
            full = m == 3 and protocol not in full_rows
            card = evaluate(str(file), protocol, seeds=seeds, teachers=teachers, full_reference=full, steps=args.steps)
            print(card.table(), flush=True)
            if full:
                full_rows[protocol] = arm(card, "full_data")
            eval_cmd = shlex.join(["ddkit", "evaluate", str(file), "--protocol", protocol, "--seeds", str(args.seeds),
                                   *sum((["--teacher", t] for t in teachers), [])])
            name = "INFER (static)" if protocol == "stored-cpu@1" else "INFER+Dyn"
            row = (f"| {name} | {ipc} | {m} | {k} | {d['instances'] // d['dataset']['num_classes']} | {card.protocol['id']} | {arm(card, 'result')} | "
                   f"{arm(card, 'random_baseline')} | {100 * card.gain:+.2f} | `{eval_cmd}` |")
            if m == 3:
                main_rows.append(row)
            if protocol == "stored-cpu@1" and ipc == args.ablation_ipc:
                ablation_rows.append((m, row))
        c, b = d["composite"], d["budget"]
        cost_rows.append(f"| {ipc} | {m} | {k} | {c['compensators']} | {syn['wall'] / 60:.1f} | {syn['rss']:.0f} | `{shlex.join(syn['cmd'])}` |")
        stored = b["bytes_images"] + b["bytes_labels"] + b["bytes_aux"]
        plain = composed_bytes(d)
        random_real = random_real_bytes(d, ipc)
        byte_rows.append(f"| {ipc} | {m} | {d['instances']} | {b['bytes_images']} | {c['bytes_compensators']} | "
                         f"{c['bytes_mapping']} | {b['bytes_labels']} | {stored} | {plain} | {plain / stored:.1f}× | {random_real} |")
        state_file.write_text(json.dumps(state(), indent=1))  # progress so far
    return state()


def render(state: dict, args) -> None:
    """Write (or print) the `infer` section from the rows of a run and the val-split study."""
    teacher_rows, main_rows, ablation_rows = state["teacher_rows"], state["main_rows"], state["ablation_rows"]
    full_rows, cost_rows, byte_rows = state["full_rows"], state["cost_rows"], state["byte_rows"]
    body = "\n".join([
        f"## INFER on {args.dataset} (issue 4)",
        "",
        f"Machine: {state['machine']}. Date: {state['date']}. Script: `flock /tmp/ddkit-cpu.lock python {state['command']}`.",
        "",
        "Teachers, three BN architectures (plain ConvNet, ResNet, MobileNet with inverted residuals and depthwise "
        "convolutions), all trained with `ddkit teacher train` on the training split minus the 10% val split by "
        "`scripts/bench_teachers.py` (section `teachers`, with the commands):",
        "",
        "| teacher | val acc (%) | test acc (%) | file |",
        "|---|---|---|---|",
        *teacher_rows,
        "",
        f"UFC optimization: T = {state['iterations']} Adam steps (lr 0.25, betas (0.5, 0.9), cosine to 0), r_bn 1.0, first "
        "BN layer ×10, roll jitter 0..4 px, u initialized to 0; synthesis seed 0. Students: "
        f"{state['seeds']} seeds, final-step test accuracy, mean ± sample std. `stored-cpu` trains on the file's static "
        "ensemble logits mixed with mixup's λ (KL at T=30); `dynamic-cpu` is the same recipe with the teacher ensemble "
        "relabeling every augmented, mixed view (INFER+Dyn; the fixed 1000-step budget already matches step counts, "
        "which is what the paper's epochs/(M+1) does). Random real: class-balanced real images at the same IPC, "
        "labeled the same way by the same teachers (static ensemble logits, or on the fly).",
        "",
        "| method | IPC | M | K | instances/class | protocol | test acc (%) | random real (%) | gain | command |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *main_rows,
        "",
        "Full-data reference (the whole training split, same protocol and teachers): "
        + ", ".join(f"{p}: {v}" for p, v in full_rows.items()) + ".",
        "",
        f"Ablation at IPC {args.ablation_ipc}, `stored-cpu`, teachers added in the order {', '.join(args.teachers.split(','))} "
        "(the random baseline is labeled by the same teachers as the row):",
        "",
        "| method | IPC | M | K | instances/class | protocol | test acc (%) | random real (%) | gain | command |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *ablation_rows,
        "",
        f"Synthesis cost on this machine (one process, torch threads: {state.get('threads', 'default')}; "
        "peak = max resident set size):",
        "",
        "| IPC | M | K | UFCs | wall (min) | peak memory (MiB) | command |",
        "|---|---|---|---|---|---|---|",
        *cost_rows,
        "",
        "Bytes: what the file stores (base images uint8 — Fashion-MNIST is uint8, so lossless —, UFCs float32, the "
        "(group, teacher) mapping, hard labels + float16 static logits) vs the same instances stored as composed "
        "float16 images (composites are no longer multiples of 1/255) with int64 labels and float16 logits per instance:",
        "",
        "| IPC | M | instances | base images (B) | UFCs (B) | mapping (B) | labels (B) | file total (B) | composed + soft labels (B) | saving | random real, same IPC, static logits (B) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *byte_rows,
    ])
    body += results_block(Path(args.val_study), val_study_lines) + results_block(Path(args.diagnostics), diagnostics_lines)
    body += "".join(f"\n\n{note}" for note in state.get("notes", []))
    if args.no_write:
        print(body)
    else:
        write_section("infer", body)


def results_block(path: Path, lines_of) -> str:
    """The section's paragraph + table for the JSON results at `path` (a study run apart), or nothing."""
    if not path.exists():
        return ""
    return "\n".join(["", "", *lines_of(json.loads(path.read_text()))])


def val_study_lines(entries: dict) -> list[str]:
    return [
        "Choices studied on the validation split (`scripts/infer_val_study.py`: synthesized from the training "
        "split minus the 10% val split, students scored on the val split, never the test split; random real drawn "
        "from the same part and labeled the same way):",
        "",
        "| train set | val acc (%) | per seed | final CE / L_BN of the UFCs | synthesis (s) |",
        "|---|---|---|---|---|",
        *(f"| {key} | {pct(e['mean'], e['std'])} | {' '.join(pct(a) for a in e['val_accuracies'])} | "
          + (f"{e['final_ce_mean']:.3f} / {e['final_bn_mean']:.2f} | {e['synthesis_seconds']:.0f} |" if "final_ce_mean" in e else "— | — |")
          for key, e in entries.items()),
    ]


def diagnostics_lines(d: dict) -> list[str]:
    from infer_label_diagnostics import markdown_table

    return [
        f"What the teacher ensemble says on the student's views (`python scripts/infer_label_diagnostics.py`, val-split "
        f"synthesis `{d['cache']}`, no student, no test image; {d['views']} crop-flip and crop-flip+mixup views per "
        f"instance, T = {d['temperature']:g}; \"λ-majority\": the class of the image with mixup weight ≥ 0.5; margin: "
        "top-1 minus top-2 ensemble logit):",
        "",
        *markdown_table(d["results"]),
    ]


if __name__ == "__main__":
    main()
