"""`ddkit pack`: a distilled file with the teachers it references and a README, in one folder.

A set made with teachers is only half shared without them: stored soft labels are judged beside a
random subset relabeled by the same teachers, and teacher protocols relabel with them. The pack
holds the set, every teacher its header or result cards name (found among the given files and
folders by the sha256 of their tensors, and checked by loading), and `pack.json`, so that
`ddkit evaluate PACK_DIR` finds its file and teachers without flags.

A pack folder may come from a stranger, so every name in it is treated as the stranger's
(`ddkit.paths`): `pack.json` is a typed record whose `set` and teacher `file`s must name plain
files inside the pack (never an absolute path, `..` or a link), and the names `pack` writes are
built from hashes and safe characters only, whatever a header's `arch` says. Folders given with
`--teacher` are walked without following links.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddkit.errors import FileFormatError, InvalidInput
from ddkit.models.teacher import load_teacher, read_teacher_header
from ddkit.paths import component, kind, member, read_json, walk
from ddkit.records import record_fields
from ddkit.share.files import atomic_folder
from ddkit.share.remote import resolve
from ddkit.store import DistilledDataset, read_results

MANIFEST = "pack.json"
PACK_FORMAT = "ddkit.pack"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_FIX = "re-create the pack with `ddkit pack`"


@dataclass(frozen=True)
class PackTeacher:
    """One teacher of `pack.json`: its file inside the pack and the sha256 of its tensors."""

    file: str
    sha256: str
    arch: str | None = None
    in_header: bool = False

    @classmethod
    def from_dict(cls, d: Any, where: str = "teacher") -> PackTeacher:
        values = record_fields(cls, d, where, allow_extra=True)
        if not _SHA256.match(values["sha256"]):
            raise InvalidInput(f"{where}.sha256 is not a sha256 hex digest: {values['sha256'][:80]!r}")
        return cls(**values)


@dataclass(frozen=True)
class PackManifest:
    """`pack.json` read as a typed record (names are checked against the folder by `read_pack`)."""

    format: str
    version: int
    set: str
    teachers: list[PackTeacher] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: Any, where: str = MANIFEST) -> PackManifest:
        values = record_fields(cls, d, where, allow_extra=True)
        if values["format"] != PACK_FORMAT:
            raise InvalidInput(f"{where}.format is {values['format']!r}, not {PACK_FORMAT!r}")
        if values["version"] != 1:
            raise InvalidInput(f"{where}.version {values['version']} is not one this ddkit reads (1)")
        return cls(**values)


def _sha(teacher: Any) -> str | None:
    """The tensors' sha256 a header or card names for a teacher, when it is one (a 64-digit hex string)."""
    sha = teacher.get("sha256") if isinstance(teacher, dict) else None
    return sha if isinstance(sha, str) and _SHA256.match(sha) else None


def referenced_teachers(path: str | os.PathLike) -> tuple[list[dict], list[dict]]:
    """(teachers of the file's header, other teachers its result cards name), each by sha256, no repeats.
    Entries without a well-formed sha256 cannot be matched and are left out."""
    with DistilledDataset(path, verify=True) as ds:
        header = [t for t in ds.header.teachers if _sha(t)]
    seen = {t["sha256"] for t in header}
    cards = []
    for card in read_results(path).values():
        listed = card.get("teachers") if isinstance(card.get("teachers"), list) else []
        for t in listed:
            if _sha(t) and t["sha256"] not in seen:
                seen.add(t["sha256"])
                cards.append(t)
    return header, cards


def _candidates(search: list[str], follow_symlinks: bool = False) -> list[Path]:
    """Teacher files among `search`: files as given (the user named them), `*.safetensors` below folders,
    found without following links (a link there is refused unless `follow_symlinks`)."""
    found = []
    for item in map(Path, search):
        if item.is_dir():
            tree = walk(item, match=lambda p: p.suffix == ".safetensors", follow_symlinks=follow_symlinks)
            tree.raise_refused("teacher folder", "pass the teacher file itself with --teacher, or --follow-symlinks")
            found += tree.files
        else:
            found.append(item)
    return found


def find_teachers(wanted: set[str], search: list[str], follow_symlinks: bool = False) -> dict[str, Path]:
    """sha256 -> teacher file, for the wanted tensor hashes found among `search` (files or folders)."""
    found: dict[str, Path] = {}
    for path in _candidates(search, follow_symlinks):
        try:
            sha = read_teacher_header(path).tensors_sha256
        except FileFormatError:
            continue
        if sha in wanted and sha not in found:
            load_teacher(path)  # checks the tensors against the header's hash
            found[sha] = path
    return found


def pack(path: str | os.PathLike, out_dir: str | os.PathLike, search: list[str], overwrite: bool = False,
         follow_symlinks: bool = False) -> dict:
    """Write the pack (see the module docstring); refuses when a referenced teacher is not found.
    `follow_symlinks` opts into teacher files reached through links in the `search` folders."""
    path = Path(path)
    header, cards = referenced_teachers(path)
    wanted = [t["sha256"] for t in header + cards]
    found = find_teachers(set(wanted), search, follow_symlinks)
    missing = [t for t in header + cards if t["sha256"] not in found]
    if missing:
        names = ", ".join(f"{t.get('arch', '?')} sha256 {t['sha256'][:12]}" for t in missing)
        raise FileFormatError(
            f"{path} references teacher(s) not found among {search or 'no --teacher'}: {names}",
            "pass --teacher FILE_OR_FOLDER where those teacher files are",
        )
    records = []
    with atomic_folder(out_dir, overwrite, written_by="ddkit pack") as folder:
        set_name = path.name  # the user named it: one plain component
        shutil.copyfile(path, folder / set_name)
        (folder / "teachers").mkdir()
        for t in header + cards:
            arch = t.get("arch") if isinstance(t.get("arch"), str) else None
            name = f"teachers/{component(arch, 'teacher')}-{t['sha256'][:12]}.safetensors"  # never a path from the file
            shutil.copyfile(found[t["sha256"]], folder / name)
            records.append({"file": name, "sha256": t["sha256"], "arch": arch, "in_header": t in header})
        manifest = {"format": PACK_FORMAT, "version": 1, "set": set_name, "teachers": records}
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        (folder / "README.md").write_text(_readme(set_name, records))
    return manifest


def _readme(name: str, records: list[dict]) -> str:
    teachers = "\n".join(f"- `{r['file']}`: {r['arch']} (tensors sha256 `{r['sha256']}`)" for r in records) or "- none"
    return (
        f"# {name}, packed with its teachers\n\n"
        f"Teachers (matched by the sha256 of their tensors):\n\n{teachers}\n\n"
        "## Evaluate\n\n```bash\n"
        "ddkit info THIS_FOLDER/" + name + "                 # provenance, budget, result cards\n"
        "ddkit evaluate THIS_FOLDER --protocol hard-cpu     # teachers are found in pack.json\n"
        "ddkit evaluate THIS_FOLDER --protocol stored-cpu   # stored labels; the random subset gets the same teachers\n"
        "```\n"
    )


def read_pack(folder: str | os.PathLike) -> tuple[Path, list[Path]]:
    """(the set's path, the teachers to evaluate it with) of a pack folder, every one a plain file
    inside `folder` (UnsafePath for an absolute name, `..`, a link or a special file)."""
    folder = Path(folder)
    data = read_json(folder / MANIFEST, "pack manifest", fix=_FIX)
    try:
        manifest = PackManifest.from_dict(data, str(folder / MANIFEST))
    except InvalidInput as exc:
        raise FileFormatError(exc.problem, _FIX) from None
    set_path = member(folder, manifest.set, f"{MANIFEST} set")
    files = [(member(folder, t.file, f"{MANIFEST} teacher file"), t.in_header) for t in manifest.teachers]
    in_header = [p for p, header in files if header]
    return set_path, in_header or [p for p, _ in files]


def is_pack(spec: str) -> bool:
    """True when `spec` is a folder holding a `pack.json` (in any form: a link there is refused later)."""
    return Path(spec).is_dir() and kind(Path(spec) / MANIFEST) != "missing"


def resolve_train_set(spec: str, teachers: list[str], trusted_keys: str | os.PathLike | bool | None = None
                      ) -> tuple[str, list[str]]:
    """`evaluate`'s TRAIN_SET and teachers: a pack folder brings its own teachers (unless some are given);
    URLs are fetched and verified; anything else is passed on unchanged. With `trusted_keys` (a
    trusted-keys file, or True for the default one) the set must be signed by one of those keys."""
    teachers = [resolve(t) for t in teachers]
    if is_pack(spec):
        set_path, packed = read_pack(spec)
        train_set, teachers = str(set_path), teachers or [str(p) for p in packed]
    else:
        train_set = resolve(spec) if not spec.startswith("random:") else spec
    if trusted_keys is not None and trusted_keys is not False:
        from ddkit.share.sign import require_signature

        require_signature(train_set, None if trusted_keys is True else trusted_keys)
    return train_set, teachers
