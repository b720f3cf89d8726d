"""Which hardware and library do the distance work: chosen once per process and reported.

- A GPU and `faiss-gpu`: FAISS on the GPU.
- A GPU without `faiss-gpu`: torch on the GPU (cuBLAS distance blocks), with a hint to install it.
- No GPU: the CPU. There the distance blocks (‖x‖² − 2x·y + ‖y‖², then the top-k) run either in
  FAISS or in torch, whichever a short measured check finds faster for the problem's dimension and
  k regime. Why a check: the PyPI `faiss-cpu` wheel bundles an OpenBLAS (0.3.15) that does not know
  recent CPUs and its per-pair top-k reduction is scalar, so on some machines torch's BLAS (MKL) with
  a vectorized top-k is several times faster, on others FAISS is; measuring is cheaper than guessing.
  The check runs once per (dimension bucket, k regime) per process and its numbers are in the report.

`DDKIT_INDEX_ENGINE=faiss|torch` pins the engine (e.g. for bit-identical reruns); every function
also takes `engine=`. Nothing here changes global settings (thread counts, BLAS core types).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ddkit.errors import InvalidInput

ENGINES = ("faiss", "torch")
# Below this many multiply-adds a call is too small for the engine choice to matter: use FAISS.
_SMALL_WORK = 1 << 26


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
            text += (f"; distance blocks {key}: faiss {check['faiss']:.1f}, torch {check['torch']:.1f} GFLOP/s "
                     f"-> {check['chosen']}")
        return text

    def to_dict(self) -> dict:
        return {"device": self.device, "library": self.library, "faiss_version": self.faiss_version,
                "reason": self.reason, "pinned_engine": self.pinned_engine, "checks": dict(self.checks)}


_lock = threading.Lock()
_backend: Backend | None = None


def _faiss():
    import faiss

    return faiss


def _detect() -> Backend:
    pinned = os.environ.get("DDKIT_INDEX_ENGINE") or None
    if pinned is not None and pinned not in ENGINES + ("auto",):
        raise InvalidInput(f"DDKIT_INDEX_ENGINE={pinned!r} is not one of faiss, torch, auto", "unset it or use one of those")
    pinned = None if pinned == "auto" else pinned
    try:
        faiss = _faiss()
        version = getattr(faiss, "__version__", "unknown")
    except ImportError:
        faiss, version = None, None
    gpus = 0
    if faiss is not None and hasattr(faiss, "get_num_gpus"):
        try:
            gpus = int(faiss.get_num_gpus())
        except Exception:  # noqa: BLE001 - a CPU build may expose the symbol and fail
            gpus = 0
    if torch.cuda.is_available():
        if gpus > 0:
            return Backend("cuda", "faiss-gpu", version, f"GPU {torch.cuda.get_device_name(0)} and faiss-gpu {version}", pinned)
        return Backend("cuda", "torch-cuda", version,
                       f"GPU {torch.cuda.get_device_name(0)} but no faiss-gpu (pip install -e '.[gpu]'); torch does the GPU work",
                       pinned or "torch")
    if faiss is None:
        return Backend("cpu", "torch-cpu", None, "no GPU and faiss is not installed; torch does the distance work", "torch")
    return Backend("cpu", "faiss-cpu", version, "no GPU; CPU distance blocks by FAISS or torch, chosen by a measured check", pinned)


def backend() -> Backend:
    """The process's backend (detected on first use, then fixed)."""
    global _backend
    with _lock:
        if _backend is None:
            _backend = _detect()
        return _backend


def reset_backend() -> None:
    """Forget the detected backend and its checks (for tests and benchmarks)."""
    global _backend
    with _lock:
        _backend = None


def _bucket(d: int) -> int:
    return 1 << max(4, int(np.ceil(np.log2(max(d, 1)))))


def check_engine(engine: str) -> str:
    if engine not in ENGINES + ("auto",):
        raise InvalidInput(f"engine must be 'auto', 'faiss' or 'torch', got {engine!r}")
    return engine


def choose_engine(d: int, k: int, work: int, engine: str = "auto") -> str:
    """The engine for a search of dimension `d`, `k` neighbours and `work` multiply-adds."""
    check_engine(engine)
    b = backend()
    if engine != "auto":
        if engine == "faiss" and b.library in ("torch-cpu",):
            raise InvalidInput("engine 'faiss' was asked but faiss is not installed", "pip install faiss-cpu")
        return engine
    if b.pinned_engine:
        return b.pinned_engine
    if b.library == "faiss-gpu":
        return "faiss"
    if work < _SMALL_WORK:
        return "faiss"
    key = f"d={_bucket(d)},{'k=1' if k == 1 else 'k>1'}"
    with _lock:
        check = b.checks.get(key)
    if check is None:
        check = _measure(_bucket(d), 1 if k == 1 else 10)
        with _lock:
            b.checks[key] = check
    return check["chosen"]


def _measure(d: int, k: int, reps: int = 3) -> dict:
    """GFLOP/s of both CPU engines on one synthetic search of dimension `d` (about 1 GFLOP)."""
    from ddkit.index.search import search_blocks

    rng = np.random.default_rng(0)
    nq = 1024
    nb = int(np.clip((1 << 29) // (nq * d), 4096, 65536))
    queries = rng.standard_normal((nq, d), dtype=np.float32)
    database = rng.standard_normal((nb, d), dtype=np.float32)
    best = {e: float("inf") for e in ENGINES}
    for _ in range(reps):
        for e in ENGINES:  # alternate, so a burst of load elsewhere hits both
            start = time.perf_counter()
            search_blocks(queries, database, k, e, torch.device("cpu"))
            best[e] = min(best[e], time.perf_counter() - start)
    flops = 2.0 * nq * nb * d
    rates = {e: flops / best[e] / 1e9 for e in ENGINES}
    return {**rates, "chosen": max(ENGINES, key=lambda e: rates[e])}
