"""`ddkit pack`: a distilled file with the teachers it references and a README, in one folder.

A set made with teachers is only half shared without them: stored soft labels are judged beside a
random subset relabeled by the same teachers, and teacher protocols relabel with them. The pack
holds the set, every teacher its header or result cards name (found among the given files and
folders by the sha256 of their tensors, and checked by loading), and `pack.json`, so that
`ddkit evaluate PACK_DIR` finds its file and teachers without flags.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ddkit.errors import FileFormatError
from ddkit.models.teacher import load_teacher, read_teacher_header
from ddkit.share.files import atomic_folder
from ddkit.share.remote import resolve
from ddkit.store import DistilledDataset, read_results

MANIFEST = "pack.json"


def referenced_teachers(path: str | os.PathLike) -> tuple[list[dict], list[dict]]:
    """(teachers of the file's header, other teachers its result cards name), each by sha256, no repeats."""
    with DistilledDataset(path, verify=True) as ds:
        header = list(ds.header.teachers)
    seen = {t["sha256"] for t in header}
    cards = []
    for card in read_results(path).values():
        for t in card.get("teachers", []) or []:
            if isinstance(t, dict) and t.get("sha256") and t["sha256"] not in seen:
                seen.add(t["sha256"])
                cards.append(t)
    return header, cards


def _candidates(search: list[str]) -> list[Path]:
    found = []
    for item in map(Path, search):
        found += sorted(item.rglob("*.safetensors")) if item.is_dir() else [item]
    return found


def find_teachers(wanted: set[str], search: list[str]) -> dict[str, Path]:
    """sha256 -> teacher file, for the wanted tensor hashes found among `search` (files or folders)."""
    found: dict[str, Path] = {}
    for path in _candidates(search):
        try:
            sha = read_teacher_header(path).tensors_sha256
        except FileFormatError:
            continue
        if sha in wanted and sha not in found:
            load_teacher(path)  # checks the tensors against the header's hash
            found[sha] = path
    return found


def pack(path: str | os.PathLike, out_dir: str | os.PathLike, search: list[str], overwrite: bool = False) -> dict:
    """Write the pack (see the module docstring); refuses when a referenced teacher is not found."""
    path = Path(path)
    header, cards = referenced_teachers(path)
    wanted = [t["sha256"] for t in header + cards]
    found = find_teachers(set(wanted), search)
    missing = [t for t in header + cards if t["sha256"] not in found]
    if missing:
        names = ", ".join(f"{t.get('arch', '?')} sha256 {t['sha256'][:12]}" for t in missing)
        raise FileFormatError(
            f"{path} references teacher(s) not found among {search or 'no --teacher'}: {names}",
            "pass --teacher FILE_OR_FOLDER where those teacher files are",
        )
    records = []
    with atomic_folder(out_dir, overwrite) as folder:
        shutil.copyfile(path, folder / path.name)
        (folder / "teachers").mkdir()
        for t in header + cards:
            name = f"teachers/{t.get('arch', 'teacher')}-{t['sha256'][:12]}.safetensors"
            shutil.copyfile(found[t["sha256"]], folder / name)
            records.append({"file": name, "sha256": t["sha256"], "arch": t.get("arch"), "in_header": t in header})
        manifest = {"format": "ddkit.pack", "version": 1, "set": path.name, "teachers": records}
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        (folder / "README.md").write_text(_readme(path.name, records))
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
    """(the set's path, the teachers to evaluate it with) of a pack folder."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        records = manifest["teachers"]
        set_path = folder / manifest["set"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FileFormatError(
            f"{folder / MANIFEST} is not a readable pack manifest ({exc})", "re-create it with `ddkit pack`"
        ) from None
    in_header = [folder / r["file"] for r in records if r.get("in_header")]
    return set_path, in_header or [folder / r["file"] for r in records]


def resolve_train_set(spec: str, teachers: list[str]) -> tuple[str, list[str]]:
    """`evaluate`'s TRAIN_SET and teachers: a pack folder brings its own teachers (unless some are given);
    URLs are fetched and verified; anything else is passed on unchanged."""
    teachers = [resolve(t) for t in teachers]
    if Path(spec).is_dir() and (Path(spec) / MANIFEST).is_file():
        set_path, packed = read_pack(spec)
        return str(set_path), teachers or [str(p) for p in packed]
    return (resolve(spec) if not spec.startswith("random:") else spec), teachers
