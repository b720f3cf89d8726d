"""One policy for every path ddkit did not get from the user: names found in files and in folders.

A path the user types (a command-line argument, a library call's argument) is the user's choice.
A name ddkit *finds* is a stranger's: the `set` or a teacher `file` of a `pack.json`, a teacher's
`arch` that becomes part of a file name, the entries of a folder being imported, packed or
scanned. Such a name never becomes a path to read or write unless it stays inside the folder it
came from:

- `member(folder, name)` turns a name found in a file into a path inside `folder`, or refuses it
  (absolute paths, `..`, empty or NUL-bearing names, and any symbolic link on the way);
- `component(text)` turns text found in a file into one safe file-name component (for names ddkit
  writes, like `teachers/<arch>-<sha>.safetensors`);
- `walk(root)` lists a folder without following symbolic links and sorts out what ddkit must not
  read: links (which can point anywhere: `/etc/passwd`, a file of another user, a device) and
  special files (FIFOs block a reader forever, devices stream without end). Following links is an
  explicit opt-in (`follow_symlinks=True`); special files are refused even then;
- `regular_file(path)` / `read_small(path)` check one entry the same way before it is opened
  (with `O_NONBLOCK`, so even a FIFO swapped in at the last moment cannot block the open);
- `output_folder(path)` checks a folder the user named for output before anything is written:
  never `.`, `..`, `/` or a folder holding the current one, never a symbolic link (dangling or
  not), never inside a file system ddkit cannot write (`/proc/…`).
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

from ddkit.errors import FileFormatError, OutputExists, OutputUnwritable, UnsafePath
from ddkit.fileio import check_writable

FOLLOW_FIX = "replace the link by the file it points to (or pass --follow-symlinks to read links on purpose)"
_SAFE_CHARS = re.compile(r"[^A-Za-z0-9._+-]+")


def kind(path: str | os.PathLike) -> str:
    """What `path` itself is, without following a final symbolic link: "missing", "file", "folder",
    "symlink", "fifo", "socket", "device" or "other"."""
    try:
        mode = os.lstat(path).st_mode
    except (OSError, ValueError):  # ValueError: a NUL byte in the name
        return "missing"
    return _kind_of(mode)


def _kind_of(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "other"


def _describe(path: Path, what: str) -> str:
    if what == "symlink":
        try:
            return f"a symbolic link (to {os.readlink(path)})"
        except OSError:
            return "a symbolic link"
    return {"fifo": "a FIFO (named pipe)", "socket": "a socket", "device": "a device file",
            "folder": "a folder", "missing": "missing"}.get(what, "not a regular file")


def regular_file(path: str | os.PathLike, what: str, *, follow_symlinks: bool = False,
                 fix: str = FOLLOW_FIX) -> Path:
    """`path` (an entry ddkit found in a folder) if it is a regular file; refuse a symbolic link
    (unless `follow_symlinks`, and then only one that ends at a regular file), a special file or
    anything missing, with one UnsafePath / FileFormatError naming `what`."""
    path = Path(path)
    found = kind(path)
    if found == "symlink" and follow_symlinks:
        try:
            found = _kind_of(os.stat(path).st_mode)
        except OSError:
            found = "missing"
    if found == "file":
        return path
    if found == "missing":
        raise FileFormatError(f"{what} {path} does not exist (or is a link to nothing)", "check the path")
    if found == "symlink":
        raise UnsafePath(f"{what} {path} is {_describe(path, found)}; ddkit does not follow links it finds in "
                         "folders or files", fix)
    raise UnsafePath(f"{what} {path} is {_describe(path, found)}, not a regular file",
                     "replace it by a plain file")


def read_small(path: str | os.PathLike, what: str, max_bytes: int = 1 << 20, *, follow_symlinks: bool = False) -> bytes:
    """The bytes of a small file ddkit found in a folder (a sidecar, a class map, a manifest): checked
    with `regular_file`, opened without blocking and without following a final link, checked again
    on the open descriptor, and refused beyond `max_bytes`."""
    path = regular_file(path, what, follow_symlinks=follow_symlinks)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise FileFormatError(f"{what} {path} cannot be opened ({exc.strerror or exc})", "check the file") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(f"{what} {path} is not a regular file", "replace it by a plain file")
        if st.st_size > max_bytes:
            raise FileFormatError(f"{what} {path} is {st.st_size} bytes, over the {max_bytes} byte limit",
                                  "give the file ddkit wrote (it is far smaller)")
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FileFormatError(f"{what} {path} is over the {max_bytes} byte limit", "give the file ddkit wrote")
    return data


def read_json(path: str | os.PathLike, what: str, fix: str = "re-create the file with ddkit", max_bytes: int = 1 << 20,
              *, follow_symlinks: bool = False):
    """A small JSON file ddkit found in a folder (`read_small`, then `ddkit.records.parse_json`)."""
    from ddkit.records import parse_json

    return parse_json(read_small(path, what, max_bytes, follow_symlinks=follow_symlinks), f"{what} {path}", fix)


# -- names found inside files ---------------------------------------------------------------------


def member(folder: str | os.PathLike, name: object, what: str, *, must_exist: bool = True) -> Path:
    """The path that `name` (found inside a file of `folder`) names inside `folder`, or UnsafePath.

    Refused: anything but a non-empty string, NUL bytes, absolute paths (`/x`, `\\x`, `C:x`), `..`
    anywhere, and a symbolic link or special file at any step from `folder` down. With `must_exist`
    the result is an existing regular file.
    """
    folder = Path(folder)
    if not isinstance(name, str) or not name.strip():
        raise UnsafePath(f"{what} must be a non-empty relative path inside {folder}, got {name!r}",
                         "re-create the folder with ddkit")
    if "\0" in name or "\\" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise UnsafePath(f"{what} {name!r} is not a relative path inside {folder}",
                         "ddkit reads only files inside the folder a manifest describes; re-create the folder")
    parts = PurePosixPath(name).parts
    if any(p == ".." for p in parts):
        raise UnsafePath(f"{what} {name!r} reaches outside {folder} ('..')",
                         "ddkit reads only files inside the folder a manifest describes; re-create the folder")
    current = folder
    for i, part in enumerate(parts):
        if part == ".":
            continue
        current = current / part
        found = kind(current)
        last = i == len(parts) - 1
        if found == "missing" and not must_exist:
            return folder.joinpath(*parts)
        if found == "folder" and not last:
            continue
        if found == "file" and last:
            return current
        if found == "missing":
            raise FileFormatError(f"{what} {current} does not exist", "re-create the folder with ddkit")
        if found in ("symlink", "fifo", "socket", "device", "other"):
            raise UnsafePath(f"{what} {current} is {_describe(current, found)}; ddkit reads only plain files "
                             f"inside {folder}", "replace it by the plain file")
        raise UnsafePath(f"{what} {current} is {_describe(current, found)}, not a file", "re-create the folder")
    if must_exist:
        raise UnsafePath(f"{what} {name!r} names {folder} itself, not a file in it", "re-create the folder")
    return folder.joinpath(*parts)


def component(text: object, fallback: str = "item", max_length: int = 64) -> str:
    """One file-name component made from `text` found in a file: characters outside
    `A-Z a-z 0-9 . _ + -` become `_`, leading dots and `_` are dropped (no hidden files, no `.`/`..`),
    at most `max_length` characters; `fallback` when nothing is left."""
    cleaned = _SAFE_CHARS.sub("_", text if isinstance(text, str) else "").lstrip("._")[:max_length].rstrip("_")
    return cleaned or fallback


# -- walking folders ------------------------------------------------------------------------------


@dataclass
class Walk:
    """What `walk` found: regular `files` (sorted), `folders`, and `refused` (path, reason) entries."""

    root: Path
    files: list[Path] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)
    refused: list[tuple[Path, str]] = field(default_factory=list)

    def raise_refused(self, what: str, fix: str = FOLLOW_FIX) -> None:
        """UnsafePath for the first refused entry (the count of the rest in the message)."""
        if self.refused:
            path, reason = self.refused[0]
            more = f" (and {len(self.refused) - 1} more)" if len(self.refused) > 1 else ""
            raise UnsafePath(f"{what} {self.root}: {path} is {reason}{more}; ddkit does not read links or "
                             "special files it finds in a folder", fix)


def walk(root: str | os.PathLike, *, match: Callable[[Path], bool] | None = None, follow_symlinks: bool = False,
         max_entries: int = 10_000_000) -> Walk:
    """Every entry below `root` (the user named `root`, so it may itself be a link), without
    following links: regular files that `match` (all when None) go to `files`; links and special
    files go to `refused`, unless `follow_symlinks` and the link ends at a regular file or folder
    (folders reached twice through links are walked once). Links and special files that `match`
    rejects are not refused when `match` looks at names only: they are never opened."""
    root = Path(root)
    out = Walk(root)
    seen: set[tuple[int, int]] = set()
    count = 0

    def visit(folder: Path) -> None:
        nonlocal count
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen:
                return
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            out.refused.append((folder, f"a folder that cannot be listed ({exc.strerror or exc})"))
            return
        for entry in entries:
            count += 1
            if count > max_entries:
                raise FileFormatError(f"{root} holds more than {max_entries} entries", "give a smaller folder")
            path = Path(entry.path)
            try:
                found = _kind_of(entry.stat(follow_symlinks=False).st_mode)
            except OSError:
                found = "missing"
            if found == "symlink" and follow_symlinks:
                try:
                    target = _kind_of(os.stat(path).st_mode)
                except OSError:
                    target = "missing"
                if target in ("file", "folder"):
                    found = target
                else:
                    out.refused.append((path, f"a symbolic link to {_describe(path, target)}"))
                    continue
            if found == "folder":
                out.folders.append(path)
                visit(path)
            elif found == "file":
                if match is None or match(path):
                    out.files.append(path)
            elif match is None or match(path):
                out.refused.append((path, _describe(path, found)))

    visit(root)
    out.files.sort()
    return out


# -- output folders the user names ----------------------------------------------------------------


def output_folder(path: str | os.PathLike) -> Path:
    """Check a folder the user named for output (export, pack) before any work: refuse `.`, `..`, `/`
    and any folder that holds the current one (replacing it would pull the floor from under the
    command), a symbolic link (dangling or not: the rename that publishes the folder would replace
    the link, not write where it points), an existing file, and a parent folder that cannot be
    written (OutputUnwritable, e.g. under /proc)."""
    text = os.fspath(path)
    if not text or PurePosixPath(text).name in ("", ".", "..") or text.rstrip("/").endswith(("/.", "/..")):
        raise OutputExists(f"{text!r} names the current folder, a parent folder or the root, not a new folder",
                           "give the name of a folder to create, e.g. ./my-export")
    target = Path(text)
    absolute = Path(os.path.abspath(text))
    with contextlib.suppress(OSError):
        resolved = absolute.resolve()
        cwd = Path.cwd().resolve()
        if resolved == Path(resolved.anchor) or cwd == resolved or resolved in cwd.parents:
            raise OutputExists(f"{text} is the root or holds the current folder", "give a new folder inside it")
    found = kind(target)
    if found == "symlink":
        raise OutputExists(f"{text} is {_describe(target, found)}", "give a plain folder path (not a link)")
    if found not in ("missing", "folder"):
        raise OutputExists(f"{text} is {_describe(target, found)}, not a folder", "give a folder path")
    parent = absolute.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputUnwritable(f"cannot write {text}: {parent} is not a folder",
                               "choose an output folder you can write")
    check_writable(parent / absolute.name, text, "choose an output folder you can write")
    return target
