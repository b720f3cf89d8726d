"""`export_file` and `import_set`: the two verbs over the registered formats."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ddkit.errors import FileFormatError, UnsafePath
from ddkit.paths import kind, walk
from ddkit.share import dc, hf, imagefolder, pt  # noqa: F401  (each registers its format)
from ddkit.share.exchange import read_exportable, write_imported
from ddkit.share.files import atomic_folder
from ddkit.share.formats import EXPORTERS, IMPORTERS, ImportOptions


@dataclass
class ExportReport:
    out: str
    format: str
    instances: int
    files: int
    bytes: int
    notes: list[str]


def export_file(path: str | os.PathLike, fmt: str, out: str | os.PathLike, overwrite: bool = False) -> ExportReport:
    """Write the `.ddk.h5` at `path` as a folder `out` in format `fmt` (atomically); the file is verified first."""
    exporter = EXPORTERS.get(fmt)
    with atomic_folder(out, overwrite, written_by=f"ddkit export --to {fmt}") as folder:  # OUT checked first
        src = read_exportable(path)
        notes = exporter(src, folder)
        if src.dataset.formation is not None:
            notes.append(f"the {len(src.labels)} instances are decoded from {src.dataset.num_stored} stored images "
                         f"(multi-formation factor {src.dataset.formation.factor}); extras/images.npy keeps the "
                         "stored images and ddkit.json the decode")
        files = [p for p in folder.rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files)
    return ExportReport(str(out), fmt, len(src.labels), len(files), size, notes)


def import_set(
    source: str | os.PathLike,
    fmt: str,
    out: str | os.PathLike,
    options: ImportOptions,
    overwrite: bool = False,
    source_label: str | None = None,
) -> str:
    """Read `source` in format `fmt` and write it as the `.ddk.h5` `out`; returns its content_sha256.

    `source_label` names the source in the provenance when `source` is a local copy (a downloaded URL).
    """
    importer = IMPORTERS.get(fmt)
    source = Path(source)
    check_source(source, options.follow_symlinks)
    imported = importer(source, options)
    return write_imported(imported, fmt, source, options.dataset, out, overwrite, source_label, options.follow_symlinks,
                          options.trusted_keys)


def check_source(source: Path, follow_symlinks: bool = False) -> None:
    """Refuse an import source that is neither a regular file nor a folder, and a folder holding a
    symbolic link or special file anywhere (unless `follow_symlinks`): every file of a source folder
    may be read or hashed, so none may point outside it. The source itself is the user's choice and
    may be a link."""
    found = kind(source)
    if found == "symlink":
        found = "missing" if not source.exists() else ("folder" if source.is_dir() else kind(source.resolve()))
    if found == "missing":
        raise FileFormatError(f"{source} does not exist", "check the path")
    if found == "folder":
        walk(source, follow_symlinks=follow_symlinks).raise_refused("import source")
    elif found != "file":
        raise UnsafePath(f"{source} is not a file or a folder (a FIFO, device or socket)", "give a file or folder")
