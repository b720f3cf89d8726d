"""The CLI's inconsistencies of issue 27 item 6, fixed: `--out` everywhere, selections' rounds and
class counts, teacher files recognized by `info`, a resume hint instead of a silent restart, `show`
as wide as its widest row, the protocol version stated where numbers are compared."""

from __future__ import annotations

import pytest
from helpers import run_cli as run
from PIL import Image


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DDKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DDKIT_PROGRESS", "0")


@pytest.fixture()
def small(tmp_path, capsys):
    path = tmp_path / "rr.ddk.h5"
    assert run(capsys, "synthesize", "--dataset", "procedural", "--ipc", "2", "--out", path)[0] == 0
    return path


def test_export_import_and_pack_take_out_like_every_verb(tmp_path, small, capsys):
    code, out, err = run(capsys, "export", small, "--to", "pt", "--out", tmp_path / "pt")
    assert code == 0 and (tmp_path / "pt" / "images.pt").is_file(), err
    code, _, err = run(capsys, "import", tmp_path / "pt", "--from", "pt", "--dataset", "procedural", "--out", tmp_path / "b.ddk.h5")
    assert code == 0 and (tmp_path / "b.ddk.h5").is_file(), err
    code, _, err = run(capsys, "pack", small, "--out", tmp_path / "pack")
    assert code == 0 and (tmp_path / "pack").is_dir(), err
    code, _, err = run(capsys, "export", small, "--to", "pt", tmp_path / "pt2")  # the positional form still works
    assert code == 0, err
    code, _, err = run(capsys, "export", small, "--to", "pt", tmp_path / "x", "--out", tmp_path / "y")
    assert code == 2 and "given twice" in err and not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    code, _, err = run(capsys, "import", tmp_path / "pt", "--from", "pt", "--dataset", "procedural")
    assert code == 2 and "--out PATH" in err


def test_selection_info_shows_rounds_and_class_counts(tmp_path, capsys):
    first, second = tmp_path / "r.sel.h5", tmp_path / "p.sel.h5"
    assert run(capsys, "select", "--pool", "procedural", "--budget", "30", "--out", first)[0] == 0
    code, out, _ = run(capsys, "info", first)
    assert "30 samples, picked in one round (round 0)" in out and "per class   3–3 over 10 classes (0 empty)" in out
    code, _, err = run(capsys, "select", "--pool", "procedural", "--budget", "10", "--labeled", first, "--out", second)
    assert code == 0, err
    code, out, _ = run(capsys, "info", second)
    assert "40 samples, over 2 rounds (round 0: 30, round 1: 10)" in out and "over 10 classes" in out


def test_info_recognizes_a_teacher_file(tmp_path, capsys):
    path = tmp_path / "t.safetensors"
    code, _, err = run(capsys, "teacher", "train", "--dataset", "procedural", "--epochs", "1", "--model-opt", "width=4",
                       "--out", path)
    assert code == 0, err
    code, out, err = run(capsys, "info", path)
    assert code == 0 and "ddkit teacher" in out and "convnet-bn" in out and "procedural, 10 classes" in out, err
    code, out, _ = run(capsys, "info", path, "--json")
    assert code == 0 and '"tensors_sha256"' in out


def test_an_interrupted_runs_work_is_never_discarded_silently(tmp_path, capsys):
    out = tmp_path / "x.ddk.h5"
    work = tmp_path / "x.ddk.h5.work"
    work.mkdir()
    (work / "item-0001.npz").write_bytes(b"finished work")
    code, _, err = run(capsys, "synthesize", "--dataset", "procedural", "--ipc", "1", "--out", out)
    assert code == 2 and "interrupted run" in err and "--resume" in err and "--overwrite" in err
    assert (work / "item-0001.npz").exists() and not out.exists()
    code, _, err = run(capsys, "synthesize", "--dataset", "procedural", "--ipc", "1", "--out", out, "--overwrite")
    assert code == 0 and out.exists() and not work.exists(), err


def test_show_is_as_wide_as_its_widest_row(tmp_path, small, capsys):
    for per_class in (2, 10):
        assert run(capsys, "show", small, "--out", tmp_path / f"g{per_class}.png", "--per-class", per_class)[0] == 0
    with Image.open(tmp_path / "g2.png") as a, Image.open(tmp_path / "g10.png") as b:
        assert a.size == b.size  # an IPC-2 file draws 2 columns whatever --per-class allows


def test_evaluate_states_what_a_bare_protocol_name_means(capsys):
    code, out, _ = run(capsys, "evaluate", "--help")
    assert code == 0 and "a bare NAME is its newest version" in " ".join(out.split())  # quickstart's: tests/test_cli.py
