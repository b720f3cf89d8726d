"""Progress of long work, in any log, on rank 0 only.

On a terminal a stage is a tqdm bar. Anywhere else (nohup, a batch scheduler's log, a pipe) a bar's
carriage returns are noise, so a stage writes plain lines instead: one when it starts, one every
$DDKIT_PROGRESS_INTERVAL seconds (default 30) with done/total, the elapsed time and an estimate of
the time left, and one when it ends.

$DDKIT_PROGRESS: `auto` (default: bars on a terminal, lines otherwise), `1` (the same, also where
`auto` would be silent), `bar` (tqdm bars even in a pipe), `log` (lines even on a terminal), `0` (off).
Ranks other than 0 are always silent.
"""

from __future__ import annotations

import os
import sys
import time

_OFF = ("0", "false", "no", "off")


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def mode() -> str:
    """How progress is shown here: "bar", "log" or "off"."""
    setting = os.environ.get("DDKIT_PROGRESS", "auto").strip().lower()
    if _rank() != 0 or setting in _OFF:
        return "off"
    if setting in ("bar", "log"):
        return setting
    return "bar" if sys.stderr.isatty() else "log"


def interval() -> float:
    try:
        return max(0.0, float(os.environ.get("DDKIT_PROGRESS_INTERVAL", "30")))
    except ValueError:
        return 30.0


def progress(iterable=None, total: int | None = None, desc: str = "", **kwargs):
    """A progress record of one stage: a tqdm bar on a terminal, `LogProgress` lines otherwise
    (see the module docstring); silent on ranks other than 0 and with DDKIT_PROGRESS=0."""
    shown = mode()
    if shown == "log":
        return LogProgress(iterable, total=total, desc=desc, **kwargs)
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=shown == "off", dynamic_ncols=True, leave=False, **kwargs)


def say(message: str) -> None:
    """One log line on stderr (rank 0 only), printed so that it does not break a progress bar."""
    if _rank() != 0:
        return
    if mode() == "bar":
        from tqdm.auto import tqdm

        tqdm.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr, flush=True)


def clock_text(seconds: float) -> str:
    """0:42, 12:05, 3:04:59."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class LogProgress:
    """tqdm's interface as used in ddkit (`update`, `set_postfix`, `close`, iteration), written as
    plain lines: the start, every `every` seconds done/total with an estimate, the end."""

    def __init__(self, iterable=None, total: int | None = None, desc: str = "", initial: int = 0, unit: str = "it",
                 every: float | None = None, clock=time.monotonic, write=None, **_ignored):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.unit = total, desc or "working", unit
        self.n = self.initial = initial
        self.every = interval() if every is None else every
        self.clock = clock
        self.write = write or (lambda line: print(line, file=sys.stderr, flush=True))
        self.start = self.last = clock()
        self.postfix = ""
        self.closed = False
        of = f" of {total} {unit}" if total is not None else ""
        self.write(f"{self.desc}: started{of}" + (f" (from {initial})" if initial else ""))

    def _count(self) -> str:
        return f"{self.n}/{self.total} {self.unit}" if self.total is not None else f"{self.n} {self.unit}"

    def status(self) -> str:
        """The periodic line: done/total, percent, elapsed, and the time left at the rate so far."""
        elapsed = self.clock() - self.start
        parts = [self._count()]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{clock_text(elapsed)} elapsed")
        done = self.n - self.initial
        if self.total is not None and done > 0 and self.n < self.total:
            parts.append(f"about {clock_text(elapsed / done * (self.total - self.n))} left")
        line = f"{self.desc}: " + ", ".join(parts)
        return line + (f" [{self.postfix}]" if self.postfix else "")

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last >= self.every and not self.closed:
            self.last = now
            self.write(self.status())

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in items.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.write(f"{self.desc}: done, {self._count()} in {clock_text(self.clock() - self.start)}"
                       + (f" [{self.postfix}]" if self.postfix else ""))

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
