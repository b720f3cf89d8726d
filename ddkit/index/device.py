"""Which hardware and library do the distance work: chosen per process and run device, and reported.

The device is the run's (`--device`, resolved by `training.pick_device` and passed down as
`device=`), not what happens to be installed: `device="cpu"` keeps the distance work on the CPU even
on a machine with a GPU and `faiss-gpu`. `device=None` (or "auto") means the GPU when there is one.

- device cuda with `faiss-gpu`: FAISS on the GPU.
- device cuda without `faiss-gpu`: torch on the GPU (cuBLAS distance blocks); one log line says so
  and how to install it (docs/design.md, "Devices").
- device cpu: the CPU. There an *engine* runs the distance blocks (‖x‖² − 2x·y + ‖y‖², then the
  top-k): FAISS or torch, each with the process's thread count or single-threaded (`faiss:1`,
  `torch:1`), whichever a short measured check finds fastest for the problem's dimension and
  k regime. Why a check and why single-threaded candidates: the PyPI `faiss-cpu` wheel runs its
  OpenMP threads with spin-waiting, and on a small machine whose cores are shared (or
  oversubscribed) its multi-threaded search collapses to a fraction of what one thread does, while
  on an idle many-core machine the threads win; its bundled OpenBLAS (0.3.15) also predates some
  CPUs (it reports Zen 4 as "Zen"). Measuring is cheaper and more honest than guessing. The check
  runs once per (dimension bucket, k regime) per process; its numbers are in the report.

`DDKIT_INDEX_ENGINE=faiss|torch|faiss:1|torch:1` pins the engine (e.g. for bit-identical reruns);
every function also takes `engine=`. Nothing here changes global settings: a single-threaded
engine sets the library's thread count for the duration of the call and restores it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, field
from typing import Callable

import torch

from ddkit.errors import InvalidInput
from ddkit.progress import say

ENGINES = ("faiss", "torch")  # libraries; an engine is "<library>" or "<library>:<threads>"


@dataclass
class Backend:
    """Where the distance work runs, why, and what the measured checks found."""

    device: str  # "cpu" | "cuda"
    library: str  # "faiss-cpu" | "faiss-gpu" | "torch-cuda"
    faiss_version: str | None
    reason: str
    pinned_engine: str | None = None  # from DDKIT_INDEX_ENGINE
    checks: dict = field(default_factory=dict)  # "d=64,k>1" -> {"faiss": GFLOP/s, "torch": GFLOP/s, "chosen": ...}

    @property
    def gpu(self) -> bool:
        return self.device == "cuda"

    def describe(self) -> str:
        text = f"ddkit.index: {self.library} on {self.device} ({self.reason})"
        if self.pinned_engine:
            text += f"; engine pinned to {self.pinned_engine} by DDKIT_INDEX_ENGINE"
        for key, check in sorted(self.checks.items()):
            rates = ", ".join(f"{e} {v:.1f}" for e, v in check.items() if e != "chosen")
            text += f"; distance blocks {key}: {rates} GFLOP/s -> {check['chosen']}"
        return text

    def to_dict(self) -> dict:
        return {"device": self.device, "library": self.library, "faiss_version": self.faiss_version,
                "reason": self.reason, "pinned_engine": self.pinned_engine, "checks": dict(self.checks)}


_lock = threading.Lock()
_backends: dict[str, Backend] = {}  # per device kind ("cpu", "cuda"), detected on first use


def _faiss():
    import faiss

    return faiss


def device_kind(device=None) -> str:
    """"cpu" or "cuda" for a run device (a `torch.device`, "cpu", "cuda", "cuda:1", …); None or
    "auto": the GPU when there is one. A GPU asked for where there is none is an error."""
    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise InvalidInput(f"device must be cpu, cuda or auto, got {device!r}") from None
    if kind not in ("cpu", "cuda"):
        raise InvalidInput(f"the index runs on cpu or cuda, not {kind!r}", "use --device cpu or --device cuda")
    if kind == "cuda" and not torch.cuda.is_available():
        raise InvalidInput("CUDA was requested but no GPU is available", "use --device cpu")
    return kind


def _pinned_engine() -> str | None:
    pinned = os.environ.get("DDKIT_INDEX_ENGINE") or None
    if pinned is not None and pinned != "auto":
        try:
            parse_engine(pinned)
        except InvalidInput:
            raise InvalidInput(f"DDKIT_INDEX_ENGINE={pinned!r} is not one of faiss, torch, faiss:1, torch:1, auto",
                               "unset it or use one of those") from None
    return None if pinned == "auto" else pinned


def _detect(kind: str) -> Backend:
    pinned = _pinned_engine()
    try:
        faiss = _faiss()
        version = getattr(faiss, "__version__", "unknown")
    except ImportError:
        faiss, version = None, None
    if kind == "cuda":
        gpus = 0
        if faiss is not None and hasattr(faiss, "get_num_gpus"):
            try:
                gpus = int(faiss.get_num_gpus())
            except Exception:  # noqa: BLE001 - a CPU build may expose the symbol and fail
                gpus = 0
        name = torch.cuda.get_device_name()
        if gpus > 0:
            return Backend("cuda", "faiss-gpu", version, f"GPU {name} and faiss-gpu {version}", pinned)
        made = Backend("cuda", "torch-cuda", version,
                       f"GPU {name} but no faiss-gpu (pip install -e '.[gpu]'); torch does the GPU work",
                       pinned or "torch")
        say(f"ddkit.index: the run is on the GPU but faiss-gpu is not installed: torch does the distance work on "
             f"{name} (pip install -e '.[gpu]' for FAISS on the GPU)")
        return made
    where = "no GPU" if not torch.cuda.is_available() else "the run's device is the CPU (a GPU is present)"
    if faiss is None:
        return Backend("cpu", "torch-cpu", None, f"{where} and faiss is not installed; torch does the distance work",
                       "torch")
    return Backend("cpu", "faiss-cpu", version, f"{where}; CPU distance blocks by FAISS or torch, chosen by a measured check",
                   pinned)


def backend(device=None) -> Backend:
    """The backend for a run on `device` (detected on first use per device kind, then fixed)."""
    kind = device_kind(device)
    with _lock:
        if kind not in _backends:
            _backends[kind] = _detect(kind)
        return _backends[kind]


def index_device(device=None) -> torch.device:
    """The torch device the index's own tensors live on for a run on `device`."""
    return torch.device(backend(device).device)


def reset_backend() -> None:
    """Forget the detected backends and their checks (for tests and benchmarks)."""
    with _lock:
        _backends.clear()


def parse_engine(engine: str) -> tuple[str, int | None]:
    """"faiss" -> ("faiss", None): library and thread count (None: the process's default)."""
    library, sep, threads = str(engine).partition(":")
    if library not in ENGINES or (sep and not threads.isdigit()) or (sep and int(threads) < 1):
        raise InvalidInput(f"engine must be 'auto', 'faiss', 'torch' or one of those with ':<threads>' (e.g. 'faiss:1'), got {engine!r}")
    return library, (int(threads) if sep else None)


def check_engine(engine: str) -> str:
    if engine != "auto":
        parse_engine(engine)
    return engine


@contextlib.contextmanager
def engine_threads(engine: str):
    """Run the block with the engine's thread count, restoring the library's setting afterwards."""
    library, threads = parse_engine(engine)
    if threads is None:
        yield
        return
    if library == "faiss":
        import faiss

        get, set_ = faiss.omp_get_max_threads, faiss.omp_set_num_threads
    else:
        get, set_ = torch.get_num_threads, torch.set_num_threads
    old = get()
    set_(threads)
    try:
        yield
    finally:
        set_(old)


def candidate_engines() -> list[str]:
    """The CPU engines the measured check compares."""
    many = max(torch.get_num_threads(), _faiss().omp_get_max_threads()) > 1
    return ["faiss", "torch"] + (["faiss:1", "torch:1"] if many else [])


def measured_check(key: str, measure: Callable[[], dict], device=None) -> dict:
    """The backend's measured check `key` ("d=64,k>1"), run by `measure` on first use, then kept
    for the report (`Backend.describe`)."""
    b = backend(device)
    with _lock:
        check = b.checks.get(key)
    if check is None:
        check = measure()
        with _lock:
            b.checks[key] = check
    return check
