"""The seed methods, a coreset and DM re-measured under the `@2` CPU protocols, with DD-Ranking's scores.

Each arm is one synthesized file (seed 0) evaluated by the evaluator with 3 student seeds; the random
real baseline and the full-data reference come from the reference cache that
`scripts/bench_protocols_v2.py` filled (same protocol, seeds and teachers), and HLR from the file's
card under `hard-cpu@2` (trained when missing). Files are synthesized when absent (commands in the
table). Writes BENCHMARKS.md section `seed-methods-v2`.

    OMP_NUM_THREADS=1 flock /tmp/ddkit-cpu.lock python scripts/bench_seed_methods_v2.py \
        --teacher runs/teachers/fashion-mnist-convnet-bn.safetensors --ipcs 10 [--arms dm,herding,...]
    python scripts/bench_seed_methods_v2.py --teacher ... --render
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import machine, pct, record_state, today, write_section  # noqa: E402

from ddkit.evaluate import evaluate  # noqa: E402

STATE = Path("runs/protocols/seed_methods_v2.json")
FILES = Path("runs/protocols/files")

# arm -> (label, method, synthesizer options, protocol, whether the method takes the teacher)
ARMS = {
    "dm": ("DM (no teacher)", "dm", [], "teacher-cpu@2", False),
    "herding": ("herding coreset (teacher features)", "herding", [], "teacher-cpu@2", True),
    "infer-static": ("INFER, static labels (1 teacher)", "infer", ["iterations=1000"], "stored-cpu@2", True),
    "infer-dyn": ("INFER+Dyn (1 teacher)", "infer", ["iterations=1000"], "teacher-cpu@2", True),
    "nrr-dd": ("NRR-DD, defaults chosen on val under teacher-cpu@2 (no refinement)", "nrr-dd", [], "teacher-cpu@2", True),
    "nrr-dd-v1": ("NRR-DD, the earlier choice under teacher-cpu@1 (refined)", "nrr-dd",
                  ["per_image=confidence", "select=highest-confidence", "refine=true"], "teacher-cpu@2", True),
    "rded-style": ("RDED-style (no refinement)", "nrr-dd",  # explicit: independent of NRR-DD's default selection
                   ["refine=false", "per_image=confidence", "select=highest-confidence"], "teacher-cpu@2", True),
    "nrr-dd-paper": ("NRR-DD, the paper's lowest-confidence selection", "nrr-dd",
                     ["select=lowest-confidence", "per_image=cam-ratio"], "teacher-cpu@2", True),
    "random-real": ("random real (a file)", "random-real", [], "teacher-cpu@2", False),
}
SHARED_FILES = {"infer-dyn": "infer-static"}  # INFER+Dyn trains the static file's instances (no labels used)


def synth_command(arm: str, ipc: int, teacher: str, dataset: str) -> tuple[list[str], Path]:
    _, method, options, _, uses_teacher = ARMS[arm]
    out = FILES / f"{SHARED_FILES.get(arm, arm)}-ipc{ipc}.ddk.h5"
    cmd = ["ddkit", "synthesize", "--method", method, "--dataset", dataset, "--ipc", str(ipc), "--seed", "0",
           "--out", str(out), *(["--teacher", teacher] if uses_teacher else []),
           *sum((["--config", o] for o in options), [])]
    return cmd, out


def _record(key: str, entry: dict) -> None:
    record_state(STATE, key, entry)
    print(key, f"{100 * entry['card']['result']['mean']:.2f}", flush=True)


def run(args) -> None:
    state = json.loads(STATE.read_text()) if STATE.exists() else {}
    for ipc in [int(i) for i in args.ipcs.split(",")]:
        for arm in args.arms.split(","):
            cmd, out = synth_command(arm, ipc, args.teacher, args.dataset)
            synth_seconds = None
            if not out.exists():
                FILES.mkdir(parents=True, exist_ok=True)
                start = time.perf_counter()
                subprocess.run(cmd, check=True, env={**os.environ, "DDKIT_PROGRESS": "0"})
                synth_seconds = time.perf_counter() - start
            protocol = ARMS[arm][3] if args.stage == "soft" else "hard-cpu@2"
            key = f"{arm} | {ipc} | {protocol}"
            if key in state or (args.stage == "hard" and arm in SHARED_FILES):
                continue
            start = time.perf_counter()
            # soft stage first (ranking later, from the file's hard-cpu@2 card), so the minutes-long hard
            # full-data reference is trained once, by bench_protocols_v2, not here
            card = evaluate(str(out), protocol, list(range(args.seeds)), teachers=[args.teacher],
                            full_reference=args.stage == "hard",
                            ranking=args.stage == "hard")
            _record(key, {"arm": arm, "ipc": ipc, "protocol": protocol, "synth_cmd": cmd, "synth_seconds": synth_seconds,
                          "eval_seconds": time.perf_counter() - start, "card": card.to_dict()})


def render(args) -> None:
    state = json.loads(STATE.read_text())
    lines = [
        "## Seed methods, a coreset and DM under the `@2` protocols, with DD-Ranking's scores (issue 14)",
        "",
        "Fashion-MNIST, one synthesized file per row (seed 0), the student seeds listed, final-step test accuracy "
        "(mean ± sample std). Random real and full data come from the reference cache filled by section "
        "`protocols-v2` (same protocol, seeds and teacher). DD-Ranking's scores per seed, then mean: "
        "IOR = set − random real under the row's protocol; HLR = full data − set, both under `hard-cpu@2` "
        "(lower is better); LRS = (exp(IOR/2 − HLR/2) − e⁻¹)/(e − e⁻¹) in percent (`ddkit/evaluate/ranking.py`). "
        f"Teacher: `{args.teacher}`. The DM and herding files are the `matching` section's files "
        "(`runs/matching/files/`, made by `scripts/bench_matching.py`, copied here): the command shown for them "
        "is the equivalent one with default options. Synthesis wall times are upper bounds (shared cores).",
        "",
        f"IPCs measured: {coverage(state)}. INFER has no IPC-1 row: with one teacher and 10 classes its budget "
        "rule gives K = floor(1·10/11) = 0 real images per class, which `ddkit synthesize` refuses.",
        "",
        f"Machine: {machine()}. Date: {today()}. Command: `OMP_NUM_THREADS=1 flock /tmp/ddkit-cpu.lock python "
        f"scripts/bench_seed_methods_v2.py --teacher {args.teacher} --ipcs IPC --arms ARMS --seeds N` (each arm under its "
        "own protocol, without ranking), then the same with `--stage hard` (each file under `hard-cpu@2`, after "
        "`protocols-v2` cached its full-data reference), then `--render`: a soft row's scores come from its card and "
        "the same file's `hard-cpu@2` card, as the evaluator computes them when the file holds that card.",
        "",
        "| IPC | train set | protocol | seeds | test acc (%) | random real (%) | IOR | set, hard labels (%) | HLR | LRS | "
        "synthesis |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in sorted(state.values(), key=lambda e: (e["ipc"], list(ARMS).index(e["arm"]), e["protocol"])):
        card, ranking = entry["card"], entry["card"].get("ranking") or _ranking_from_hard_card(entry, state)

        def score(name, signed=False):
            if name not in ranking:  # no hard-cpu@2 card yet: IOR is still the card's own gain over random
                return f"{100 * card['gain_over_random']:+.2f}" if name == "ior" and card.get("random_baseline") else "-"
            value = 100 * ranking[name]["mean"]
            return f"{value:+.2f}" if signed else f"{value:.2f}"

        hard = pct(ranking["hard_set"]["mean"], ranking["hard_set"]["std"]) if ranking else "-"
        synth = "(shared file)" if entry["arm"] in SHARED_FILES else (
            f"{entry['synth_seconds']:.0f} s" if entry.get("synth_seconds") else "reused")
        lines.append(
            f"| {entry['ipc']} | {ARMS[entry['arm']][0]} | {card['protocol']['id']} | {len(card['seeds'])} | "
            f"{pct(card['result']['mean'], card['result']['std'])} | "
            f"{pct(card['random_baseline']['mean'], card['random_baseline']['std'])} | {score('ior', True)} | "
            f"{hard} | {score('hlr')} | {score('lrs')} | {synth} `{' '.join(entry['synth_cmd'])}` |")
    if args.note:
        lines += ["", *Path(args.note).read_text().rstrip().splitlines()]
    write_section("seed-methods-v2", "\n".join(lines))


def coverage(state: dict) -> str:
    """Which arms ran at which IPC (under any protocol), e.g. `IPC 1: DM, herding; IPC 10: …`."""
    ran: dict[int, list[str]] = {}
    for entry in state.values():
        arms = ran.setdefault(entry["ipc"], [])
        if entry["arm"] not in arms:
            arms.append(entry["arm"])
    return "; ".join(f"IPC {ipc}: {', '.join(sorted(arms, key=list(ARMS).index))}" for ipc, arms in sorted(ran.items()))


def _ranking_from_hard_card(entry: dict, state: dict) -> dict:
    """A soft card measured with `ranking=False`: DD-Ranking's scores from it and the same file's
    hard-cpu@2 card (what the evaluator itself does when the file already holds that card)."""
    from ddkit.evaluate.ranking import ranking_scores

    hard = state.get(f"{SHARED_FILES.get(entry['arm'], entry['arm'])} | {entry['ipc']} | hard-cpu@2")
    card = entry["card"]
    if hard is None or card["protocol"]["id"] == "hard-cpu@2" or not card.get("random_baseline"):
        return {}
    h = hard["card"]
    return ranking_scores(card["protocol"]["id"], card["result"]["accuracies"], card["random_baseline"]["accuracies"],
                          h["protocol"]["id"], h["result"]["accuracies"], h["full_data"]["accuracies"]).to_dict()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--ipcs", default="10")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--stage", choices=["soft", "hard"], default="soft",
                        help="soft: each arm under its own protocol; hard: hard-cpu@2 (HLR), after the full-data reference")
    parser.add_argument("--render", action="store_true")
    parser.add_argument("--note")
    args = parser.parse_args()
    render(args) if args.render else run(args)


if __name__ == "__main__":
    main()
