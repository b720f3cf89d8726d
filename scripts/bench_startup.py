"""Start-up time and peak memory of the `ddkit` verbs that need no tensors (issue 27 item 7), whole
process from start to exit, and whether each imported torch; optionally beside another checkout
(`--baseline ROOT`, e.g. a worktree of the code before the change) and beside `import torch` alone.

Each command runs `--runs` times after one warm-up run (which also builds the registry index that
`list` and `describe` read). With a baseline, the two checkouts' runs of a verb alternate (this,
baseline, this, ...), so a drift in the machine's speed reaches both alike, and the ratio this/baseline
is taken run pair by run pair. The table gives the median wall time, the fastest/slowest wall time,
the median CPU time (user + system) and the median peak RSS of the process, all from the operating
system's accounting of the finished child (`os.wait4`'s rusage; the same figures `/usr/bin/time -v`
prints). Compiled bytecode is cached as in an installed package (`PYTHONDONTWRITEBYTECODE` is dropped
for the timed processes, so the warm-up writes `__pycache__`; without it every start recompiles
ddkit's modules). Every measured process checks that it imported `ddkit` from the checkout being timed (the
editable install points elsewhere). On a shared machine the CPU time is the steadier figure and wall
times are upper bounds. Writes BENCHMARKS.md section `startup`.

    nice -n 10 env OMP_NUM_THREADS=1 python scripts/bench_startup.py --baseline /path/to/old/checkout
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import ROOT, machine, today, write_section  # noqa: E402

# Runs the `ddkit` command in-process (what the console script runs) and reports on stderr whether
# torch got imported and where `ddkit` came from.
PROBE = ("import sys, runpy; sys.argv = ['ddkit'] + sys.argv[1:]\n"
         "try:\n    runpy.run_module('ddkit', run_name='__main__')\n"
         "except SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
         "sys.stderr.write('TORCH=%d\\n' % ('torch' in sys.modules))\n"
         "sys.stderr.write('DDKIT=%s\\n' % sys.modules['ddkit'].__file__); sys.exit(code)")


def run_once(cmd: list[str], env: dict, cwd: Path) -> dict:
    """One whole-process run of `python CMD`: wall, CPU (user + system) seconds, peak RSS (MiB) and
    what the PROBE reported on stderr. Fails loudly on a non-zero exit."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *cmd], env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    err = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"failed ({code}): python {shlex.join(cmd)}\n{err}")
    report = dict(line.split("=", 1) for line in err.splitlines() if line.startswith(("TORCH=", "DDKIT=")))
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "peak": usage.ru_maxrss / 1024,
            "torch": report.get("TORCH", "1") == "1", "ddkit": report.get("DDKIT")}


def measure(jobs: dict[str, tuple[list[str], dict, Path, Path | None]], runs: int) -> dict[str, dict]:
    """Time each job (label -> (CMD, env, cwd, root whose ddkit it must import)) `runs` times after one
    warm-up, the jobs' runs in turn; per label the medians, the wall spread, whether torch was
    imported, and the per-run wall and CPU lists (for pairwise ratios)."""
    samples: dict[str, list[dict]] = {label: [] for label in jobs}
    for i in range(runs + 1):
        for label, (cmd, env, cwd, root) in jobs.items():
            one = run_once(cmd, env, cwd)
            if root is not None and not (one["ddkit"] or "").startswith(str(root) + os.sep):
                raise SystemExit(f"{label}: imported ddkit from {one['ddkit']}, not from {root}")
            if i:  # the first run warms caches (and builds the registry index)
                samples[label].append(one)
    out = {}
    for label, rows in samples.items():
        walls = [r["wall"] for r in rows]
        out[label] = {"wall": statistics.median(walls), "min": min(walls), "max": max(walls),
                      "cpu": statistics.median(r["cpu"] for r in rows),
                      "peak": statistics.median(r["peak"] for r in rows),
                      "torch": any(r["torch"] for r in rows), "walls": walls, "cpus": [r["cpu"] for r in rows]}
    return out


def make_files(folder: Path, env: dict) -> dict[str, str]:
    """A small distilled file and a catalog indexing it, made with the code under test (run from
    `folder`: with the checkout's own folder as the working directory, Python would import that one)."""
    files = {"set": str(folder / "rr.ddk.h5"), "catalog": str(folder / "cat.sqlite")}
    for argv in (["synthesize", "--dataset", "procedural", "--ipc", "2", "--out", files["set"], "--overwrite"],
                 ["catalog", "scan", files["set"], "--catalog", files["catalog"]]):
        subprocess.run([sys.executable, "-m", "ddkit", *argv], env=env, cwd=folder, check=True, capture_output=True)
    return files


def describe_checkout(root: Path) -> str:
    """The checkout's commit (short hash), for the table's heading; '?' outside git."""
    proc = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() or "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout to time the same verbs with")
    args = parser.parse_args()

    roots = {"this": ROOT} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    results: dict[tuple[str, str], dict] = {}
    ratios: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        setups = {}
        for label, root in roots.items():
            env = {**os.environ, "PYTHONPATH": str(root), "DDKIT_CACHE": str(Path(tmp) / f"cache-{label}"),
                   "DDKIT_PROGRESS": "0"}
            env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: the warm-up caches the bytecode
            folder = Path(tmp) / label
            folder.mkdir()
            setups[label] = (root, env, folder, make_files(folder, env))
        verbs = {
            "ddkit --help": lambda f: ["--help"],
            "ddkit list": lambda f: ["list"],
            "ddkit describe dm": lambda f: ["describe", "dm"],
            "ddkit info FILE.ddk.h5": lambda f: ["info", f["set"]],
            "ddkit catalog ls": lambda f: ["catalog", "ls", "--catalog", f["catalog"]],
        }
        for name, argv in verbs.items():
            jobs = {label: (["-c", PROBE, *argv(files)], env, folder, root)
                    for label, (root, env, folder, files) in setups.items()
                    if not (label == "baseline" and name.startswith("ddkit describe"))}  # no such verb before
            timed = measure(jobs, args.runs)
            for label, r in timed.items():
                results[(label, name)] = r
                print(label, name, {k: v for k, v in r.items() if k not in ("walls", "cpus")}, flush=True)
            if len(timed) == 2:
                this, base = timed["this"], timed["baseline"]
                ratios[name] = (statistics.median(a / b for a, b in zip(this["walls"], base["walls"])),
                                statistics.median(a / b for a, b in zip(this["cpus"], base["cpus"])))
        env = {**os.environ, "DDKIT_CACHE": str(Path(tmp) / "cache-torch")}
        results[("yardstick", "python -c 'import torch'")] = measure(
            {"torch": (["-c", "import torch"], env, Path(tmp), None)}, args.runs)["torch"]

    base_name = f"commit {describe_checkout(roots['baseline'])}" if args.baseline else ""
    lines = [
        "## Start-up of the verbs that need no tensors (issue 27)",
        "",
        f"Machine: {machine()}. Date: {today()}. Command: `nice -n 10 env OMP_NUM_THREADS=1 python scripts/bench_startup.py"
        + (" --baseline <checkout of the code before issue 27>" if args.baseline else "") + f"` ({args.runs} runs per "
        "command after one warm-up run that also builds the registry index `list` and `describe` read"
        + (f"; baseline: {base_name}, its runs alternating with this branch's" if args.baseline else "") + "). "
        "Each process runs the `ddkit` command with PYTHONPATH set to the checkout timed (checked in the process), "
        "its bytecode cached as in an installed package. "
        "The whole process is timed, from start to exit, by the operating system's accounting of the finished child "
        "(the figures `/usr/bin/time -v` prints): CPU is its user + system time, peak its peak RSS. Wall times on a "
        "2-core machine shared with other jobs are upper bounds (the spread shows the noise); CPU time is the steadier "
        "figure.",
        "",
        "| code | command | median wall (s) | fastest–slowest wall (s) | median CPU (s) | median peak RSS (MiB) | imports torch |",
        "|---|---|---|---|---|---|---|",
    ]
    for (label, name), r in results.items():
        code = {"this": "this branch", "baseline": f"before ({base_name})", "yardstick": "yardstick"}[label]
        lines.append(f"| {code} | `{name}` | {r['wall']:.2f} | {r['min']:.2f}–{r['max']:.2f} | {r['cpu']:.2f} | {r['peak']:.0f} | "
                     f"{'yes' if r['torch'] else 'no'} |")
    if ratios:
        lines += ["", "This branch against the baseline, median of the run-pair ratios (below 1: faster now):", "",
                  "| command | wall this/before | CPU this/before |", "|---|---|---|"]
        lines += [f"| `{name}` | {w:.2f} | {c:.2f} |" for name, (w, c) in ratios.items()]
    write_section("startup", "\n".join(lines))


if __name__ == "__main__":
    main()
