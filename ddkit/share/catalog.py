"""`ddkit catalog`: an SQLite index over many distilled files, for a team to find what others made.

`scan` reads each file's header and result cards (local files after their seal is checked, so a
damaged file is never parsed, then opened under the reader policy of `ddkit.h5safe`; URLs by
ranged reads of the header only) into `$DDKIT_CACHE/catalog.sqlite` (or `--catalog PATH`, a shared
index). A file that cannot be read is listed as damaged with the reason, never ends the scan; each
file is committed in its own short transaction (headers are read with no lock held), so two scans
of one catalog both finish and a scan that dies keeps every row it committed. Folders are walked
without following links: a link or special file is skipped and counted, never read.

The files stay the source of truth: the index is rebuilt from them by scanning again, and `ls`
marks a local file whose bytes changed since it was indexed (its seal block differs) as stale, a
vanished one as missing. A catalog may be shared and edited by anyone, so its rows are foreign
values: `ls` types every column and escapes every name it prints, and `get` refuses a location that
is not a regular file or not a sealed ddkit file whose content matches the row, whatever it is named.
Nothing in a shared catalog decides where ddkit reads: a catalog named with `--catalog` indexes and
opens only local files inside its own folder (a row pointing elsewhere is listed as "outside" and never
touched); only the user's own default catalog, in their cache, indexes files anywhere.

An entry's id is the first 12 hex digits of its content hash: the same on every rescan and in every
catalog. `ls` groups cards by protocol and IPC and ranks only within a group; cards of derived
protocols (a shortened `--steps` run, `NAME[changes]@V`) are never ranked: `--derived` lists them apart.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
from pathlib import Path

from ddkit.errors import DdkitError, FileFormatError, InvalidInput
from ddkit.paths import kind, regular_file, walk
from ddkit.records import printable
from ddkit.share.remote import cache_dir, fetch, filesystem, header_dict, header_info, is_url, local_target
from ddkit.store.h5io import SEAL_BYTES, check_seal, open_store, reading, verify_content
from ddkit.store.results import STORE_FORMATS, summarize_card

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY, location TEXT UNIQUE NOT NULL, status TEXT NOT NULL, problem TEXT,
    content_sha256 TEXT, seal_sha256 TEXT, size INTEGER, mtime_ns INTEGER, scanned TEXT,
    dataset TEXT, method TEXT, ipc INTEGER, instances INTEGER, bytes INTEGER, created TEXT, teachers TEXT);
CREATE TABLE IF NOT EXISTS results (
    file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE, protocol TEXT NOT NULL,
    mean REAL, std REAL, random_mean REAL, gain REAL, PRIMARY KEY (file_id, protocol));
"""
_COLUMNS = {
    "files": ["id", "location", "status", "problem", "content_sha256", "seal_sha256", "size", "mtime_ns", "scanned",
              "dataset", "method", "ipc", "instances", "bytes", "created", "teachers"],
    "results": ["file_id", "protocol", "mean", "std", "random_mean", "gain"],
}
USER_VERSION = 1  # PRAGMA user_version of a ddkit catalog (0: made before it was set; the columns decide)
_SORT = {"gain": "r.gain DESC", "accuracy": "r.mean DESC", "bytes": "f.bytes ASC", "created": "f.created DESC"}
MAX_ID = 2**63 - 1  # SQLite's integers
MAX_LIMIT = 1 << 31
BUSY_SECONDS = 60  # how long a writer waits for another's short transaction
_FIX = "give another --catalog path (or move that file away and scan again)"


def default_catalog() -> Path:
    return cache_dir().parent / "catalog.sqlite"


def _same_file(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _seal_sha(head: bytes) -> str:
    return hashlib.sha256(head[:SEAL_BYTES]).hexdigest()


def _read_seal_block(path: str) -> bytes:
    """The first SEAL_BYTES of a regular file, opened without blocking (a FIFO or device is refused)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise OSError("not a regular file")
        return fh.read(SEAL_BYTES)


def _int_arg(value, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"{name} must be a whole number from {low} to {high}, got {value!r}",
                           f"give {name} within that range")
    return value


class Catalog:
    """The index file; use as a context manager."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path else default_catalog()
        found = kind(self.path)
        if found == "symlink":
            found = "file" if self.path.is_file() else ("missing" if not self.path.exists() else "other")
        if found not in ("missing", "file"):
            raise FileFormatError(f"{self.path} is not a regular file (an SQLite catalog is one)", _FIX)
        self.home = None if path is None or _same_file(self.path, default_catalog()) \
            else Path(os.path.realpath(self.path.parent))  # where a shared catalog's local files must lie
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FileFormatError(f"cannot create the folder of {self.path} ({exc.strerror or exc})", _FIX) from None
        try:
            self.db = sqlite3.connect(self.path, timeout=BUSY_SECONDS)
        except sqlite3.Error as exc:
            raise FileFormatError(f"{self.path} cannot be opened as a catalog ({exc})", _FIX) from None
        try:
            self._check_schema()
        except BaseException:
            self.db.close()
            raise

    def _check_schema(self) -> None:
        """Create the tables of a new catalog; refuse a database of another schema or program."""
        try:
            with self.db:
                version = self.db.execute("PRAGMA user_version").fetchone()[0]
                if version > USER_VERSION:
                    raise FileFormatError(f"{self.path} is a catalog of a newer ddkit (schema {version})",
                                          "upgrade ddkit, or give another --catalog path")
                tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                for table, columns in _COLUMNS.items():
                    if table in tables:
                        found = [r[1] for r in self.db.execute(f"PRAGMA table_info({table})")]
                        if found != columns:
                            raise FileFormatError(
                                f"{self.path} is not a ddkit catalog: its table {table!r} has columns "
                                f"{printable(', '.join(map(str, found)))[:200]}", _FIX)
                others = {t for t in tables - set(_COLUMNS) if not t.startswith("sqlite_")}
                if version == 0 and others:
                    raise FileFormatError(f"{self.path} is an SQLite database of another program (tables "
                                          f"{printable(', '.join(sorted(others)))[:200]})", _FIX)
            if version != USER_VERSION or not set(_COLUMNS) <= tables:  # a new catalog: a read-only one is fine
                self.db.executescript("BEGIN;" + _SCHEMA + f"PRAGMA user_version = {USER_VERSION};COMMIT;")
            self.db.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as exc:
            raise FileFormatError(f"{self.path} is not a ddkit catalog ({exc})", _FIX) from None

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc) -> None:
        self.db.close()  # every write committed its own transaction

    # -- scanning --------------------------------------------------------------------------------
    def _locations(self, root: str, skipped: list[tuple[str, str]]) -> list[str]:
        if is_url(root):
            if local_target(root) is not None and not self.holds(local_target(root)):
                raise self._outside(root)
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
        if not path.is_dir():  # a file the user named (a link to one is the user's choice)
            if not path.is_file():
                raise InvalidInput(f"{root} is not a file or folder (a FIFO, device or socket)",
                                   "give a folder or a file")
            found = [path.resolve()]
        else:
            tree = walk(path, match=lambda p: p.name.endswith(".ddk.h5"))
            skipped += [(str(p), reason) for p, reason in tree.refused]
            found = [p.resolve() for p in tree.files]
        if any(not self.holds(str(p)) for p in found):
            raise self._outside(root)
        return [str(p) for p in found]

    def _outside(self, root: str) -> InvalidInput:
        return InvalidInput(
            f"{root} is outside the folder of the catalog {self.path} ({self.home}): a catalog named with "
            "--catalog indexes only files inside its own folder, so that no edited row can make ddkit read elsewhere",
            f"put the catalog in a folder above {root} (--catalog DIR/catalog.sqlite), or scan into your "
            "own default catalog (no --catalog)")

    def holds(self, location: str) -> bool:
        """Whether this catalog may open the local file `location`: anywhere for the user's own default
        catalog; for a catalog named with --catalog, only a path inside its folder with no link on the way
        (decided from the name first, so nothing outside is ever touched)."""
        if self.home is None:
            return True
        if not os.path.isabs(location):
            return False
        norm, home = os.path.normpath(location), str(self.home)
        if os.path.commonpath([norm, home]) != home or norm == home:
            return False
        return os.path.realpath(norm) == norm

    def scan(self, roots: list[str]) -> dict[str, int]:
        """Index every `.ddk.h5` under `roots`; returns counts by status ("skipped": links and special
        files, which are never read; `self.skipped` lists them with the reason)."""
        counts = {"ok": 0, "damaged": 0}
        self.skipped: list[tuple[str, str]] = []
        locations = [loc for root in roots for loc in self._locations(root, self.skipped)]  # every root checked first
        for location in locations:
            status = self._index(location)
            counts[status] = counts.get(status, 0) + 1
        if self.skipped:
            counts["skipped"] = len(self.skipped)
        return counts

    def _index(self, location: str) -> str:
        """Read one file's header (no lock held), then write its rows in one short transaction."""
        row: dict = {"location": location, "scanned": _now()}
        try:
            if is_url(location):
                d = header_info(location)
                row["size"] = d["remote"]["size"]
            else:
                d = self._local_header(location, row)
            row.update(_header_row(d))
            results = d["results"]
        except DdkitError as exc:
            row.update(status="damaged", problem=exc.problem)
            results = {}
        except Exception as exc:  # noqa: BLE001 — one file's surprise never ends a scan; its row names it
            row.update(status="damaged", problem=f"could not be indexed ({type(exc).__name__}: {str(exc)[:200]})")
            results = {}
        self._upsert(row, results)
        return row["status"]

    @staticmethod
    def _local_header(location: str, row: dict) -> dict:
        regular_file(location, "catalog entry")
        check_seal(location, full=True)  # never hand a damaged file to the HDF5 library
        st = os.stat(location)
        row.update(size=st.st_size, mtime_ns=st.st_mtime_ns, seal_sha256=_seal_sha(_read_seal_block(location)))
        h5, _ = open_store(location, STORE_FORMATS, verify=False)  # the reader policy of ddkit.h5safe
        with h5, reading(location):
            return header_dict(h5, location)

    def _upsert(self, row: dict, results: dict) -> None:
        with self.db:  # one short transaction per file
            self.db.execute("DELETE FROM files WHERE location = ?", (row["location"],))
            cols = ", ".join(row)
            cur = self.db.execute(f"INSERT INTO files ({cols}) VALUES ({', '.join('?' * len(row))})",
                                  list(row.values()))
            for name, card in results.items():
                if card.get("check"):  # a recorded check (contamination), not an evaluation: no numbers to rank
                    continue
                s = summarize_card(name, card)
                self.db.execute(
                    "INSERT INTO results VALUES (?, ?, ?, ?, ?, ?)",
                    (cur.lastrowid, name, *(_number(s[k]) for k in ("mean", "std", "random_mean", "gain"))),
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
        limit = _int_arg(limit, "limit", 1, MAX_LIMIT)
        if ipc is not None:
            ipc = _int_arg(ipc, "ipc", 0, MAX_ID)
        if sort not in _SORT:
            raise InvalidInput(f"sort must be one of {', '.join(_SORT)}, got {sort!r}")
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
        try:
            rows = [_typed_row(dict(zip(names, r, strict=True))) for r in self.db.execute(sql, [*args, limit])]
        except sqlite3.DatabaseError as exc:
            raise FileFormatError(f"{self.path} could not be read as a catalog ({exc})", _FIX) from None
        for row in rows:
            held = row["status"] != "ok" or self.holds_row(row)
            row["status"] = self._current_status(row) if held else "outside"
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

    def holds_row(self, row: dict) -> bool:
        """Whether the row's location may be read: a remote URL (fetched and verified in the cache), or a
        local file (a path, `file://` or `local://`) this catalog holds."""
        target = local_target(row["location"])
        return target is None or self.holds(target)

    @staticmethod
    def _current_status(row: dict) -> str:
        """ok / damaged as indexed, or stale / missing when a local file changed or vanished since
        (a location that is not a regular file any more is "invalid": it is never opened)."""
        if row["status"] != "ok" or is_url(row["location"]):
            return row["status"]
        try:
            st = os.lstat(row["location"])
        except (OSError, ValueError):
            return "missing"
        if not stat.S_ISREG(st.st_mode):
            return "invalid"
        if (st.st_size, st.st_mtime_ns) == (row["size"], row["mtime_ns"]):
            return "ok"
        try:
            if _seal_sha(_read_seal_block(row["location"])) != row["seal_sha256"]:
                return "stale"  # rewritten: another file now
        except OSError:
            return "invalid"
        try:  # touched, or changed inside: the body must still match the seal it was indexed with
            check_seal(row["location"], full=True)
        except DdkitError:
            return "stale"
        return "ok"

    def get(self, key: str, out: str | os.PathLike | None = None,
            trusted_keys: str | os.PathLike | bool | None = None, overwrite: bool = False) -> Path:
        """Fetch the file indexed as `key` (its id: a content-hash prefix of at least 6 hex digits),
        verified against the index. Copies of one content at several locations are one entry.

        The row may have been edited by anyone who can write the catalog: a local location must be a
        regular file (not a link, FIFO or device) holding a sealed ddkit file whose content hash is the
        row's, whatever its name; nothing else is copied or returned. With `trusted_keys` (a file, or
        True for the default one) the file must also be signed by one of those keys.
        """
        key = str(key).strip().lower()
        if not 6 <= len(key) <= 64 or any(c not in "0123456789abcdef" for c in key):
            raise InvalidInput(f"{printable(key)[:80]!r} is not a catalog id: ids are the first hex digits of a "
                               "file's content hash", "give an id from `ddkit catalog ls` (at least 6 hex digits)")
        try:
            rows = self.db.execute("SELECT location, content_sha256, status FROM files WHERE content_sha256 LIKE ? "
                                   "ORDER BY (status != 'ok'), location", (f"{key}%",)).fetchall()
        except sqlite3.DatabaseError as exc:
            raise FileFormatError(f"{self.path} could not be read as a catalog ({exc})", _FIX) from None
        contents = {r[1] for r in rows}
        if len(contents) != 1:
            raise InvalidInput(f"{len(contents)} indexed contents match {key!r}" + (
                f" ({', '.join(sorted(printable(c)[:12] for c in contents))})" if contents else ""),
                "give a longer id from `ddkit catalog ls`" if contents else "give an id from `ddkit catalog ls`")
        location, content, status = rows[0]
        if not isinstance(location, str) or not isinstance(content, str) or status != "ok":
            shown = printable(location)[:200]
            raise FileFormatError(f"catalog entry {key} ({shown}) is not a good indexed file (status "
                                  f"{printable(status)[:40]})", "rescan it with `ddkit catalog scan`")
        if not self.holds_row({"location": location}):
            raise FileFormatError(
                f"catalog entry {key} points outside the folder of the catalog {self.path} ({self.home}): "
                f"{printable(location)[:200]}; a catalog named with --catalog opens only files inside its own folder",
                "someone edited that row; rescan the catalog's folder with `ddkit catalog scan`")
        if is_url(location):
            path = fetch(location, expected_content=content)
        else:
            path = Path(location)
            verify_store_file(path, content)
        if trusted_keys is not None and trusted_keys is not False:
            from ddkit.share.sign import require_signature

            require_signature(path, None if trusted_keys is True else trusted_keys)
        if out is not None:
            from ddkit.fileio import atomic_output

            with atomic_output(out, overwrite) as tmp, open(path, "rb") as src, open(tmp, "wb") as dst:
                while block := src.read(1 << 20):
                    dst.write(block)
            return Path(out)
        return path


def verify_store_file(path: Path, expected_content: str | None = None) -> str:
    """Refuse (FileFormatError) anything at `path` but a regular file holding a sealed ddkit file whose
    content hash is `expected_content`; its content hash. The name plays no part."""
    regular_file(path, "catalog entry", fix="rescan the catalog; a catalog names files, never links")
    check_seal(path, full=True)
    h5, _ = open_store(path, STORE_FORMATS, verify=False)
    with h5:
        digest = verify_content(h5, path)
    if expected_content is not None and digest != expected_content:
        raise FileFormatError(f"{path} holds content {digest[:12]}…, not the {expected_content[:12]}… indexed",
                              "the file changed since it was indexed; rescan the catalog")
    return digest


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


_TEXT = ("location", "status", "problem", "dataset", "method", "created", "content_sha256", "seal_sha256", "protocol")
_NUMBERS = ("id", "ipc", "bytes", "size", "mtime_ns", "mean", "std", "random_mean", "gain")


def _typed_row(row: dict) -> dict:
    """A row as read from a catalog anyone may have edited: a value of the wrong type marks the row
    "invalid" (its problem names the column) instead of failing later."""
    wrong = [k for k in _TEXT if row[k] is not None and not isinstance(row[k], str)]
    wrong += [k for k in _NUMBERS
              if row[k] is not None and (isinstance(row[k], bool) or not isinstance(row[k], (int, float)))]
    if row["status"] not in ("ok", "damaged") and "status" not in wrong:
        wrong.append("status")
    if not wrong:
        return row
    for k in wrong:
        row[k] = None if k in _NUMBERS else printable(row[k])[:200]
    if not isinstance(row["location"], str):
        row["location"] = ""
    row.update(status="invalid", problem=f"edited catalog row: {', '.join(wrong)} of the wrong type or value")
    return row


def _header_row(d: dict) -> dict:
    budget = d["budget"]
    return dict(
        status="ok",
        problem=None,
        content_sha256=d["content_sha256"],
        dataset=d["dataset"]["name"],
        method=d["method"],
        ipc=budget["ipc_stored"],
        instances=d["instances"],
        bytes=budget["bytes_images"] + budget["bytes_labels"] + budget["bytes_aux"],
        created=d["created"],
        teachers=json.dumps([t.get("sha256") if isinstance(t, dict) else None for t in d["teachers"]]),
    )


def _now() -> str:
    from ddkit.provenance import utc_now

    return utc_now()


def _pct(x, signed: bool = False) -> str:
    if not isinstance(x, (int, float)):
        return "—"
    return f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}"


def entry_id(row: dict) -> str:
    """An entry's id: the first 12 hex digits of its content hash (stable across rescans), "—" when damaged."""
    return printable(row.get("content_sha256") or "")[:12] or "—"


def format_rows(rows: list[dict], empty: str = "no entries (run `ddkit catalog scan DIR_OR_URL`)") -> str:
    """The `catalog ls` table: one block per protocol and IPC (ranked within it), unevaluated and
    damaged files last; every name from a file or the catalog is escaped (`printable`)."""
    if not rows:
        return empty
    header = (f"  {'id':<12}  {'status':<8} {'dataset':<20} {'method':<12} {'acc %':>6} {'random':>6} {'gain':>6} "
              f"{'bytes':>9}  location")
    lines, group = [], None
    for r in rows:
        text = {k: printable(r[k] if r[k] is not None else "—") for k in ("dataset", "method", "protocol", "location")}
        key = (r["protocol"], r["ipc"]) if r["status"] == "ok" else ("damaged", None)
        if key != group:
            group = key
            title = ("not evaluated" if r["protocol"] is None else f"{text['protocol']}, ipc {r['ipc']}") \
                if r["status"] == "ok" else "damaged, stale, missing, invalid or outside"
            lines += ([""] if lines else []) + [title + (" (derived protocol: a shortened or altered run, not ranked)"
                                                         if r["protocol"] and "[" in r["protocol"] else ""), header]
        lines.append(
            f"  {r['id']:<12}  {printable(r['status']):<8} {text['dataset']:<20} {text['method']:<12} "
            f"{_pct(r['mean']):>6} {_pct(r['random_mean']):>6} {_pct(r['gain'], True):>6} {str(r['bytes'] or '—'):>9}  "
            f"{text['location']}" + (f"  ({printable(r['problem'])})" if r["problem"] else "")
        )
    return "\n".join(lines)
