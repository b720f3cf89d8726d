"""Shared helpers of the benchmark scripts: machine description, running a timed command, and
replacing one marked section of BENCHMARKS.md so each script owns its own table."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "BENCHMARKS.md"


def machine() -> str:
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}; Python {platform.python_version()}, torch {torch.__version__}"


def today() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")


def run(cmd: list[str], env: dict | None = None) -> tuple[float, str]:
    """Run a command, fail loudly, return (wall seconds, stdout)."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"command failed ({proc.returncode}): {shlex.join(cmd)}")
    return wall, proc.stdout


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section between `<!-- BEGIN name -->` and `<!-- END name -->`."""
    import fcntl

    # Several benchmark scripts run at once and each rewrites the whole file: the lock makes each
    # read-modify-write whole, so no script's section is lost to another's stale copy.
    with open(BENCHMARKS.with_suffix(".md.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
        block = f"<!-- BEGIN {name} -->\n{body.rstrip()}\n<!-- END {name} -->"
        pattern = re.compile(rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->", re.S)
        text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
        tmp = BENCHMARKS.with_suffix(f".md.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, BENCHMARKS)


def pct(mean: float, std: float | None = None) -> str:
    return f"{100 * mean:.2f}" if std is None else f"{100 * mean:.2f} ± {100 * std:.2f}"


def record_state(path: Path, key: str, entry: dict) -> None:
    """Add `entry` under `key` to a benchmark's JSON state file, atomically and under a lock, so
    several lanes of one script can share the file without losing each other's entries."""
    import fcntl
    import json

    from ddkit.fileio import atomic_output

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = json.loads(path.read_text()) if path.exists() else {}
        state[key] = entry
        with atomic_output(path, overwrite=True) as tmp:
            tmp.write_text(json.dumps(state, indent=1))


def _tree(root: int) -> list[int]:
    """`root` and its live descendants (from /proc: no psutil needed)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def _memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB; PSS shares pages among the processes that map them."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def run_watched(cmd: list[str], env: dict | None = None, interval: float = 0.2) -> dict:
    """Run a command, sampling memory every `interval` s; fail loudly.

    Returns wall seconds, stdout/stderr, the peak RSS of the main process, and the peak PSS summed
    over the process tree (main + decoding workers: shared pages counted once), in MiB.
    """
    import threading

    peaks = {"main_rss": 0, "tree_pss": 0, "tree_rss": 0, "processes": 1}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    done = threading.Event()

    def watch():
        while not done.is_set():
            pids = _tree(proc.pid)
            mem = [_memory_kib(p) for p in pids]
            peaks["main_rss"] = max(peaks["main_rss"], mem[0][0])
            peaks["tree_pss"] = max(peaks["tree_pss"], sum(p for _, p in mem))
            peaks["tree_rss"] = max(peaks["tree_rss"], sum(r for r, _ in mem))
            peaks["processes"] = max(peaks["processes"], len(pids))
            done.wait(interval)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    out, err = proc.communicate()
    done.set()
    thread.join()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(out + err)
        raise SystemExit(f"command failed ({proc.returncode}): {shlex.join(cmd)}")
    return {"wall": wall, "stdout": out, "stderr": err, "main_rss_mib": peaks["main_rss"] / 1024,
            "tree_pss_mib": peaks["tree_pss"] / 1024, "tree_rss_mib": peaks["tree_rss"] / 1024,
            "processes": peaks["processes"], "command": shlex.join(cmd)}
