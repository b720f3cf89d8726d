"""Issue 26, the HDF5 and bounds half: every case of tests/crafted_hdf5.py run in-process (one clear
refusal, no traceback, nothing left behind), plus what only an in-process test can see: the catalog's
rows, the remembered verdicts, the child's limits, temp files in the cache, a small header fuzz."""

from __future__ import annotations

import os
import signal
import sqlite3
import time

import numpy as np
import pytest
from crafted_hdf5 import CASES, HDF5_FILES, attr_dtype_flip, header_mutants, labels_unwritten
from helpers import run_cli
from http_hostile import serve

from ddkit import h5safe
from ddkit.errors import DdkitError, FileFormatError


@pytest.fixture(autouse=True)
def _fast_network(monkeypatch):
    monkeypatch.setenv("DDKIT_REMOTE_TIMEOUT", "2")  # a stalled server costs 2 s here, not 15


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_sharing_case(case, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DDKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    argv = case.build(tmp_path)
    code, out, err = run_cli(capsys, *argv)
    assert "Traceback" not in out + err
    if case.expect == "ok":
        assert code == 0, out + err
    else:
        assert code != 0 and err.startswith("error:") or "[FAIL]" in out, (code, out, err)
    for output in case.outputs:
        assert not (tmp_path / output).exists(), output
    assert not list((tmp_path / "cache").rglob("*.tmp")), "a temp file was left in the cache"


@pytest.mark.parametrize("name", list(HDF5_FILES))
def test_catalog_scan_records_the_refusal_and_no_declared_counts(name, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DDKIT_CACHE", str(tmp_path / "cache"))
    build, message = HDF5_FILES[name]
    build(tmp_path)
    code, out, err = run_cli(capsys, "catalog", "scan", tmp_path / "set", "--catalog", tmp_path / "cat.sqlite")
    assert code == 0, out + err
    with sqlite3.connect(tmp_path / "cat.sqlite") as db:
        rows = db.execute("SELECT status, problem, instances FROM files").fetchall()
    assert len(rows) == 1 and rows[0][0] == "damaged" and message in rows[0][1] and rows[0][2] is None, rows


@pytest.mark.parametrize("name", list(HDF5_FILES))
def test_remote_header_reads_go_through_the_walk(name, tmp_path):
    from ddkit.share.remote import header_info

    build, message = HDF5_FILES[name]
    path = build(tmp_path)
    with serve(path.parent, "plain") as base, pytest.raises(FileFormatError, match=message):
        header_info(f"{base}/{path.name}")
    with pytest.raises(FileFormatError, match=message):
        header_info(f"local://{path}")


def test_a_crash_of_the_hdf5_library_is_one_refusal_and_leaves_no_temp_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DDKIT_CACHE", str(tmp_path / "cache"))
    path = attr_dtype_flip(tmp_path)
    for argv in (["info", path], ["validate", path], ["export", path, "--to", "pt", tmp_path / "x"],
                 ["show", path, "--out", tmp_path / "x.png"]):
        code, out, err = run_cli(capsys, *argv)
        assert code != 0 and "crashed the HDF5 library (SIGSEGV)" in out + err, (argv, out, err)
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.png").exists()
    with serve(path.parent, "plain") as base:  # a download that crashes the check: the temp file goes
        code, out, err = run_cli(capsys, "validate", f"{base}/{path.name}")
    assert code == 2 and "crashed the HDF5 library" in err
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and "remote" in p.parts]


def test_verdicts_are_remembered_and_an_edit_is_checked_again(tmp_path, monkeypatch):
    from crafted import distilled

    monkeypatch.setenv("DDKIT_CACHE", str(tmp_path / "cache"))
    path = distilled(tmp_path)
    forks = []
    real_fork = os.fork
    monkeypatch.setattr(os, "fork", lambda: forks.append(1) or real_fork())
    for _ in range(3):
        h5safe.open_hdf5(path).close()
    assert len(forks) == 1, "the walk of a file ran in a child more than once"
    data = path.read_bytes()
    path.write_bytes(data)  # same bytes, new mtime: checked again (the identity changed)
    h5safe.open_hdf5(path).close()
    assert len(forks) == 2
    bad = attr_dtype_flip(tmp_path)
    for _ in range(2):  # a refusal is never remembered as a pass
        with pytest.raises(FileFormatError, match="crashed"):
            h5safe.open_hdf5(bad)
    assert len(forks) == 4


def test_the_child_is_bounded_in_time_and_memory(tmp_path):
    def hang():
        time.sleep(60)

    def crash():
        os.kill(os.getpid(), signal.SIGSEGV)

    def allocate():
        return len(bytearray(8 << 30))

    start = time.monotonic()
    with pytest.raises(FileFormatError, match="did not finish in 1 s"):
        h5safe.run_isolated(hang, label="x", timeout=1)
    assert time.monotonic() - start < 20
    with pytest.raises(FileFormatError, match="SIGSEGV"):
        h5safe.run_isolated(crash, label="x")
    with pytest.raises(FileFormatError, match="more than 1 GiB"):
        h5safe.run_isolated(allocate, label="x")
    assert h5safe.run_isolated(lambda: {"a": np.int64(3), "b": np.arange(2)}) == {"a": 3, "b": [0, 1]}
    with pytest.raises(FileFormatError, match="no such"):  # a ddkit error keeps its message
        h5safe.run_isolated(lambda: (_ for _ in ()).throw(FileFormatError("no such thing", "fix")))


def test_special_files_are_refused_before_any_open(tmp_path):
    fifo = tmp_path / "pipe.ddk.h5"
    os.mkfifo(fifo)
    with pytest.raises(FileFormatError, match="not a regular file"):
        h5safe.check_file(fifo)
    with pytest.raises(FileFormatError, match="not a regular file"):
        h5safe.check_file("/dev/zero")


def test_unwritten_rows_never_reach_the_catalog_or_memory(tmp_path, capsys, monkeypatch):
    """The 1.5e8-row file: `info local://` is refused from the header, without reading a row."""
    import resource

    monkeypatch.setenv("DDKIT_CACHE", str(tmp_path / "cache"))
    path = labels_unwritten(tmp_path)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code, _, err = run_cli(capsys, "info", f"local://{path}")
    assert code == 2 and "fill values" in err
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: nothing like 1.2 GB


@pytest.mark.parametrize("mode", ["stall", "endless", "gzip", "short"])
def test_hostile_servers_end_in_clear_errors_and_leave_nothing(mode, tmp_path, capsys, monkeypatch):
    from crafted import distilled

    monkeypatch.setenv("DDKIT_CACHE", str(tmp_path / "cache"))
    distilled(tmp_path, "s.ddk.h5")
    with serve(tmp_path, mode) as base:
        for verb in ("info", "validate"):
            start = time.monotonic()
            code, out, err = run_cli(capsys, verb, f"{base}/s.ddk.h5")
            assert code == 2 and err.startswith("error:") and "Traceback" not in err, (verb, out, err)
            assert time.monotonic() - start < 30
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and "remote" in p.parts]


def test_header_fuzz_sample_ends_in_refusals_or_correct_reads(tmp_path, monkeypatch):
    """A sample of the benchmark's header mutants through the store's opener: a clean ddkit error or
    the original header; the child takes any crash (the full 5,000 run in the replay benchmark)."""
    from ddkit.store import info_dict

    monkeypatch.setenv("DDKIT_CACHE", str(tmp_path / "cache"))
    outcomes = {"refused": 0, "read": 0}
    reference = None
    for _, path in header_mutants(tmp_path, 60, seed=7):
        try:
            d = info_dict(path)
        except DdkitError as exc:
            assert exc.problem
            outcomes["refused"] += 1
        else:
            outcomes["read"] += 1
            d.pop("path")
            reference = reference or info_dict(tmp_path / "set" / "fuzz-base.ddk.h5")
            assert d["content_sha256"] == reference["content_sha256"]
    assert outcomes["refused"] >= 30, outcomes
