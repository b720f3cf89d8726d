"""Reliability under hostile input and faults, with more cases than the test suite runs: damaged
`.ddk.h5` / `.sel.h5` / teacher files (bit flips, truncations, spliced blocks), `kill -9` of a
synthesis then `--resume`, writes that run out of space. Writes the `reliability` section of
BENCHMARKS.md.

With `--untrusted` it runs the issue-19 rows instead (the `reliability-untrusted` section): every
crafted file of tests/crafted.py through `info` / `validate` / `show` / `evaluate` in a fresh
process each (outcome, peak RSS, wall time), concurrent result-card writers on one file (this
checkout and, for comparison, the one named by --before), and `kill -9` during a write followed by
the next write of the same output (temp files left behind).

    python scripts/bench_reliability.py [--cases 500] [--kills 4]
    python scripts/bench_reliability.py --untrusted [--trials 5] [--before /work/main]
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


def _run_measured(argv: list[str], env: dict) -> tuple[int, str, float, float]:
    """Run a command in a fresh process: (exit code, output, its own peak RSS in MiB, wall seconds)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # reaps the child with its own resource usage
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        text = log.read()
    return proc.returncode, text, usage.ru_maxrss / 1024, time.perf_counter() - start


def crafted_rows(work: Path) -> list[str]:
    from crafted import CASES, command

    env = {**os.environ, "DDKIT_PROGRESS": "0", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    from crafted import distilled

    base = distilled(work, "valid.ddk.h5")
    *_, rss, wall = _run_measured([sys.executable, "-m", "ddkit", "info", str(base)], env)
    rows = [f"| a valid file (the baseline: `info`) | {base.stat().st_size / 1024:.0f} KiB | info ok | {rss:.0f} MiB | "
            f"{wall:.1f} s | — |"]
    for case in CASES:
        folder = work / f"case{len(rows)}"
        folder.mkdir()
        path = case.build(folder)
        outcomes, peak, slowest, ok = [], 0.0, 0.0, True
        for name in case.commands:
            argv = [sys.executable, "-m", "ddkit", *map(str, command(name, path, folder))]
            code, text, rss, wall = _run_measured(argv, env)
            refused = code != 0 and "Traceback" not in text and ("error:" in text or "[FAIL]" in text)
            good = refused if name in case.refused else code == 0
            ok &= good and "Traceback" not in text
            outcomes.append(f"{name} {'refused' if code else 'ok'}")
            peak, slowest = max(peak, rss), max(slowest, wall)
        size = path.stat().st_size
        rows.append(f"| {case.name} | {size / 1024:.0f} KiB | {', '.join(outcomes)} | {peak:.0f} MiB | {slowest:.1f} s | "
                    f"{'passed' if ok else 'FAILED'} |")
        print(rows[-1], flush=True)
    return rows


_CARD_WRITER = """
import sys, time
from ddkit.store import add_result
time.sleep(max(0.0, float(sys.argv[4]) - time.time()))  # every writer starts at the same moment
for i in range(int(sys.argv[3])):
    add_result(sys.argv[1], f"{sys.argv[2]}-{i}", {"result": {"mean": 0.5}})
"""


def concurrent_cards(work: Path, checkout: Path, writers: int, cards: int, trials: int) -> tuple[int, int, int]:
    """`writers` processes each adding `cards` cards to one file at once; (trials, cards lost in all, trials losing any)."""
    from crafted import distilled

    env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "1"}
    lost_total, lossy = 0, 0
    for trial in range(trials):
        path = distilled(work, f"cards{trial}.ddk.h5")
        start_at = str(time.time() + 45)  # after every writer has imported torch and ddkit (slow on 2 busy cores)
        procs = [subprocess.Popen([sys.executable, "-c", _CARD_WRITER, str(path), f"w{w}", str(cards), start_at], env=env,
                                  cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # cwd: `-c` imports from it
                 for w in range(writers)]
        for p in procs:
            p.wait()
        from ddkit.store import read_results

        lost = writers * cards - len(read_results(path))
        lost_total += lost
        lossy += int(lost > 0)
    return trials, lost_total, lossy


def kill_during_write(work: Path, trials: int) -> tuple[int, int, int]:
    """`kill -9` a big write the moment its temporary file appears (mid-write), then write the same
    output again: (trials, runs that left temp files after the kill, temp files left after the next write)."""
    env = {**os.environ, "DDKIT_PROGRESS": "0", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = work / "big.ddk.h5"
    args = [sys.executable, "-m", "ddkit", "synthesize", "--dataset", "fashion-mnist-mini", "--ipc", "300",
            "--out", str(out), "--overwrite"]
    subprocess.run(args, env=env, check=True, capture_output=True)
    left_after_kill, left_after_next = 0, 0
    for _ in range(trials):
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and not list(work.glob(".big.ddk.h5.*.tmp")):
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        left_after_kill += int(bool(list(work.glob(".big.ddk.h5.*.tmp"))))
        subprocess.run(args, env=env, check=True, capture_output=True)
        left_after_next += len(list(work.glob(".big.ddk.h5.*.tmp")))
    return trials, left_after_kill, left_after_next


def untrusted(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows = crafted_rows(work)
        conc = []
        for label, checkout in (("this branch", ROOT), (f"before (`{args.before}`)", Path(args.before))):
            if not (checkout / "ddkit").is_dir():
                continue
            n, lost, lossy = concurrent_cards(work, checkout, 3, 6, args.trials)
            conc.append(f"| 3 processes × 6 result cards into one file at once, {label} | {n} | {lost} cards lost of "
                        f"{n * 18}; {lossy} of {n} trials lost some | {'passed' if lost == 0 else 'LOST CARDS'} |")
            print(conc[-1], flush=True)
        n, after_kill, after_next = kill_during_write(work, args.trials)
        conc.append(f"| `kill -9` of `ddkit synthesize` (IPC 300 of fashion-mnist-mini) while it writes its temp file, then "
                    f"the same write again | {n} | {after_kill} runs left a `.NAME.PID.tmp`; {after_next} left after the "
                    f"next write | {'passed' if after_next == 0 else 'FAILED'} |")
        print(conc[-1], flush=True)
    body = "\n".join([
        "## Reliability: files from strangers, concurrency (issue 19)",
        "",
        "Each crafted file (tests/crafted.py) is a valid file edited with h5py and given a correct content hash, "
        "header hash and seal, as anyone can. Every command runs in a fresh process; \"refused\" means one "
        "`error:` message (or validate's `[FAIL]` list) and a non-zero exit, no traceback; the listed outcome "
        "must match the case's expectation (refused, or a correct result). Peak RSS is the largest "
        "over the commands of the row; the first row is `ddkit info` on a valid file, the cost of starting "
        "Python with torch and ddkit. The issue measured 2–5 GB for the unwritten-rows files before.",
        "",
        f"Machine: {machine()}. Date: {today()}. Command: `OMP_NUM_THREADS=1 python scripts/bench_reliability.py "
        f"--untrusted --trials {args.trials}`.",
        "",
        "| crafted file | size | outcome per command | peak RSS | slowest command | verdict |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "| concurrency / kills | trials | outcome | verdict |",
        "|---|---|---|---|",
        *conc,
    ])
    write_section("reliability-untrusted", body)
    print(body)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=500)
    parser.add_argument("--kills", type=int, default=4)
    parser.add_argument("--untrusted", action="store_true", help="run the issue-19 rows (crafted files, concurrency)")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--before", default="/work/main", help="a checkout to compare card writers with")
    args = parser.parse_args()
    if args.untrusted:
        untrusted(args)
        return
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
