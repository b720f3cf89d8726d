"""Replay every issue-26 sharing case in a fresh process and count, per surface, what went wrong.

For every module named in `tests/sharing_cases.ALL_CASE_MODULES` that imports (a branch may lack
one), every case in its `CASES` is built in-process in its own folder `ROOT/NNN/work` (with
`ROOT/NNN/work-outside` standing for "outside"), then its `ddkit` command runs in a fresh process
with `work` as the current folder, under

- `strace -f -y -e trace=file` (when `strace` is installed: `apt-get install strace`), so every
  file the command opened, created, renamed or removed is known; an access counts as *outside*
  when its path (links resolved) lies under `ROOT/NNN` but under none of the case's `inside`
  folders (without strace, a change to any file under `ROOT/NNN` outside `inside` is counted);
- an RSS cap (`--rss-cap-mib`, default 3072: the process tree is sampled every 100 ms and killed
  above it). The peak reported is the largest sum over the tree of each process's own high-water
  mark (`VmHWM`, which the kernel keeps since the process's `exec`, so a spike between two samples
  still counts; the benchmark's own memory, shared with the child until its `exec`, does not);
- a timeout (the process group is killed): after `--timeout` seconds of CPU time (default 60), after
  `--stall` seconds (default 60) in which the process tree used no CPU at all (blocked: a FIFO, a
  lock), or after `--wall-timeout` seconds of wall time (default 900). CPU time, not wall time,
  because on a shared machine under load a command that takes 5 s alone can take minutes of wall
  time; a blocked command shows no CPU progress however loaded the machine is.

Per surface the `reliability-sharing` section of BENCHMARKS.md gets: cases, clean, peak RSS, outside
accesses, crashes (death by a signal), hangs (timeouts), tracebacks, leftovers (temporary files, a
refused case's outputs, changes outside), and a list of every case that was not clean. A case is
clean when it ended as expected ("refused": non-zero exit with one `error:` line, or `validate`'s
report with `[FAIL]` lines; "ok": exit 0), with
no traceback, crash, hang, outside access or leftover, and its `CHECKS` entry (if any) holds. (Click's
own usage errors, `Error: Invalid value …`, count as the one clear message.)

    nice -n 10 env OMP_NUM_THREADS=1 python scripts/bench_reliability_sharing.py [--only TEXT] [--fuzz N]
        [--jobs J] [--until HH:MM]

Each case's command gets this checkout first on `PYTHONPATH` (checked once before the first case:
an editable install may point at another checkout). `--jobs J` replays J cases at once; `--until`
starts no case or mutant after that local time, and the section lists what was not replayed.

`--fuzz N` adds a header-fuzz row: `tests/crafted_hdf5.header_fuzz` runs in one fresh process beside
the case replays (under `strace -f`), reading each mutant in a forked child, and returns the counts of
one row (cases, clean, peak_rss_mib, crashes, hangs, tracebacks, leftovers, "unclean": [(id, reason)],
"pids"); outside accesses are counted here from the log. Wall times are upper bounds: the machine is shared.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))
from benchlib import _memory_kib, _tree, machine, today, write_section  # noqa: E402
from sharing_cases import ALL_CASE_MODULES, SharingCase  # noqa: E402

OPENS = {"open", "openat", "openat2", "creat"}
CHANGES = {"unlink", "unlinkat", "rename", "renameat", "renameat2", "mkdir", "mkdirat", "rmdir", "symlink",
           "symlinkat", "link", "linkat", "truncate", "chmod", "fchmodat", "mknod", "mknodat"}
TEMP = re.compile(r"^\..*\.(tmp|old|probe)$")
_CALL = re.compile(r"^(\d+)\s+(\w+)\((.*)\)\s+=\s+(-?\d+|\?)")
_STRING = re.compile(r'(?:(\d+|AT_FDCWD)(?:<([^>]*)>)?,\s*)?"((?:[^"\\]|\\.)*)"')


@dataclass
class Outcome:
    case: SharingCase
    code: int | None
    output: str
    peak_mib: float
    wall: float
    hang: bool = False
    capped: bool = False
    outside: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    check_failed: str = ""

    @property
    def crash(self) -> bool:
        return not self.hang and not self.capped and self.code is not None and (self.code < 0 or self.code >= 128)

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.output

    @property
    def expected(self) -> bool:
        if self.code is None:
            return False
        if self.case.expect == "ok":
            return self.code == 0
        errors = [line for line in self.output.splitlines() if line.lower().startswith("error:")]  # ddkit's or click's
        report = not errors and any(line.lstrip().startswith("[FAIL]") for line in self.output.splitlines())
        return self.code not in (0, None) and (len(errors) == 1 or report)  # `validate` refuses with its report

    @property
    def clean(self) -> bool:
        return (self.expected and not (self.hang or self.capped or self.crash or self.traceback or self.outside
                                       or self.leftovers or self.check_failed))

    def reason(self) -> str:
        parts = []
        if not self.expected:
            parts.append(f"exit {self.code} (expected {self.case.expect})")
        for flag in ("hang", "capped", "crash", "traceback"):
            if getattr(self, flag):
                parts.append(flag)
        if self.outside:
            parts.append(f"outside: {', '.join(sorted(set(self.outside))[:3])}")
        if self.leftovers:
            parts.append(f"left: {', '.join(self.leftovers[:3])}")
        if self.check_failed:
            parts.append(f"check: {self.check_failed[:120]}")
        last = [line for line in self.output.strip().splitlines() if line.strip()][-1:] or [""]
        return "; ".join(parts) + (f" — `{last[0][:140]}`" if parts else "")


def _unescape(text: str) -> str:
    return text.encode("latin-1", "backslashreplace").decode("unicode_escape", "replace")


def _calls(log: Path):
    """(pid, syscall, arguments, result) of every finished call in an `strace -f` log, the halves of an
    interrupted call (`<unfinished ...>` / `<... resumed>`) joined."""
    pending: dict[str, str] = {}
    for raw in log.read_text(errors="replace").splitlines():
        pid = raw.split(" ", 1)[0]
        if raw.endswith("<unfinished ...>"):
            pending[pid] = raw[: -len("<unfinished ...>")]
            continue
        if "resumed>" in raw and pid in pending:
            raw = pending.pop(pid) + raw.split("resumed>", 1)[1]
        match = _CALL.match(raw)
        if match:
            yield int(match.group(1)), match.group(2), match.group(3), match.group(4)


def _paths(call: str, arguments: str, cwd: Path) -> list[str]:
    """The absolute paths a file call named (relative ones against its directory fd, or `cwd`)."""
    found = []
    for dirfd, dirpath, text in _STRING.findall(arguments):
        path = _unescape(text)
        if not os.path.isabs(path):
            base = dirpath if dirpath and dirfd not in ("", "AT_FDCWD") else str(cwd)
            path = os.path.join(base, path)
        found.append(path)
    return found


def _succeeded(result: str) -> bool:
    return result != "?" and int(result) >= 0


def _accesses(log: Path, cwd: Path) -> list[tuple[str, str]]:
    """(syscall, absolute path) of every successful open or change in an `strace -f -y` log."""
    return [(call, path) for _, call, arguments, result in _calls(log)
            if (call in OPENS or call in CHANGES) and _succeeded(result) for path in _paths(call, arguments, cwd)]


def _resolved(call: str, path: str) -> str:
    """Where an access really went: an open follows links; a change acts on the last name itself."""
    if call in OPENS:
        return os.path.realpath(path)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _snapshot(folder: Path, skip: list[str]) -> dict[str, tuple]:
    out = {}
    for path in folder.rglob("*"):
        real = str(path)
        if any(_under(real, s) for s in skip):
            continue
        with contextlib.suppress(OSError):
            st = path.lstat()
            out[real] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def _high_water_kib(pid: int) -> int:
    """A process's peak resident set since its exec (VmHWM), in KiB; 0 once it is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICK


@dataclass(frozen=True)
class Limits:
    cpu: float = 60.0  # seconds of CPU time
    stall: float = 60.0  # seconds of wall time without any CPU progress
    wall: float = 900.0
    rss_mib: float = 3072.0


def child_env(work: Path) -> dict[str, str]:
    """The environment of a case's command: this checkout's ddkit first on the path (an editable install
    may point at another checkout), one thread, no progress bars, the cache inside the case's folder."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
            "OMP_NUM_THREADS": "1", "DDKIT_PROGRESS": "0", "DDKIT_CACHE": str(work / ".ddkit-cache")}


def check_plumbing(folder: Path) -> None:
    """Refuse to run when a fresh process started as the cases are would import ddkit from elsewhere."""
    folder.mkdir(parents=True, exist_ok=True)
    found = subprocess.run([sys.executable, "-c", "import ddkit; print(ddkit.__file__)"], cwd=folder,
                           env=child_env(folder), capture_output=True, text=True, check=True).stdout.strip()
    if not _under(os.path.realpath(found), os.path.realpath(ROOT / "ddkit")):
        sys.exit(f"error: a fresh process imports ddkit from {found}, not from {ROOT}: fix PYTHONPATH")


def replay(case: SharingCase, base: Path, strace: str | None, limits: Limits) -> Outcome:
    """Build `case` under `base/work` and run its command in a fresh process (see the module docstring)."""
    work = base / "work"
    work.mkdir(parents=True)
    argv = case.build(work)
    inside = [os.path.realpath(p if os.path.isabs(p) else work / p) for p in case.inside]
    (work / ".ddkit-cache").mkdir(exist_ok=True)  # made here: the cache's own creation is no change to `work`
    inside.append(os.path.realpath(work / ".ddkit-cache"))
    before = _snapshot(base, inside)
    env = child_env(work)
    # -P: no current folder on sys.path, as for the installed `ddkit` command (and no import scan of `work`)
    command = [sys.executable, "-P", "-m", "ddkit", *argv]
    log = base / "strace.log"
    if strace:
        command = [strace, "-f", "--seccomp-bpf", "-y", "-qq", "-s", "4096", "-e", "trace=file", "-e", "signal=none",
                   "-o", str(log),
                   *command]
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(command, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        peak = [0.0]
        state = {"capped": False, "hang": False}
        done = threading.Event()

        def watch():
            cpu, progressed = 0.0, time.perf_counter()
            while not done.is_set():
                pids = _tree(proc.pid)
                rss = sum(_memory_kib(pid)[0] for pid in pids) / 1024
                peak[0] = max(peak[0], sum(_high_water_kib(pid) for pid in pids) / 1024)
                now_cpu, now = _cpu_seconds(pids), time.perf_counter()
                if now_cpu > cpu:
                    cpu, progressed = max(cpu, now_cpu), now
                over = rss > limits.rss_mib
                if over or cpu > limits.cpu or now - progressed > limits.stall or now - start > limits.wall:
                    state["capped" if over else "hang"] = True
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    return
                done.wait(0.1)

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        _, status, _ = os.wait4(proc.pid, 0)
        done.set()
        thread.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # nothing of the case outlives it
        out.seek(0)
        text = out.read()
    outcome = Outcome(case, proc.returncode, text, peak[0], time.perf_counter() - start,
                      hang=state["hang"], capped=state["capped"])
    root = os.path.realpath(base)
    if strace and log.exists():
        for call, path in _accesses(log, work):
            real = _resolved(call, path)
            if _under(real, root) and not _under(real, os.path.realpath(log)) and not any(_under(real, i) for i in inside):
                outcome.outside.append(os.path.relpath(real, root))
        log.unlink()
    after = _snapshot(base, inside)
    changed = sorted(set(before.items()) ^ set(after.items()))
    outcome.leftovers += sorted({os.path.relpath(path, root) for path, _ in changed})
    outcome.leftovers += [str(p.relative_to(work)) for p in work.rglob("*") if TEMP.match(p.name)]
    if case.expect == "refused":
        outcome.leftovers += [name for name in case.outputs if (work / name).exists()]
    checks = _checks(case)
    if checks is not None:
        try:
            checks(work, text)
        except Exception as exc:  # noqa: BLE001 — reported as the case's failure
            outcome.check_failed = f"{type(exc).__name__}: {exc}"
    return outcome


_FUZZ_RUNNER = """
import json, sys
from pathlib import Path
from crafted_hdf5 import header_fuzz
n, work, stop_at, out = int(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4])
out.write_text(json.dumps(header_fuzz(n, work, stop_at=stop_at)))
"""


def start_fuzz(n: int, folder: Path, stop_at: float, strace: str | None) -> subprocess.Popen:
    """The header fuzz (`tests/crafted_hdf5.header_fuzz`) in one fresh process, under `strace -f` when
    there is one (each mutant is read in a child it forks, so the log says what each mutant opened).
    It runs beside the case replays: a second process, so the machine's other users still get theirs."""
    work, cwd = folder / "fuzz", folder / "fuzz-cwd"  # cwd outside `work`: an import's directory scan is no access
    cwd.mkdir(parents=True)
    command = [sys.executable, "-c", _FUZZ_RUNNER, str(n), str(work), str(stop_at), str(folder / "fuzz.json")]
    if strace:
        command = [strace, "-f", "--seccomp-bpf", "-y", "-qq", "-s", "4096", "-e", "trace=file,clone,clone3,fork,vfork",
                   "-e", "signal=none", "-o", str(folder / "fuzz-strace.log"), *command]
    env = child_env(work) | {"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), child_env(work)["PYTHONPATH"]])}
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=open(folder / "fuzz.err", "w"))


def finish_fuzz(proc: subprocess.Popen, folder: Path) -> dict | None:
    """The fuzz row, with "outside" counted from the strace log: an access by a mutant's child (or a
    process it started) under the fuzz folder that is neither its own mutant file nor the cache."""
    proc.wait()
    if not (folder / "fuzz.json").exists():
        print(f"the header fuzz failed: {(folder / 'fuzz.err').read_text()[-2000:]}", file=sys.stderr)
        return None
    import json

    row = json.loads((folder / "fuzz.json").read_text())
    log = folder / "fuzz-strace.log"
    if not log.exists():
        row["outside"] = None
        return row
    work = os.path.realpath(folder / "fuzz")
    cache = os.path.join(work, "cache")
    queue = [(int(pid), mutant) for pid, mutant in row["pids"]]
    owner: dict[int, str | None] = {}
    outside: dict[str, set[str]] = {}
    for pid, call, arguments, result in _calls(log):
        if call in ("clone", "clone3", "fork", "vfork"):
            if not _succeeded(result) or int(result) == 0:
                continue
            child = int(result)
            if owner.get(pid) is None and queue and queue[0][0] == child:
                owner[child] = queue.pop(0)[1]  # the harness forking the next mutant's reader
            else:
                owner[child] = owner.get(pid)
            continue
        mutant = owner.get(pid)
        if mutant is None or (call not in OPENS and call not in CHANGES) or not _succeeded(result):
            continue
        own = os.path.join(work, "mutants", f"m{int(mutant.split()[-1]):05d}.ddk.h5")
        for path in _paths(call, arguments, folder / "fuzz-cwd"):
            real = _resolved(call, path)
            if _under(real, work) and not _under(real, cache) and real != own:
                outside.setdefault(mutant, set()).add(os.path.relpath(real, work))
    row["outside"] = len(outside)
    row["traced"] = len(row["pids"]) - len(queue)  # mutants whose reader the log showed
    already = {what.split(":", 1)[0]: what for what, _ in row["unclean"]}
    reasons = dict(row["unclean"])
    for mutant, paths in outside.items():
        if mutant not in already:
            row["clean"] -= 1
        what = already.get(mutant, mutant)
        reasons[what] = "; ".join(filter(None, [reasons.get(what), f"outside: {', '.join(sorted(paths)[:3])}"]))
    row["unclean"] = list(reasons.items())
    return row


_CHECKS: dict[str, object] = {}


def _checks(case: SharingCase):
    return _CHECKS.get(case.id)


def load_cases(only: list[str] | None) -> tuple[list[SharingCase], list[str]]:
    cases, modules = [], []
    for name in ALL_CASE_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            print(f"skipping {name}: {exc}", file=sys.stderr)
            continue
        modules.append(name)
        _CHECKS.update(getattr(module, "CHECKS", {}))
        cases += [c for c in module.CASES if only is None or any(text in c.id for text in only)]
    return cases, modules


FUZZ_ROW = Path(__file__).resolve().parent.parent / "runs" / "reliability" / "fuzz.json"


def table(outcomes: list[Outcome], fuzz: dict | None) -> list[str]:
    lines = ["| surface | cases | clean | peak RSS | outside accesses | crashes | hangs | tracebacks | leftovers |",
             "|---|---|---|---|---|---|---|---|---|"]
    surfaces = sorted({o.case.surface for o in outcomes})
    rows = [(s, [o for o in outcomes if o.case.surface == s]) for s in surfaces] + [("all", outcomes)]
    for surface, group in rows:
        name = f"**{surface}**" if surface == "all" else surface
        lines.append(
            f"| {name} | {len(group)} | {sum(o.clean for o in group)} | "
            f"{max((o.peak_mib for o in group), default=0):.0f} MiB | {sum(bool(o.outside) for o in group)} | "
            f"{sum(o.crash for o in group)} | {sum(o.hang for o in group)} | {sum(o.traceback for o in group)} | "
            f"{sum(bool(o.leftovers) for o in group)} |")
    if fuzz:
        lines.append(f"| header fuzz | {fuzz['cases']} | {fuzz['clean']} | {fuzz.get('peak_rss_mib', 0):.0f} MiB | "
                     f"{fuzz.get('outside', 0)} | {fuzz.get('crashes', 0)} | {fuzz.get('hangs', 0)} | "
                     f"{fuzz.get('tracebacks', 0)} | {fuzz.get('leftovers', 0)} |")
    return lines


def fuzz_note(fuzz: dict | None, args) -> list[str]:
    """What the header-fuzz row measured, in words (empty without a fuzz)."""
    if not fuzz:
        return []
    stopped = (f" ({args.fuzz} asked for; no mutant started after {args.until})"
               if fuzz["cases"] < args.fuzz else "")
    traced = ("not traced (no strace)" if fuzz.get("outside") is None else
              f"{fuzz.get('traced', 0)} readers seen in its `strace -f` log")
    return [f"Header fuzz: {fuzz['cases']} re-sealed mutants{stopped} of one valid `.ddk.h5`'s HDF5 metadata "
            "(`tests/crafted_hdf5.header_fuzz`, seed 26), each read as `info` and `validate` read it, in a child "
            "forked from one fresh process (ddkit forks its own structure walk below it); clean = refused with a "
            "ddkit error or a failed validation, or read with the original content hash, with nothing left behind "
            f"and nothing opened but the mutant and the cache; {traced}. Refused {fuzz.get('refused', 0)}, read "
            f"{fuzz.get('read', 0)}, read with a wrong content hash {fuzz.get('wrong', 0)}. Peak RSS is a child's "
            f"high-water mark, the forking process's pages it touched included (largest: {fuzz.get('peak_mutant')}).",
            ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=None,
                        help="replay only the cases whose id contains this text (repeatable: any of them)")
    parser.add_argument("--timeout", type=float, default=60.0, help="CPU seconds before a case counts as a hang")
    parser.add_argument("--stall", type=float, default=60.0, help="wall seconds without CPU progress: a hang")
    parser.add_argument("--wall-timeout", type=float, default=900.0)
    parser.add_argument("--rss-cap-mib", type=float, default=3072.0)
    parser.add_argument("--fuzz", type=int, default=0, help="header-fuzz mutants (tests/crafted_hdf5.header_fuzz)")
    parser.add_argument("--fuzz-from", default=None, metavar="JSON",
                        help="show the fuzz row recorded by an earlier run (every --fuzz run writes runs/reliability/"
                             "fuzz.json) instead of fuzzing again: the cases do not touch what the fuzz reads")
    parser.add_argument("--until", default=None, metavar="HH:MM",
                        help="start no case or mutant after this local time (the section says what ran)")
    parser.add_argument("--jobs", type=int, default=1, help="cases replayed at once (each in its own folder)")
    parser.add_argument("--no-strace", action="store_true", help="do not trace file accesses")
    parser.add_argument("--no-write", action="store_true", help="print the table; leave BENCHMARKS.md alone")
    args = parser.parse_args()

    strace = None if args.no_strace else shutil.which("strace")
    if strace is None and not args.no_strace:
        print("strace not found (apt-get install strace): outside accesses are judged from file changes only",
              file=sys.stderr)
    cases, modules = load_cases(args.only)
    outcomes = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ddkit-sharing-") as tmp:
        check_plumbing(Path(tmp) / "plumbing")
        stop_at = float("inf")
        if args.until:
            hour, minute = map(int, args.until.split(":"))
            stop_at = time.mktime(time.localtime()[:3] + (hour, minute, 0, 0, 0, -1))
        fuzz_proc = start_fuzz(args.fuzz, Path(tmp), stop_at, strace) if args.fuzz else None
        limits = Limits(args.timeout, args.stall, args.wall_timeout, args.rss_cap_mib)

        def one(i: int, case: SharingCase) -> Outcome | None:
            if time.time() > stop_at:
                return None
            try:
                outcome = replay(case, Path(tmp) / f"{i:03d}", strace, limits)
            except Exception as exc:  # noqa: BLE001 — a case that cannot be built is reported, not fatal
                outcome = Outcome(case, None, f"build failed: {type(exc).__name__}: {exc}", 0.0, 0.0,
                                  check_failed="build failed")
            print(f"{'clean ' if outcome.clean else 'UNCLEAN'} {outcome.peak_mib:6.0f} MiB {outcome.wall:5.1f} s  "
                  f"{case.id}" + ("" if outcome.clean else f"  [{outcome.reason()}]"), flush=True)
            return outcome

        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            results = list(pool.map(one, range(len(cases)), cases))
        outcomes = [o for o in results if o is not None]
        skipped = [c for c, o in zip(cases, results) if o is None]
        fuzz = finish_fuzz(fuzz_proc, Path(tmp)) if fuzz_proc else None
    wall = time.perf_counter() - started
    if fuzz is not None:
        FUZZ_ROW.parent.mkdir(parents=True, exist_ok=True)
        FUZZ_ROW.write_text(json.dumps({**fuzz, "asked": args.fuzz, "until": args.until, "date": today(),
                                        "command": " ".join(["python", *sys.argv])}))
    elif args.fuzz_from:
        fuzz = json.loads(Path(args.fuzz_from).read_text())
        args.fuzz, args.until = fuzz.get("asked", fuzz["cases"]), fuzz.get("until")
    lines = table(outcomes, fuzz)
    unclean = [o for o in outcomes if not o.clean]
    extra = [f"({id_}: {why})" for id_, why in (fuzz or {}).get("unclean", [])[:20]]
    body = [
        "## Reliability: sharing (issue 26)",
        "",
        f"Every sharing case of {', '.join(f'`tests/{m}.py`' for m in modules)} replayed in a fresh process "
        f"(`{'strace -f -e trace=file, ' if strace else ''}RSS cap {args.rss_cap_mib:.0f} MiB, "
        f"{args.timeout:.0f} s of CPU or {args.stall:.0f} s without CPU progress = a hang`). *Outside accesses*: cases that opened, created, renamed or removed a path "
        "under the case's folder but outside what the user named (links resolved); *leftovers*: cases that left a "
        "temporary file, a refused output, or a change outside. Peak RSS includes Python + torch start-up.",
        "",
        f"Command: `nice -n 10 env OMP_NUM_THREADS=1 python scripts/bench_reliability_sharing.py"
        f"{''.join(' ' + a for a in sys.argv[1:])}`; {machine()}; {today()}; "
        f"{len(outcomes)} cases in {wall / 60:.1f} min (an upper bound: a shared 2-core machine"
        f"{f', {args.jobs} cases at once' if args.jobs > 1 else ''}).",
        *([f"Not replayed (not started by {args.until}): {len(skipped)} cases: "
           + ", ".join(f"`{c.id}`" for c in skipped) + "."] if skipped else []),
        "",
        *lines,
        "",
        *fuzz_note(fuzz, args),
        *([f"(The header-fuzz row is the one recorded by `{fuzz['command']}` on {fuzz['date']} "
           f"(`--fuzz-from {args.fuzz_from}`); the cases above were replayed by this command.)", ""]
          if args.fuzz_from and "command" in fuzz else []),
        "Not clean: " + ("none." if not unclean and not extra else ""),
    ]
    body += [f"- `{o.case.id}`: {o.reason()}" for o in unclean] + [f"- {e}" for e in extra]
    text = "\n".join(body)
    print(text)
    if not args.no_write and args.only is None:
        write_section("reliability-sharing", text)


if __name__ == "__main__":
    main()
