"""Hostile files: flipped bytes, truncations and spliced blocks of `.ddk.h5`, `.sel.h5` and teacher
files. Every case must end in a clean ddkit error or load exactly the original content — never a
crash, a hang, or a silently different dataset. Fixed seed, bounded case count."""

from __future__ import annotations

import hashlib
import signal

import numpy as np
import pytest

from ddkit.errors import DdkitError
from ddkit.models.teacher import load_teacher
from ddkit.store import DistilledDataset, read_selection

CASES_PER_KIND = 120


def fingerprint(path) -> str:
    """Everything a user would train on or trust, hashed."""
    name = str(path)
    h = hashlib.sha256()
    if name.endswith(".ddk.h5"):
        with DistilledDataset(path, verify=True) as ds:
            h.update(ds.pixels().numpy().tobytes())
            h.update(ds.labels.numpy().tobytes())
            for scheme, payload in sorted(ds.soft.items()):
                for key, array in sorted(payload.arrays().items()):
                    h.update(f"{scheme}/{key}".encode() + array.tobytes())
            h.update(repr(ds.header).encode())
    elif name.endswith(".sel.h5"):
        sel = read_selection(path, verify=True)
        h.update(sel.ids.tobytes() + sel.score.tobytes() + repr(sel.pool).encode() + repr(sel.config).encode())
    else:
        teacher = load_teacher(path)
        h.update(repr(teacher.header).encode())
        for key, value in sorted(teacher.model.state_dict().items()):
            h.update(key.encode() + value.numpy().tobytes())
    return h.hexdigest()


def mutate(data: bytes, case: int, rng: np.random.Generator) -> bytes:
    blob = bytearray(data)
    kind = case % 3
    if kind == 0:  # flip 1..8 random bits
        for _ in range(int(rng.integers(1, 9))):
            blob[int(rng.integers(len(blob)))] ^= 1 << int(rng.integers(8))
    elif kind == 1:  # truncate
        blob = blob[: int(rng.integers(len(blob)))]
    else:  # splice random bytes over a block
        start, length = int(rng.integers(len(blob))), int(rng.integers(1, 512))
        blob[start : start + length] = rng.integers(0, 256, len(blob[start : start + length]), dtype=np.uint8).tobytes()
    return bytes(blob)


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    from ddkit.selectors import run_selector
    from ddkit.synth import run_synthesizer
    from ddkit.teachers import train_teacher

    root = tmp_path_factory.mktemp("fuzz")
    teacher = root / "t.safetensors"
    train_teacher(teacher, "procedural", "convnet-bn", {"width": 4}, epochs=1, batch_size=64)
    distilled = root / "d.ddk.h5"
    run_synthesizer("random-real", "procedural", [str(teacher)], 2, {}, 0, distilled)
    selection = root / "s.sel.h5"
    run_selector("random", "procedural", [], 20, {}, 0, selection)
    return {"distilled": distilled, "selection": selection, "teacher": teacher}


def _timeout(signum, frame):
    raise TimeoutError("a damaged file made ddkit hang")


@pytest.mark.parametrize("kind", ["distilled", "selection", "teacher"])
def test_damaged_files_end_in_clean_errors(kind, originals, tmp_path):
    source = originals[kind]
    data = source.read_bytes()
    reference = fingerprint(source)
    rng = np.random.default_rng({"distilled": 1, "selection": 2, "teacher": 3}[kind])
    outcomes = {"refused": 0, "identical": 0}
    previous = signal.signal(signal.SIGALRM, _timeout)
    try:
        for case in range(CASES_PER_KIND):
            path = tmp_path / f"case{''.join(source.suffixes)}"
            path.write_bytes(mutate(data, case, rng))
            signal.alarm(20)
            try:
                result = fingerprint(path)
            except DdkitError as exc:
                assert exc.problem, "a ddkit error names the problem"
                outcomes["refused"] += 1
            else:
                assert result == reference, f"case {case}: a damaged {kind} file loaded as different content"
                outcomes["identical"] += 1
            finally:
                signal.alarm(0)
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert outcomes["refused"] >= CASES_PER_KIND * 0.9, outcomes
