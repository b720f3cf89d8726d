"""`ddkit catalog`: an SQLite index over many distilled files, for a team to find what others made.

`scan` reads each file's header and result cards (local files after their seal is checked, so a
damaged file is never parsed; URLs by ranged reads of the header only) into
`$DDKIT_CACHE/catalog.sqlite` (or `--catalog PATH`, a shared index). A file that cannot be read is
listed as damaged with the reason, never ends the scan. The files stay the source of truth: the
index is rebuilt from them by scanning again, and `ls` marks a local file whose bytes changed
since it was indexed (its seal block differs, or its body no longer matches the seal) as stale, and
a vanished one as missing.

An entry's id is the first 12 hex digits of its content hash: the same on every rescan and in every
catalog. `ls` groups cards by protocol and IPC and ranks only within a group; cards of derived
protocols (a shortened `--steps` run, `NAME[changes]@V`) are never ranked: `--derived` lists them apart.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from pathlib import Path

from ddkit.errors import DdkitError, FileFormatError, InvalidInput
from ddkit.share.remote import cache_dir, fetch, filesystem, header_info, is_url, verify_local
from ddkit.store.h5io import SEAL_BYTES, check_seal
from ddkit.store.results import summarize_card

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY, location TEXT UNIQUE NOT NULL, status TEXT NOT NULL, problem TEXT,
    content_sha256 TEXT, seal_sha256 TEXT, size INTEGER, mtime_ns INTEGER, scanned TEXT,
    dataset TEXT, method TEXT, ipc INTEGER, instances INTEGER, bytes INTEGER, created TEXT, teachers TEXT);
CREATE TABLE IF NOT EXISTS results (
    file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE, protocol TEXT NOT NULL,
    mean REAL, std REAL, random_mean REAL, gain REAL, PRIMARY KEY (file_id, protocol));
"""
_SORT = {"gain": "r.gain DESC", "accuracy": "r.mean DESC", "bytes": "f.bytes ASC", "created": "f.created DESC"}


def default_catalog() -> Path:
    return cache_dir().parent / "catalog.sqlite"


def _seal_sha(head: bytes) -> str:
    return hashlib.sha256(head[:SEAL_BYTES]).hexdigest()


class Catalog:
    """The index file; use as a context manager."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path else default_catalog()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path)
            self.db.execute("PRAGMA foreign_keys = ON")
            self.db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise FileFormatError(
                f"{self.path} is not a ddkit catalog ({exc})", "give another --catalog path"
            ) from None

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc) -> None:
        self.db.commit()
        self.db.close()

    # -- scanning --------------------------------------------------------------------------------
    def _locations(self, root: str) -> list[str]:
        if is_url(root):
            if root.endswith(".ddk.h5"):
                return [root]
            fs, rpath = filesystem(root)
            protocol = root.split("://", 1)[0]
            return [
                f"{protocol}://{p}" if "://" not in p else p for p in sorted(fs.find(rpath)) if p.endswith(".ddk.h5")
            ]
        path = Path(root)
        if not path.exists():
            raise InvalidInput(f"{root} does not exist", "give a folder, a .ddk.h5 file or a URL")
        return [str(p.resolve()) for p in (sorted(path.rglob("*.ddk.h5")) if path.is_dir() else [path])]

    def scan(self, roots: list[str]) -> dict[str, int]:
        """Index every `.ddk.h5` under `roots`; returns counts by status."""
        counts = {"ok": 0, "damaged": 0}
        for root in roots:
            for location in self._locations(root):
                status = self._index(location)
                counts[status] = counts.get(status, 0) + 1
        self.db.commit()
        return counts

    def _index(self, location: str) -> str:
        row: dict = {"location": location, "scanned": _now()}
        try:
            if not is_url(location):
                check_seal(location, full=True)  # never hand a damaged file to the HDF5 library
                st = os.stat(location)
                with open(location, "rb") as fh:
                    row.update(size=st.st_size, mtime_ns=st.st_mtime_ns, seal_sha256=_seal_sha(fh.read(SEAL_BYTES)))
            d = header_info(location)
        except DdkitError as exc:
            row.update(status="damaged", problem=exc.problem)
            self._upsert(row, {})
            return "damaged"
        budget = d["budget"]
        row.update(
            status="ok",
            problem=None,
            content_sha256=d["content_sha256"],
            dataset=d["dataset"]["name"],
            method=d["method"],
            ipc=budget["ipc_stored"],
            instances=d["instances"],
            bytes=budget["bytes_images"] + budget["bytes_labels"] + budget["bytes_aux"],
            created=d["created"],
            teachers=json.dumps([t.get("sha256") for t in d["teachers"]]),
        )
        if is_url(location):
            row["size"] = d["remote"]["size"]
        self._upsert(row, d["results"])
        return "ok"

    def _upsert(self, row: dict, results: dict) -> None:
        self.db.execute("DELETE FROM files WHERE location = ?", (row["location"],))
        cols = ", ".join(row)
        cur = self.db.execute(f"INSERT INTO files ({cols}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
        for name, card in results.items():
            if card.get("check"):  # a recorded check (contamination), not an evaluation: no numbers to rank
                continue
            s = summarize_card(name, card)
            self.db.execute(
                "INSERT INTO results VALUES (?, ?, ?, ?, ?, ?)",
                (cur.lastrowid, name, s["mean"], s["std"], s["random_mean"], s["gain"]),
            )

    # -- querying --------------------------------------------------------------------------------
    def ls(
        self,
        dataset: str | None = None,
        method: str | None = None,
        ipc: int | None = None,
        protocol: str | None = None,
        sort: str = "gain",
        limit: int = 50,
        derived: bool = False,
    ) -> list[dict]:
        """Indexed files (one row per file and result card), filtered, grouped by protocol and IPC and best
        first within a group; status re-checked. Cards of derived protocols only with `derived` (then only
        they are listed, never ranked beside the protocols' own cards)."""
        where, args = [], []
        for column, value in (("f.dataset", dataset), ("f.method", method), ("f.ipc", ipc)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        join = "LEFT JOIN"
        if protocol is not None:
            join = "JOIN"
            where.append("r.protocol = ?")
            args.append(self._protocol_id(protocol))
        if derived:
            join = "JOIN"
            where.append("instr(r.protocol, '[') > 0")
        order = _SORT[sort]
        on = "r.file_id = f.id" + ("" if derived else " AND instr(r.protocol, '[') = 0")
        sql = (
            f"SELECT f.id, f.location, f.status, f.problem, f.dataset, f.method, f.ipc, f.bytes, f.created, "
            f"f.content_sha256, f.seal_sha256, f.size, f.mtime_ns, r.protocol, r.mean, r.std, r.random_mean, r.gain "
            f"FROM files f {join} results r ON {on} {'WHERE ' + ' AND '.join(where) if where else ''} "
            f"ORDER BY (f.status != 'ok'), r.protocol IS NULL, r.protocol, f.ipc, {order.split()[0]} IS NULL, {order}, "
            f"f.location LIMIT ?"
        )
        names = [
            "id",
            "location",
            "status",
            "problem",
            "dataset",
            "method",
            "ipc",
            "bytes",
            "created",
            "content_sha256",
            "seal_sha256",
            "size",
            "mtime_ns",
            "protocol",
            "mean",
            "std",
            "random_mean",
            "gain",
        ]
        rows = [dict(zip(names, r, strict=True)) for r in self.db.execute(sql, [*args, limit])]
        for row in rows:
            row["status"] = self._current_status(row)
            row["id"] = entry_id(row)
            for key in ("seal_sha256", "size", "mtime_ns"):
                row.pop(key)
        rows.sort(key=lambda r: r["status"] != "ok")  # stable: a file found changed just now moves down
        return rows

    def explain_empty(self, protocol: str | None = None, derived: bool = False, **filters) -> str:
        """Why `ls` found nothing: an empty catalog, no file matching the filters, or no card under
        the protocol among the files that match (with the protocols their cards are under)."""
        files = self.db.execute("SELECT COUNT(*) FROM files").fetchone()[0]
        if not files:
            return f"the catalog {self.path} is empty (run `ddkit catalog scan DIR_OR_URL`)"
        where = [f"f.{k} = ?" for k, v in filters.items() if v is not None]
        args = [v for v in filters.values() if v is not None]
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        matching = self.db.execute(f"SELECT COUNT(*) FROM files f {clause}", args).fetchone()[0]
        described = ", ".join(f"{k}={v}" for k, v in filters.items() if v is not None) or "no filter"
        if not matching:
            return f"no indexed file matches {described} ({files} file(s) indexed)"
        under = [r[0] for r in self.db.execute(
            f"SELECT DISTINCT r.protocol FROM files f JOIN results r ON r.file_id = f.id {clause} ORDER BY 1", args)]
        if derived:
            return f"no card under a derived protocol among the {matching} file(s) matching {described}"
        kept = [u for u in under if "[" not in u]
        return (f"no card under {protocol or 'any protocol'} among the {matching} file(s) matching {described}; "
                f"their cards are under: {', '.join(kept) or 'none (not evaluated)'}"
                + (" (and derived protocols: --derived)" if len(kept) < len(under) else ""))

    def _protocol_id(self, protocol: str) -> str:
        """`NAME@VERSION` as given; a bare name means its only indexed version. Cards under two versions
        of one protocol are never ranked together, so a bare name with several indexed is refused."""
        if "@" in protocol:
            return protocol
        found = sorted({r[0] for r in self.db.execute("SELECT DISTINCT protocol FROM results WHERE protocol LIKE ?",
                                                       (f"{protocol}@%",)) if r[0].partition("@")[0] == protocol})
        if len(found) > 1:
            raise InvalidInput(f"the catalog holds cards under {', '.join(found)}: results under different protocol "
                               "versions are never compared", f"pass one of them, e.g. --protocol {found[-1]}")
        return found[0] if found else f"{protocol}@1"

    @staticmethod
    def _current_status(row: dict) -> str:
        """ok / damaged as indexed, or stale / missing when a local file changed or vanished since."""
        if row["status"] != "ok" or is_url(row["location"]):
            return row["status"]
        try:
            st = os.stat(row["location"])
        except OSError:
            return "missing"
        if (st.st_size, st.st_mtime_ns) == (row["size"], row["mtime_ns"]):
            return "ok"
        with open(row["location"], "rb") as fh:
            if _seal_sha(fh.read(SEAL_BYTES)) != row["seal_sha256"]:
                return "stale"  # rewritten: another file now
        try:  # touched, or changed inside: the body must still match the seal it was indexed with
            check_seal(row["location"], full=True)
        except DdkitError:
            return "stale"
        return "ok"

    def get(self, key: str, out: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
        """Fetch the file indexed as `key` (its id: a content-hash prefix of at least 6 hex digits),
        verified against the index. Copies of one content at several locations are one entry."""
        key = key.strip().lower()
        if len(key) < 6 or any(c not in "0123456789abcdef" for c in key):
            raise InvalidInput(f"{key!r} is not a catalog id: ids are the first hex digits of a file's content hash",
                               "give an id from `ddkit catalog ls` (at least 6 hex digits)")
        rows = self.db.execute("SELECT location, content_sha256, status FROM files WHERE content_sha256 LIKE ? "
                               "ORDER BY (status != 'ok'), location", (f"{key}%",)).fetchall()
        contents = {r[1] for r in rows}
        if len(contents) != 1:
            raise InvalidInput(f"{len(contents)} indexed contents match {key!r}" + (
                f" ({', '.join(sorted(c[:12] for c in contents))})" if contents else ""),
                "give a longer id from `ddkit catalog ls`" if contents else "give an id from `ddkit catalog ls`")
        location, content, status = rows[0]
        if status != "ok":
            raise FileFormatError(f"{location} was indexed as {status}", "rescan it with `ddkit catalog scan`")
        path = fetch(location, expected_content=content) if is_url(location) else Path(location)
        if not is_url(location):
            verify_local(path, location, expected_content=content)
        if out is not None:
            from ddkit.fileio import atomic_output

            with atomic_output(out, overwrite) as tmp:
                shutil.copyfile(path, tmp)
            return Path(out)
        return path


def _now() -> str:
    from ddkit.provenance import utc_now

    return utc_now()


def _pct(x, signed: bool = False) -> str:
    if not isinstance(x, (int, float)):
        return "—"
    return f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}"


def entry_id(row: dict) -> str:
    """An entry's id: the first 12 hex digits of its content hash (stable across rescans), "—" when damaged."""
    return (row.get("content_sha256") or "")[:12] or "—"


def format_rows(rows: list[dict], empty: str = "no entries (run `ddkit catalog scan DIR_OR_URL`)") -> str:
    """The `catalog ls` table: one block per protocol and IPC (ranked within it), unevaluated and
    damaged files last."""
    if not rows:
        return empty
    header = (f"  {'id':<12}  {'status':<8} {'dataset':<20} {'method':<12} {'acc %':>6} {'random':>6} {'gain':>6} "
              f"{'bytes':>9}  location")
    lines, group = [], None
    for r in rows:
        key = (r["protocol"], r["ipc"]) if r["status"] == "ok" else ("damaged", None)
        if key != group:
            group = key
            title = ("not evaluated" if r["protocol"] is None else f"{r['protocol']}, ipc {r['ipc']}") \
                if r["status"] == "ok" else "damaged, stale or missing"
            lines += ([""] if lines else []) + [title + (" (derived protocol: a shortened or altered run, not ranked)"
                                                         if r["protocol"] and "[" in r["protocol"] else ""), header]
        lines.append(
            f"  {r['id']:<12}  {r['status']:<8} {str(r['dataset'] or '—'):<20} {str(r['method'] or '—'):<12} "
            f"{_pct(r['mean']):>6} {_pct(r['random_mean']):>6} {_pct(r['gain'], True):>6} {str(r['bytes'] or '—'):>9}  "
            f"{r['location']}" + (f"  ({r['problem']})" if r["problem"] else "")
        )
    return "\n".join(lines)
