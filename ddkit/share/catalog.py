"""`ddkit catalog`: an SQLite index over many distilled files, for a team to find what others made.

`scan` reads each file's header and result cards (local files after their seal is checked, so a
damaged file is never parsed; URLs by ranged reads of the header only) into
`$DDKIT_CACHE/catalog.sqlite` (or `--catalog PATH`, a shared index). A file that cannot be read is
listed as damaged with the reason, never ends the scan. The files stay the source of truth: the
index is rebuilt from them by scanning again, and `ls` marks a local file whose bytes changed
since it was indexed (its seal block differs) as stale, and a vanished one as missing.
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
    ) -> list[dict]:
        """Indexed files (one row per file and result card), filtered, best first; status re-checked."""
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
        order = _SORT[sort]
        sql = (
            f"SELECT f.id, f.location, f.status, f.problem, f.dataset, f.method, f.ipc, f.bytes, f.created, "
            f"f.content_sha256, f.seal_sha256, f.size, f.mtime_ns, r.protocol, r.mean, r.std, r.random_mean, r.gain "
            f"FROM files f {join} results r ON r.file_id = f.id {'WHERE ' + ' AND '.join(where) if where else ''} "
            f"ORDER BY (f.status != 'ok'), {order.split()[0]} IS NULL, {order}, f.id LIMIT ?"
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
            for key in ("seal_sha256", "size", "mtime_ns"):
                row.pop(key)
        return rows

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
            return "ok" if _seal_sha(fh.read(SEAL_BYTES)) == row["seal_sha256"] else "stale"

    def get(self, key: str, out: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
        """Fetch the file indexed as `key` (an id or a content-hash prefix), verified against the index."""
        field, value = ("id = ?", int(key)) if key.isdigit() else ("content_sha256 LIKE ?", f"{key}%")
        rows = self.db.execute(f"SELECT location, content_sha256, status FROM files WHERE {field}", (value,)).fetchall()
        if len(rows) != 1:
            raise InvalidInput(f"{len(rows)} catalog entries match {key!r}", "give an id from `ddkit catalog ls`")
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


def format_rows(rows: list[dict]) -> str:
    """The `catalog ls` table."""
    if not rows:
        return "no entries (run `ddkit catalog scan DIR_OR_URL`)"
    lines = [
        f"{'id':>4}  {'status':<8} {'dataset':<20} {'method':<12} {'ipc':>4}  {'protocol':<14} {'acc %':>6} "
        f"{'random':>6} {'gain':>6} {'bytes':>9}  location"
    ]
    for r in rows:
        lines.append(
            f"{r['id']:>4}  {r['status']:<8} {str(r['dataset'] or '—'):<20} {str(r['method'] or '—'):<12} "
            f"{str(r['ipc'] or '—'):>4}  {str(r['protocol'] or '—'):<14} {_pct(r['mean']):>6} "
            f"{_pct(r['random_mean']):>6} {_pct(r['gain'], True):>6} {str(r['bytes'] or '—'):>9}  {r['location']}"
            + (f"  ({r['problem']})" if r["problem"] else "")
        )
    return "\n".join(lines)
