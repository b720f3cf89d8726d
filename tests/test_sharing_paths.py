"""Issue 26, paths and foreign values: every case of tests/crafted_paths.py run in-process (one clear
refusal or the right result, no traceback, no refused output left, nothing outside changed), plus
what one argv cannot express: concurrent catalog scans, the output-folder policy, the walker, and
signatures through the library."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from crafted import distilled
from crafted_paths import CASES, CHECKS, outside
from helpers import run_cli

from ddkit.errors import FileFormatError, OutputExists, OutputUnwritable, UnsafePath
from ddkit.paths import component, member, output_folder, walk

ROOT = Path(__file__).resolve().parents[1]
TEMP_SUFFIXES = (".tmp", ".old", ".probe")


def _tree(folder: Path) -> dict[str, str]:
    """Every entry under `folder` (not following links) with what it is: a file's sha256, a link's target."""
    out = {}
    for path in sorted(folder.rglob("*")) if folder.exists() else []:
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[rel] = "folder" if path.is_dir() else "special"
    return out


def _leftovers(work: Path) -> list[str]:
    return [p.name for p in work.rglob("*") if p.name.endswith(TEMP_SUFFIXES) and p.name.startswith(".")]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_sharing_case(case, tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    argv = case.build(work)
    before = _tree(outside(work))
    code, out, err = run_cli(capsys, *argv)
    text = out + err
    assert "Traceback" not in text, text
    if case.expect == "refused":
        errors = [line for line in err.splitlines() if line.lower().startswith("error:")]  # ddkit's, or click's
        assert code != 0 and len(errors) == 1, (code, text)
        for name in case.outputs:
            assert not (work / name).exists(), f"{name} was left behind"
    else:
        assert code == 0, text
    assert _tree(outside(work)) == before, "something outside the named files changed"
    assert not _leftovers(work), _leftovers(work)
    if case.id in CHECKS:
        CHECKS[case.id](work, text)


def test_refused_outputs_are_absent_even_for_a_link_named_out(tmp_path, capsys, monkeypatch):
    """The dangling-link case: the link the user made stays a dangling link, nothing is created behind it."""
    case = next(c for c in CASES if c.name == "OUT is a dangling symlink")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code, _, err = run_cli(capsys, *case.build(work))
    assert code != 0 and "symbolic link" in err
    assert (work / "out").is_symlink() and not (work / "nowhere").exists()


# -- the catalog under concurrency ----------------------------------------------------------------

_SCAN = """
import sys, time
from ddkit.share.catalog import Catalog
time.sleep(max(0.0, float(sys.argv[3]) - time.time()))
with Catalog(sys.argv[1]) as cat:
    print(cat.scan([sys.argv[2]]))
"""


def test_two_concurrent_scans_both_succeed(tmp_path):
    import time

    for team in ("a", "b"):
        (tmp_path / team).mkdir()
        for i in range(4):
            distilled(tmp_path / team, f"{team}{i}.ddk.h5")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    start = str(time.time() + 4)
    procs = [subprocess.Popen([sys.executable, "-c", _SCAN, str(tmp_path / "cat.sqlite"), str(tmp_path / t), start],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for t in "ab"]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    with sqlite3.connect(tmp_path / "cat.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM files WHERE status = 'ok'").fetchone()[0] == 8


def test_a_scan_keeps_the_rows_it_committed(tmp_path, monkeypatch):
    """Each file is committed on its own: a scan that dies on its third file keeps the first two."""
    from ddkit.share import catalog

    for i in range(4):
        distilled(tmp_path, f"f{i}.ddk.h5")
    real, calls = catalog.Catalog._index, []

    def dying(self, location):
        calls.append(location)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, location)

    monkeypatch.setattr(catalog.Catalog, "_index", dying)
    with pytest.raises(KeyboardInterrupt), catalog.Catalog(tmp_path / "cat.sqlite") as cat:
        cat.scan([str(tmp_path)])
    with sqlite3.connect(tmp_path / "cat.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM files").fetchone()[0] == 2
    assert not list(tmp_path.glob("*-journal"))


def test_a_python_error_in_one_file_is_a_damaged_row(tmp_path, monkeypatch):
    from ddkit.share import catalog

    for i in range(2):
        distilled(tmp_path, f"f{i}.ddk.h5")
    real = catalog.header_dict
    monkeypatch.setattr(catalog, "header_dict",
                        lambda h5, where: (_ for _ in ()).throw(ZeroDivisionError("boom")) if "f0" in where else real(h5, where))
    with catalog.Catalog(tmp_path / "cat.sqlite") as cat:
        assert cat.scan([str(tmp_path)]) == {"ok": 1, "damaged": 1}
        rows = cat.ls()
    assert any("ZeroDivisionError: boom" in (r["problem"] or "") for r in rows)


# -- the path policy itself -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["/etc/passwd", "../x", "a/../../x", "", "a\0b", "C:x", "\\\\server\\x", 5, None])
def test_member_refuses_names_that_leave_the_folder(tmp_path, name):
    with pytest.raises(UnsafePath):
        member(tmp_path, name, "entry")


def test_member_refuses_links_on_the_way_and_accepts_plain_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f").write_text("x")
    assert member(tmp_path, "sub/f", "entry") == tmp_path / "sub" / "f"
    assert member(tmp_path, "./sub/f", "entry") == tmp_path / "sub" / "f"
    (tmp_path / "via").symlink_to(tmp_path / "sub")
    with pytest.raises(UnsafePath, match="symbolic link"):
        member(tmp_path, "via/f", "entry")
    with pytest.raises(FileFormatError, match="does not exist"):
        member(tmp_path, "sub/g", "entry")


@pytest.mark.parametrize("text,expected", [("../../x", "x"), (".hidden", "hidden"), ("conv/net", "conv_net"),
                                           ("", "item"), (None, "item"), ("resnet-18.v2", "resnet-18.v2")])
def test_component_keeps_one_safe_name(text, expected):
    assert component(text) == expected


def test_walk_sorts_out_links_and_special_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f.txt").write_text("x")
    (tmp_path / "link.txt").symlink_to(tmp_path / "a" / "f.txt")
    (tmp_path / "dirlink").symlink_to(tmp_path / "a")
    os.mkfifo(tmp_path / "pipe")
    tree = walk(tmp_path)
    assert tree.files == [tmp_path / "a" / "f.txt"]
    assert sorted(p.name for p, _ in tree.refused) == ["dirlink", "link.txt", "pipe"]
    followed = walk(tmp_path, follow_symlinks=True)
    assert sorted(p.name for p in followed.files) == ["f.txt", "link.txt"]  # a/ once, though two names reach it
    assert [p.name for p, _ in followed.refused] == ["pipe"]
    assert walk(tmp_path, match=lambda p: p.suffix == ".h5").refused == []


@pytest.mark.parametrize("name,error", [(".", OutputExists), ("..", OutputExists), ("/", OutputExists),
                                        ("sub/..", OutputExists), ("/proc/ddkit-test", OutputUnwritable)])
def test_output_folder_refuses_what_cannot_be_replaced(tmp_path, monkeypatch, name, error):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error):
        output_folder(name)


def test_output_folder_refuses_a_folder_holding_the_current_one(tmp_path, monkeypatch):
    (tmp_path / "deep").mkdir()
    monkeypatch.chdir(tmp_path / "deep")
    with pytest.raises(OutputExists, match="holds the current folder"):
        output_folder(tmp_path)
    assert output_folder(tmp_path / "deep" / "new") == tmp_path / "deep" / "new"


def test_pack_names_are_checked_when_evaluate_reads_the_pack(tmp_path):
    """resolve_train_set never hands evaluate a path outside the pack."""
    import json

    from crafted_paths import _pack

    from ddkit.share.pack import resolve_train_set

    work = tmp_path / "work"
    work.mkdir()
    folder = _pack(work)
    train_set, teachers = resolve_train_set(str(folder), [])
    assert Path(train_set).parent == folder and all(Path(t).parent == folder / "teachers" for t in teachers)
    manifest = json.loads((folder / "pack.json").read_text())
    (folder / "pack.json").write_text(json.dumps({**manifest, "set": "teachers/../../set.ddk.h5"}))
    with pytest.raises(UnsafePath, match=r"\.\."):
        resolve_train_set(str(folder), [])


# -- signatures -----------------------------------------------------------------------------------

def test_signature_survives_a_result_card_and_breaks_on_any_edit(tmp_path):
    from crafted import forge
    from crafted_paths import _sign

    from ddkit.share.sign import SignatureRefused, read_signature, verify_file
    from ddkit.store import DistilledDataset, add_result

    path = distilled(tmp_path)
    with DistilledDataset(path) as ds:
        before = ds.content_sha256
    trusted = _sign(tmp_path, path)
    with DistilledDataset(path) as ds:  # signing changes neither the seal's checks nor the content hash
        assert ds.content_sha256 == before
    add_result(path, "hard-cpu@1", {"result": {"mean": 0.5}})
    assert verify_file(path, trusted).signer == "alice"
    with forge(path) as f:
        f["labels"][0] = (int(f["labels"][0]) + 1) % 10
    assert read_signature(path) is not None
    with pytest.raises(SignatureRefused, match="changed after signing"):
        verify_file(path, trusted)


def test_trusted_keys_file_errors_are_clear(tmp_path):
    from ddkit.share.sign import SignatureRefused, read_trusted_keys

    with pytest.raises(SignatureRefused, match="no trusted-keys file"):
        read_trusted_keys(tmp_path / "none")
    (tmp_path / "bad").write_text("ssh-rsa AAAA\n")
    with pytest.raises(SignatureRefused, match="line 1"):
        read_trusted_keys(tmp_path / "bad")
    (tmp_path / "ok").write_text("# team\n\ned25519 " + "ab" * 32 + " Alice Smith\n")
    assert read_trusted_keys(tmp_path / "ok") == {"ab" * 32: "Alice Smith"}


def test_default_trusted_keys_come_from_the_environment(tmp_path, monkeypatch):
    from ddkit.share.sign import default_trusted_keys

    monkeypatch.setenv("DDKIT_TRUSTED_KEYS", str(tmp_path / "k"))
    assert default_trusted_keys() == tmp_path / "k"
    monkeypatch.delenv("DDKIT_TRUSTED_KEYS")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert default_trusted_keys() == tmp_path / "ddkit" / "trusted_keys"


def test_a_fifo_swapped_in_never_blocks_a_read(tmp_path):
    """read_small opens without blocking: a FIFO is refused at once, in a child with a deadline."""
    os.mkfifo(tmp_path / "pipe.json")
    code = textwrap.dedent(f"""
        from ddkit.paths import read_small
        try:
            read_small({str(tmp_path / 'pipe.json')!r}, 'x')
        except Exception as exc:
            print(type(exc).__name__)
    """)
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                         text=True, timeout=60)
    assert out.stdout.strip() == "UnsafePath", out


def test_keys_verify_names_the_signer(tmp_path, capsys):
    from crafted_paths import _keys, _sign

    path = distilled(tmp_path)
    _, trusted = _keys(tmp_path, "bob")
    code, _, err = run_cli(capsys, "keys", "verify", path, "--trusted-keys", trusted)
    assert code == 2 and "is not signed" in err
    trusted = _sign(tmp_path, path, "alice")
    code, out, _ = run_cli(capsys, "keys", "verify", path, "--trusted-keys", trusted)
    assert code == 0 and "signed by alice" in out
