"""Files from strangers and CLI misuse (issue 19): every case ends in one clear message and a
non-zero exit, or in the correct result; nothing outside the named file is read; no card or temp
file is lost or left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from crafted import CASES, TEACHER_CASES, command, distilled, forge, image_folder, selection, teacher_header
from helpers import run_cli

from ddkit.errors import FileFormatError, OutputUnwritable
from ddkit.fileio import atomic_output, temp_path
from ddkit.h5safe import open_hdf5
from ddkit.store import read_results

ROOT = Path(__file__).resolve().parents[1]


def _refused(code: int, out: str, err: str, message: str = "") -> None:
    assert code != 0, out + err
    assert "Traceback" not in err
    assert err.startswith("error:") or "[FAIL]" in out, out + err
    assert message.lower() in (out + err).lower(), out + err


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_crafted_files_are_refused_cleanly_or_read_correctly(tmp_path, capsys, case):
    path = case.build(tmp_path)
    for name in case.commands:
        code, out, err = run_cli(capsys, *command(name, path, tmp_path))
        if name in case.refused:
            _refused(code, out, err, case.message)
        else:
            assert code == 0 and "Traceback" not in err, (name, out, err)


def test_many_classes_show_draws_a_bounded_sheet(tmp_path, capsys):
    many = next(c for c in CASES if c.name == "20 000 classes").build(tmp_path)
    code, out, _ = run_cli(capsys, "show", many, "--out", tmp_path / "m.png")
    assert code == 0 and "first 100 of 20000 rows" in out
    from PIL import Image

    with Image.open(tmp_path / "m.png") as im:
        assert im.height < 100 * 60


def test_outside_bytes_are_never_read(tmp_path, monkeypatch):
    """The external-storage file: the bytes of the outside file are not opened, not even to hash."""
    path = CASES[0].build(tmp_path)
    outside = tmp_path / "outside.bin"
    real_open = os.open

    def guarded(p, *a, **k):
        assert Path(p) != outside, "ddkit opened a file named inside a file"
        return real_open(p, *a, **k)

    monkeypatch.setattr(os, "open", guarded)
    with pytest.raises(FileFormatError, match="external file"):
        open_hdf5(path).close()


@pytest.mark.parametrize("case", TEACHER_CASES, ids=[c[0] for c in TEACHER_CASES])
def test_crafted_teacher_headers_are_refused_naming_the_field(tmp_path, capsys, case):
    _, change, message = case
    teacher = teacher_header(tmp_path, change)
    _refused(*run_cli(capsys, "teacher", "eval", teacher), message)
    if message != "path":  # a teacher naming a path is fine as long as ddkit does not open it
        _refused(*run_cli(capsys, "validate", distilled(tmp_path), "--teacher", teacher), message)


def test_hard_link_alias_is_refused(tmp_path):
    path = distilled(tmp_path)
    with forge(path) as f:
        f["alias"] = f["labels"]
    with pytest.raises(FileFormatError, match="second link"):
        open_hdf5(path).close()


@pytest.mark.parametrize("args, message", [
    (["evaluate", "random:procedural:nan", "--steps", "1", "--no-full"], "IPC"),
    (["evaluate", "random:procedural:-2", "--steps", "1", "--no-full"], "IPC"),
    (["evaluate", "random:procedural:2", "--steps", "0"], "--steps"),
    (["evaluate", "random:procedural:2", "--steps", "-5"], "--steps"),
    (["evaluate", "random:procedural:2", "--seeds", "0"], "--seeds"),
    (["teacher", "train", "--dataset", "procedural", "--epochs", "0", "--out", "{tmp}/t.safetensors"], "--epochs"),
    (["teacher", "train", "--dataset", "procedural", "--batch-size", "0", "--out", "{tmp}/t.safetensors"], "--batch-size"),
    (["teacher", "train", "--dataset", "procedural", "--lr", "nan", "--out", "{tmp}/t.safetensors"], "--lr"),
    (["teacher", "train", "--dataset", "procedural", "--model-opt", "width=abc", "--epochs", "1",
      "--out", "{tmp}/t.safetensors"], "width"),
    (["synthesize", "--dataset", "procedural", "--ipc", "1", "--out", "{tmp}/dir/"], "names a folder"),
    (["synthesize", "--dataset", "procedural", "--ipc", "1", "--out", "{tmp}/file/x.ddk.h5"], "not a folder"),
    (["teacher", "train", "--dataset", "procedural", "--out", "{tmp}/file/t.safetensors"], "not a folder"),
    (["select", "--pool", "procedural", "--budget", "5", "--out", "{tmp}/file/s.sel.h5"], "not a folder"),
    (["show", "{base}", "--out", "{tmp}/file/x.png"], "not a folder"),
    (["show", "{base}", "--per-class", "1000000", "--out", "{tmp}/x.png"], "--per-class"),
    (["merge", "{base}", "--out", "{tmp}/file/m.ddk.h5"], "not a folder"),
])
def test_cli_misuse_is_one_clear_message(tmp_path, capsys, args, message):
    (tmp_path / "file").write_text("a file, not a folder")
    base = distilled(tmp_path)
    argv = [a.format(tmp=tmp_path, base=base) for a in args]
    code, out, err = run_cli(capsys, *argv)
    assert code != 0 and "Traceback" not in err
    assert message in err, err
    assert not list(tmp_path.glob("*.safetensors")) and not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("bad, message", [("dangling-symlink", "broken link"), ("bomb-png", "pixel limit")])
def test_bad_files_in_image_folders_are_skipped_with_one_clear_line(tmp_path, capsys, bad, message):
    root = image_folder(tmp_path, bad)
    code, _, err = run_cli(capsys, "teacher", "train", "--dataset", f"imagefolder:{root}", "--epochs", "1",
                           "--out", tmp_path / "t.safetensors")
    assert code == 0 and "Traceback" not in err and message in err, err
    assert "skipped 1 unreadable image(s) of 5" in err


def test_evaluate_checks_the_card_folder_before_training(tmp_path, capsys, monkeypatch):
    base = distilled(tmp_path)
    real_open = os.open

    def read_only(p, flags, *a):
        if str(p).endswith(".probe"):
            raise PermissionError(13, "Permission denied")
        return real_open(p, flags, *a)

    monkeypatch.setattr(os, "open", read_only)
    import ddkit.evaluate.api as api

    monkeypatch.setattr(api, "train_students", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(OutputUnwritable, match="not writable"):
        api.evaluate(str(base), "hard-cpu", seeds=[0], steps=1, baseline=False, full_reference=False)


def test_evaluate_resolves_a_path_source_only_from_the_user(tmp_path, capsys):
    sel = selection(tmp_path)
    with forge(sel) as f:
        import json

        f.attrs["pool"] = json.dumps({**json.loads(f.attrs["pool"]), "name": "imagefolder:/etc"})
    # A mismatching --dataset is refused; the file's path is never used.
    _refused(*run_cli(capsys, "evaluate", sel, "--dataset", "procedural", "--steps", "1", "--no-full", "--no-write"),
             "was made from")


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    final = tmp_path / "x.bin"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale, live = temp_path(final, int(dead.stdout)), temp_path(final, os.getppid())
    stale.write_bytes(b"left by kill -9")
    live.write_bytes(b"a writer still at work")
    with atomic_output(final) as tmp:
        tmp.write_bytes(b"new")
    assert final.read_bytes() == b"new" and not stale.exists() and live.exists()


def test_sigterm_during_a_write_leaves_no_temp_file(tmp_path):
    base = distilled(tmp_path)
    out = tmp_path / "grid.png"
    script = textwrap.dedent(f"""
        import os, signal, time
        from PIL import Image
        def save(self, fp, *a, **k):
            open(fp, "wb").write(b"partial")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        Image.Image.save = save
        from ddkit.cli import main
        main(["show", {str(base)!r}, "--out", {str(out)!r}])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".grid.png.*"))


def test_concurrent_card_writers_lose_no_card(tmp_path):
    base = distilled(tmp_path)
    script = textwrap.dedent("""
        import sys
        from ddkit.store import add_result
        for i in range(6):
            add_result(sys.argv[1], f"{sys.argv[2]}-{i}", {"result": {"mean": 0.5}})
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(base), w], env=env) for w in ("a", "b", "c")]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0]
    assert sorted(read_results(base)) == sorted(f"{w}-{i}" for w in "abc" for i in range(6))
    assert not list(tmp_path.glob(".base.ddk.h5.*"))


def test_policy_allows_every_file_ddkit_writes(tmp_path):
    """The policy must not refuse honest files: compressed, chunked, empty and scalar datasets."""
    path = tmp_path / "ok.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("z", data=np.zeros((4096, 64), np.float32), chunks=(512, 64), compression="gzip", shuffle=True)
        f.create_dataset("e", data=np.zeros((0, 3), np.int64))
        f["s"] = 3
        f.attrs["j"] = "{}"
    open_hdf5(path).close()
