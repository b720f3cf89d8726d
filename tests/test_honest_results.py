"""Results that stay honest when shared (issue 27 item 5): cards of shortened runs are marked and
never ranked beside the protocol's own, `catalog ls` groups by protocol and IPC, catalog ids are
content-hash prefixes, an empty listing says why, a file changed after a scan is stale, and `merge`
refuses the same run twice."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import run_cli as run

from ddkit.errors import IncompatibleError
from ddkit.share import export_file
from ddkit.store import DistilledDataset, DistilledSet, add_result, merge_files, write_distilled
from ddkit.store.results import derived_changes

DATASET = "procedural"
FULL, SHORT = "hard-cpu@1", "hard-cpu[epochs=0,steps=50]@1"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DDKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DDKIT_PROGRESS", "0")


def card(mean: float, random: float = 0.5) -> dict:
    return {"result": {"mean": mean, "std": 0.01}, "random_baseline": {"mean": random, "std": 0.01}}


def make(path, source, seed=0, ipc=2, method="m", cards=(), config=None) -> str:
    start = 10 * seed
    dset = DistilledSet.from_source(source, method=method, method_version="1", config=config or {}, seed=seed,
                                    images=source.images[start : start + 10 * ipc], labels=source.labels[start : start + 10 * ipc],
                                    ipc=ipc)
    digest = write_distilled(path, dset)
    for name, c in cards:
        add_result(path, name, c)
    return digest


def test_derived_changes():
    assert derived_changes(SHORT) == "epochs=0,steps=50"
    assert derived_changes(FULL) is None and derived_changes("stored-cpu@3") is None


def test_info_and_export_show_shortened_runs_apart(tmp_path, source, capsys):
    path = tmp_path / "a.ddk.h5"
    check = {"check": "contamination", "against": "procedural", "flagged": 0, "parts": {}}
    make(path, source, cards=[(FULL, card(0.60)), (SHORT, card(0.90)), ("contamination", check)])
    code, out, _ = run(capsys, "info", path)
    assert code == 0
    full_at, short_at = out.index(f"    {FULL}"), out.index(f"    {SHORT}")
    assert full_at < out.index("shortened or altered runs") < short_at
    export_file(path, "pt", tmp_path / "pt")
    readme = (tmp_path / "pt" / "README.md").read_text()
    assert f"| {SHORT} (shortened run, not comparable) |" in readme and f"| {FULL} |" in readme
    assert "| contamination |" not in readme
    assert readme.index(f"| {FULL} |") < readme.index(f"| {SHORT} (shortened")


@pytest.fixture()
def team(tmp_path, source):
    root = tmp_path / "team"
    root.mkdir()
    make(root / "a.ddk.h5", source, seed=0, ipc=2, method="a", cards=[(FULL, card(0.55)), (SHORT, card(0.95))])
    make(root / "b.ddk.h5", source, seed=1, ipc=2, method="b", cards=[(FULL, card(0.60)), ("teacher-cpu@1", card(0.70))])
    make(root / "c.ddk.h5", source, seed=2, ipc=3, method="c", cards=[(FULL, card(0.99))])
    make(root / "d.ddk.h5", source, seed=3, ipc=2, method="d")  # not evaluated
    return root


def test_catalog_groups_by_protocol_and_ipc_and_never_ranks_shortened_runs(tmp_path, team, capsys):
    cat = tmp_path / "cat.sqlite"
    assert run(capsys, "catalog", "scan", team, "--catalog", cat)[0] == 0
    rows = json.loads(run(capsys, "catalog", "ls", "--catalog", cat, "--json")[1])
    assert [(r["protocol"], r["ipc"], r["method"]) for r in rows] == [
        (FULL, 2, "b"), (FULL, 2, "a"), (FULL, 3, "c"), ("teacher-cpu@1", 2, "b"), (None, 2, "d")]
    code, out, _ = run(capsys, "catalog", "ls", "--catalog", cat)
    assert f"{FULL}, ipc 2" in out and f"{FULL}, ipc 3" in out and "not evaluated" in out and SHORT not in out
    rows = json.loads(run(capsys, "catalog", "ls", "--catalog", cat, "--derived", "--json")[1])
    assert [(r["protocol"], r["method"]) for r in rows] == [(SHORT, "a")]
    assert "not ranked" in run(capsys, "catalog", "ls", "--catalog", cat, "--derived")[1]


def test_catalog_ids_are_content_hash_prefixes_stable_across_rescans(tmp_path, team, capsys):
    first, second = tmp_path / "1.sqlite", tmp_path / "2.sqlite"
    run(capsys, "catalog", "scan", team, "--catalog", first)
    (team / "a-copy.ddk.h5").write_bytes((team / "a.ddk.h5").read_bytes())
    run(capsys, "catalog", "scan", team / "c.ddk.h5", team, "--catalog", second)  # another order, another copy
    ids = lambda cat: {(r["method"], r["id"]) for r in json.loads(run(capsys, "catalog", "ls", "--catalog", cat, "--json")[1])}  # noqa: E731
    assert ids(first) <= ids(second)
    with DistilledDataset(team / "c.ddk.h5") as ds:
        c_id = ds.content_sha256[:12]
    assert ("c", c_id) in ids(first)
    code, out, _ = run(capsys, "catalog", "get", c_id, "--catalog", second, "--out", tmp_path / "got.ddk.h5")
    assert code == 0 and (tmp_path / "got.ddk.h5").read_bytes() == (team / "c.ddk.h5").read_bytes()
    a_id = next(i for m, i in ids(second) if m == "a")
    assert run(capsys, "catalog", "get", a_id, "--catalog", second)[0] == 0  # a file and its copy: one entry
    code, _, err = run(capsys, "catalog", "get", "7", "--catalog", second)
    assert code == 2 and "content hash" in err


def test_an_empty_listing_says_why(tmp_path, team, capsys):
    cat = tmp_path / "cat.sqlite"
    code, out, _ = run(capsys, "catalog", "ls", "--catalog", cat)
    assert code == 0 and "is empty" in out and "catalog scan" in out
    run(capsys, "catalog", "scan", team, "--catalog", cat)
    out = run(capsys, "catalog", "ls", "--catalog", cat, "--protocol", "stored-cpu@1")[1]
    assert "no card under stored-cpu@1 among the 4 file(s)" in out and "hard-cpu@1, teacher-cpu@1" in out
    assert "derived protocols: --derived" in out and "catalog scan" not in out
    out = run(capsys, "catalog", "ls", "--catalog", cat, "--dataset", "cifar10")[1]
    assert "no indexed file matches dataset=cifar10 (4 file(s) indexed)" in out


def test_a_file_changed_inside_after_a_scan_is_stale(tmp_path, team, capsys):
    cat = tmp_path / "cat.sqlite"
    run(capsys, "catalog", "scan", team, "--catalog", cat)
    target = team / "c.ddk.h5"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, same seal block, a body that no longer matches it
    target.write_bytes(bytes(data))
    statuses = {r["method"]: r["status"] for r in json.loads(run(capsys, "catalog", "ls", "--catalog", cat, "--json")[1])}
    assert statuses["c"] == "stale" and statuses["a"] == "ok"
    (team / "b.ddk.h5").touch()  # touched only: still ok
    statuses = {r["method"]: r["status"] for r in json.loads(run(capsys, "catalog", "ls", "--catalog", cat, "--json")[1])}
    assert statuses["b"] == "ok"


def test_merge_refuses_the_same_run_twice(tmp_path, source):
    a, b = tmp_path / "a.ddk.h5", tmp_path / "b.ddk.h5"
    make(a, source, seed=0)
    make(b, source, seed=1)
    with pytest.raises(IncompatibleError, match="the same content"):
        merge_files([a, a], tmp_path / "aa.ddk.h5")
    shutil.copyfile(a, tmp_path / "copy.ddk.h5")
    with pytest.raises(IncompatibleError, match="the same content"):
        merge_files([a, tmp_path / "copy.ddk.h5"], tmp_path / "ac.ddk.h5")
    rerun = tmp_path / "rerun.ddk.h5"
    make(rerun, source, seed=0, ipc=3)  # the same seed and config: the same draws (here, other images)
    with pytest.raises(IncompatibleError, match=r"the same run \(seed 0"):
        merge_files([a, rerun], tmp_path / "ar.ddk.h5")
    merge_files([a, b], tmp_path / "ab.ddk.h5")
    with pytest.raises(IncompatibleError, match="the same content"):  # a is inside ab already
        merge_files([tmp_path / "ab.ddk.h5", a], tmp_path / "aba.ddk.h5")
    other_config = tmp_path / "shard.ddk.h5"
    make(other_config, source, seed=0, ipc=3, config={"classes": [5, 6]})  # same seed, another shard: fine
    merge_files([a, other_config], tmp_path / "as.ddk.h5")
    assert not (tmp_path / "aa.ddk.h5").exists() and not (tmp_path / "aba.ddk.h5").exists()
