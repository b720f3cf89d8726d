"""Start-up time and peak memory of the `ddkit` verbs that need no tensors (issue 27 item 7), whole
process from start to exit, and whether each imported torch; optionally beside another checkout
(`--baseline ROOT`, e.g. a worktree of the code before the change) and beside `import torch` alone.

Each command runs `--runs` times after one warm-up run (which also builds the registry index that
`list` and `describe` read); the table gives the median wall time, the median peak RSS of the
process and its CPU time (user + system, from `os.wait4`'s rusage: on a shared machine the CPU time
is the steadier figure) and the fastest/slowest wall time. Numbers from a shared machine
are upper bounds. Writes BENCHMARKS.md section `startup`.

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

PROBE = ("import sys, runpy; sys.argv = ['ddkit'] + sys.argv[1:]\n"
         "try:\n    runpy.run_module('ddkit', run_name='__main__')\n"
         "except SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
         "sys.stderr.write('TORCH=%d\\n' % ('torch' in sys.modules)); sys.exit(code)")


def measure(cmd: list[str], env: dict, runs: int, cwd: Path) -> dict:
    """Median wall seconds, CPU seconds (user + system) and peak RSS (MiB) of `python CMD` over `runs`
    runs after one warm-up, and
    whether it imported torch (when CMD is the ddkit PROBE, which reports it on stderr)."""
    walls, cpus, peaks, err = [], [], [], ""
    for i in range(runs + 1):
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *cmd], env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        err = proc.stderr.read().decode()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"failed ({proc.returncode}): python {shlex.join(cmd)}\n{err}")
        if i:  # the first run warms caches (and builds the registry index)
            walls.append(wall)
            cpus.append(usage.ru_utime + usage.ru_stime)
            peaks.append(usage.ru_maxrss / 1024)
    return {"wall": statistics.median(walls), "min": min(walls), "max": max(walls), "cpu": statistics.median(cpus),
            "peak": statistics.median(peaks),
            "torch": "TORCH=1" in err if cmd[:2] == ["-c", PROBE] else True}


def make_files(folder: Path, env: dict) -> dict[str, str]:
    """A small distilled file and a catalog indexing it, made with the code under test (run from
    `folder`: with the checkout's own folder as the working directory, Python would import that one)."""
    files = {"set": str(folder / "rr.ddk.h5"), "catalog": str(folder / "cat.sqlite")}
    for argv in (["synthesize", "--dataset", "procedural", "--ipc", "2", "--out", files["set"], "--overwrite"],
                 ["catalog", "scan", files["set"], "--catalog", files["catalog"]]):
        subprocess.run([sys.executable, "-m", "ddkit", *argv], env=env, cwd=folder, check=True, capture_output=True)
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout to time the same verbs with")
    args = parser.parse_args()

    roots = {"this": ROOT} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        for label, root in roots.items():
            env = {**os.environ, "PYTHONPATH": str(root), "DDKIT_CACHE": str(Path(tmp) / f"cache-{label}"),
                   "DDKIT_PROGRESS": "0"}
            folder = Path(tmp) / label
            folder.mkdir()
            files = make_files(folder, env)
            verbs = {
                "ddkit --help": ["--help"],
                "ddkit list": ["list"],
                "ddkit describe dm": ["describe", "dm"],
                "ddkit info FILE.ddk.h5": ["info", files["set"]],
                "ddkit catalog ls": ["catalog", "ls", "--catalog", files["catalog"]],
            }
            for name, argv in verbs.items():
                if label == "baseline" and argv[0] == "describe":
                    continue  # no such verb before issue 27
                results[(label, name)] = measure(["-c", PROBE, *argv], env, args.runs, folder)
                print(label, name, results[(label, name)], flush=True)
        env = {**os.environ, "DDKIT_CACHE": str(Path(tmp) / "cache-torch")}
        results[("yardstick", "python -c 'import torch'")] = measure(["-c", "import torch"], env, args.runs, Path(tmp))

    lines = [
        "## Start-up of the verbs that need no tensors (issue 27)",
        "",
        f"Machine: {machine()}. Date: {today()}. Command: `nice -n 10 env OMP_NUM_THREADS=1 python scripts/bench_startup.py"
        + (" --baseline <checkout of the code before issue 27>" if args.baseline else "") + f"` ({args.runs} runs per "
        "command after one warm-up run that also builds the registry index `list` and `describe` read). The whole "
        "process is timed, from start to exit; CPU is its user + system time, peak its peak RSS. Wall times on a 2-core "
        "machine shared with other jobs are upper bounds (the spread shows the noise); CPU time is the steadier figure.",
        "",
        "| code | command | median wall (s) | fastest–slowest wall (s) | median CPU (s) | median peak RSS (MiB) | imports torch |",
        "|---|---|---|---|---|---|---|",
    ]
    for (label, name), r in results.items():
        code = {"this": "this branch", "baseline": "before (baseline)", "yardstick": "yardstick"}[label]
        lines.append(f"| {code} | `{name}` | {r['wall']:.2f} | {r['min']:.2f}–{r['max']:.2f} | {r['cpu']:.2f} | {r['peak']:.0f} | "
                     f"{'yes' if r['torch'] else 'no'} |")
    write_section("startup", "\n".join(lines))


if __name__ == "__main__":
    main()
