"""Reliability under hostile input and faults, with more cases than the test suite runs: damaged
`.ddk.h5` / `.sel.h5` / teacher files (bit flips, truncations, spliced blocks), `kill -9` of a
synthesis then `--resume`, writes that run out of space. Writes the `reliability` section of
BENCHMARKS.md.

    python scripts/bench_reliability.py [--cases 500] [--kills 4]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))
from benchlib import machine, today, write_section  # noqa: E402
from test_fuzz import fingerprint, mutate  # noqa: E402  (the suite's own case generator and oracle)

from ddkit.errors import DdkitError  # noqa: E402


def fuzz(path: Path, cases: int, seed: int, work: Path) -> dict:
    data, reference = path.read_bytes(), fingerprint(path)
    rng = np.random.default_rng(seed)
    counts = {"refused": 0, "identical": 0, "wrong": 0, "crash": 0}
    for case in range(cases):
        target = work / f"case{''.join(path.suffixes)}"
        target.write_bytes(mutate(data, case, rng))
        try:
            counts["identical" if fingerprint(target) == reference else "wrong"] += 1
        except DdkitError:
            counts["refused"] += 1
        except Exception as exc:  # noqa: BLE001 — counted and reported, that is the point
            counts["crash"] += 1
            print(f"crash on case {case}: {type(exc).__name__}: {exc}", file=sys.stderr)
    return counts


def kill_and_resume(teacher: Path, work: Path, trials: int) -> tuple[int, int]:
    env = {**os.environ, "DDKIT_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "ddkit", "synthesize", "--method", "infer", "--dataset", "procedural",
            "--teacher", str(teacher), "--ipc", "6", "--config", "iterations=300"]
    whole = work / "whole.ddk.h5"
    start = time.perf_counter()
    subprocess.run(args + ["--out", str(whole)], env=env, check=True, capture_output=True)
    duration = time.perf_counter() - start
    from ddkit.store import DistilledDataset

    reference = DistilledDataset(whole).content_sha256
    rng = np.random.default_rng(0)
    passed = 0
    for trial in range(trials):
        out = work / f"k{trial}.ddk.h5"
        proc = subprocess.Popen(args + ["--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(float(rng.uniform(0.3, 0.8)) * duration)  # a random point of the run
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        partial = out.exists()
        subprocess.run(args + ["--out", str(out), "--resume"] + (["--overwrite"] if partial else []), env=env,
                       check=True, capture_output=True)
        passed += int(not partial and DistilledDataset(out).content_sha256 == reference)
    return trials, passed


def full_disk(work: Path, limits: list[int]) -> tuple[int, int]:
    passed = 0
    target = work / "disk.ddk.h5"
    subprocess.run([sys.executable, "-m", "ddkit", "synthesize", "--dataset", "procedural", "--ipc", "1",
                    "--out", str(target), "--overwrite"], check=True, capture_output=True)
    before = target.read_bytes()
    for limit in limits:
        script = ("import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
                  f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); from ddkit.cli import main; "
                  f"main(['synthesize', '--dataset', 'fashion-mnist-mini', '--ipc', '300', '--out', {str(target)!r}, '--overwrite'])")
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        ok = (proc.returncode == 2 and "no space left" in proc.stderr and "Traceback" not in proc.stderr
              and target.read_bytes() == before and sorted(p.name for p in work.glob(".disk*")) == [])
        passed += int(ok)
    return len(limits), passed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=500)
    parser.add_argument("--kills", type=int, default=4)
    args = parser.parse_args()
    from ddkit.selectors import run_selector
    from ddkit.synth import run_synthesizer
    from ddkit.teachers import train_teacher

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        teacher = work / "t.safetensors"
        train_teacher(teacher, "procedural", "convnet-bn", {"width": 8}, epochs=2, batch_size=32)
        distilled, infer_file, selection = work / "d.ddk.h5", work / "i.ddk.h5", work / "s.sel.h5"
        run_synthesizer("random-real", "procedural", [str(teacher)], 3, {}, 0, distilled)
        run_synthesizer("infer", "procedural", [str(teacher)], 3, {"iterations": 5}, 0, infer_file)
        run_selector("random", "procedural", [], 20, {}, 0, selection)
        rows = []
        for label, path, seed in (("`.ddk.h5` (random-real, uint8 pixels)", distilled, 11),
                                  ("`.ddk.h5` (INFER: composite + float16 logits)", infer_file, 12),
                                  ("`.sel.h5`", selection, 13), ("teacher `.safetensors`", teacher, 14)):
            c = fuzz(path, args.cases, seed, work)
            ok = c["wrong"] == 0 and c["crash"] == 0
            rows.append(f"| damaged {label} | {args.cases} | {c['refused']} refused, {c['identical']} loaded identical, "
                        f"{c['wrong']} silently different, {c['crash']} crashes | {'all passed' if ok else 'FAILED'} |")
            print(rows[-1], flush=True)
        n, ok = kill_and_resume(teacher, work, args.kills)
        rows.append(f"| `kill -9` of `ddkit synthesize --method infer` at a random time, then `--resume` | {n} | "
                    f"{ok} resumed to the uninterrupted file's content hash, none left a partial file | "
                    f"{'all passed' if ok == n else 'FAILED'} |")
        n, ok = full_disk(work, [4096, 20_000, 200_000])
        rows.append(f"| write past a file-size limit (RLIMIT_FSIZE 4 KB / 20 KB / 200 KB) over an existing file | {n} | "
                    f"{ok} ended in one clear message, exit 2, previous file intact, no temp file | "
                    f"{'all passed' if ok == n else 'FAILED'} |")
    body = "\n".join([
        "## Reliability (issue 8)",
        "",
        "Each damaged-file case mutates a valid file (cycling: 1–8 flipped bits, a truncation, a spliced block of "
        "random bytes) and must either be refused with a ddkit error or load exactly the original content; "
        "\"silently different\" and crashes would be failures. The test suite runs the same generator with 120 "
        "cases per file kind (tests/test_fuzz.py) and the kill/full-disk cases once each (tests/test_reliability.py).",
        "",
        f"Machine: {machine()}. Date: {today()}. Command: `python scripts/bench_reliability.py --cases {args.cases} --kills {args.kills}`.",
        "",
        "| category | cases | outcome | verdict |",
        "|---|---|---|---|",
        *rows,
    ])
    write_section("reliability", body)
    print(body)


if __name__ == "__main__":
    main()
