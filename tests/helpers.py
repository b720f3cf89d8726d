"""Helpers shared by several test files (importable: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import contextlib
import inspect

import h5py
import pytest
import torch

from ddkit.cli import main
from ddkit.models import MODELS
from ddkit.store.h5io import seal


@contextlib.contextmanager
def edit(path):
    """Edit a ddkit file with h5py and re-seal it: a crafted file that passes the byte-level seal,
    so the deeper checks (content hash, schema, structure) are what must refuse it."""
    with h5py.File(path, "r+") as f:
        yield f
    seal(path)


def kill_at_call(monkeypatch, owner, name: str, at: int, after: bool = False) -> dict:
    """Make `owner.name` raise KeyboardInterrupt (a simulated kill) on its `at`-th call: before the call
    runs, or just after it with `after`. Returns the call counter ({"n": calls so far}); set it below 0
    to let the next calls through."""
    real, calls = getattr(owner, name), {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at and not after:
            raise KeyboardInterrupt("simulated kill")
        result = real(*args, **kwargs)
        if calls["n"] == at:
            raise KeyboardInterrupt("simulated kill")
        return result

    monkeypatch.setattr(owner, name, dying)
    return calls


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """Run `ddkit ARGS` in-process; return (exit code, stdout, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one intra-op thread is faster than two fighting over a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model_options(name: str) -> dict:
    """Small constructor options for registered model `name`, so tests can run every model on tiny
    shapes: width 8 (4 with a 16-wide head for MobileNet-style nets), a quarter-width torchvision
    MobileNetV2; the other torchvision nets take no size option and run at their real size."""
    params = inspect.signature(MODELS.get(name)).parameters
    tiny = {"width": 4 if "head" in params else 8, "head": 16, "width_mult": 0.25}
    return {k: v for k, v in tiny.items() if k in params}
