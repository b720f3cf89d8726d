"""Issue-26 sharing cases about paths, foreign values, the catalog and signatures, crafted as a
stranger would: names in files that point outside their folder (`pack.json`, a teacher's `arch`),
links and FIFOs inside folders ddkit walks (import sources, `--teacher DIR`, catalog scans),
`export --overwrite` over folders holding other files, odd output folders, mistyped sidecars and
labels, edited catalog rows and signatures.

Every case is a `SharingCase` (tests/sharing_cases.py): `build(work)` makes the inputs inside the
empty folder `work` (and, where a case needs something "outside", in the sibling folder
`outside(work)` = `work/../work-outside`, so `work` must be named `work`) and returns the `ddkit`
argv. `CHECKS` holds what else must hold after a case's command ran (`check(work, output)`: the
user's files survive, names are escaped, …). Nothing in `outside(work)` may change, whatever the
case. Run in-process by tests/test_sharing_paths.py and in fresh processes under strace by
scripts/bench_reliability_sharing.py.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from crafted import distilled
from sharing_cases import SharingCase

DATASET = "procedural"
EVALUATE = ("--seeds", "1", "--steps", "1", "--no-baseline", "--no-full", "--no-ranking")


def outside(work: Path) -> Path:
    """The folder beside `work` that stands for everything outside what the user named."""
    path = work.parent / "work-outside"
    path.mkdir(exist_ok=True)
    return path


def _secret(work: Path, name: str = "secret.txt", text: str = "outside bytes\n") -> Path:
    path = outside(work) / name
    path.write_text(text)
    return path


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


# -- inputs ---------------------------------------------------------------------------------------


def _teacher(folder: Path, name: str = "t.safetensors") -> tuple[Path, dict]:
    from ddkit.data import load_dataset
    from ddkit.models import create_model
    from ddkit.models.teacher import save_teacher

    info = load_dataset(DATASET, "train").info
    folder.mkdir(parents=True, exist_ok=True)
    header = save_teacher(folder / name, create_model("convnet", 1, 16, 10, seed=0, width=4), info, overwrite=True)
    return folder / name, header.summary()


def _set_with_teacher(work: Path, arch: str | None = None) -> tuple[Path, Path]:
    """A set whose header names a teacher (its `arch` replaced by `arch`), and that teacher's file."""
    from ddkit.data import load_dataset
    from ddkit.store import DistilledSet, write_distilled

    teacher, summary = _teacher(work / "teachers")
    if arch is not None:
        summary = {**summary, "arch": arch}
    source = load_dataset(DATASET, "train")
    idx = torch.cat([torch.nonzero(source.labels == c).flatten()[:1] for c in range(source.num_classes)])
    dset = DistilledSet.from_source(source, method="crafted", method_version="1", config={}, seed=0,
                                    images=source.pixels(idx), labels=source.labels[idx], ipc=1, teachers=[summary])
    write_distilled(work / "set.ddk.h5", dset, overwrite=True)
    return work / "set.ddk.h5", teacher


def _pack(work: Path) -> Path:
    from ddkit.share.pack import pack

    path, teacher = _set_with_teacher(work)
    pack(path, work / "pack", [str(teacher.parent)])
    return work / "pack"


def _edit_manifest(work: Path, change: Callable[[dict, Path], object]) -> Path:
    folder = _pack(work)
    manifest = json.loads((folder / "pack.json").read_text())
    manifest = change(manifest, work)
    (folder / "pack.json").write_text(json.dumps(manifest) if not isinstance(manifest, str) else manifest)
    return folder


def _image_folder(work: Path, name: str = "src") -> Path:
    """An SRe2L-style release: train/<class>/*.png and a classes.json, 2 images per class."""
    from PIL import Image

    from ddkit.data import load_dataset

    source = load_dataset(DATASET, "train")
    root = work / name
    names = list(source.info.class_names)
    for c, cname in enumerate(names):
        (root / "train" / cname).mkdir(parents=True)
        for i in torch.nonzero(source.labels == c).flatten()[:2].tolist():
            pixels = (source.pixels(torch.tensor([i]))[0, 0] * 255).round().to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / "train" / cname / f"{i}.png")
    (root / "classes.json").write_text(json.dumps(names))
    return root


def _png_outside(work: Path) -> Path:
    from PIL import Image

    path = outside(work) / "private.png"
    Image.fromarray(np.full((16, 16), 200, np.uint8)).save(path)
    return path


def _pt_folder(work: Path, labels=None, logits=None, lr=None, name: str = "pt") -> Path:
    """A DD-Ranking-style tensor folder: images.pt (normalized), labels.pt, optional soft_labels.pt and lr.pt."""
    from ddkit.data import load_dataset

    source = load_dataset(DATASET, "train")
    idx = torch.arange(0, 20)
    folder = work / name
    folder.mkdir()
    torch.save(source.info.normalization.apply(source.pixels(idx)), folder / "images.pt")
    torch.save(source.labels[idx] if labels is None else labels, folder / "labels.pt")
    if logits is not None:
        torch.save(logits, folder / "soft_labels.pt")
    if lr is not None:
        torch.save(lr, folder / "lr.pt")
    return folder


def _parquet(work: Path, labels: list, logits: list | None = None) -> Path:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    blobs = []
    for i in range(len(labels)):
        buffer = io.BytesIO()
        Image.fromarray(np.full((16, 16), 10 * i, np.uint8)).save(buffer, format="PNG")
        blobs.append({"bytes": buffer.getvalue(), "path": None})
    columns = {"image": blobs, "label": labels}
    if logits is not None:
        columns["logits"] = logits
    folder = work / "hf"
    folder.mkdir()
    pq.write_table(pa.table(columns), folder / "train-00000-of-00001.parquet")
    return folder


def _export(work: Path, fmt: str = "pt", signed: bool = False) -> Path:
    from ddkit.share import export_file

    path = distilled(work, "set.ddk.h5")
    if signed:
        _sign(work, path)
    export_file(path, fmt, work / "exported")
    return work / "exported"


def _edit_sidecar(work: Path, change: Callable[[dict], object], fmt: str = "pt") -> Path:
    folder = _export(work, fmt)
    meta = json.loads((folder / "ddkit.json").read_text())
    (folder / "ddkit.json").write_text(json.dumps(change(meta)))
    return folder


def _keys(work: Path, name: str = "alice") -> tuple[Path, Path]:
    """A key pair and a trusted-keys file listing it: (private key, trusted-keys file)."""
    from ddkit.share.sign import new_key_pair

    key = work / "keys" / name
    key.parent.mkdir(exist_ok=True)
    _, line = new_key_pair(key, name, overwrite=True)
    trusted = work / "keys" / f"trusted-{name}"
    trusted.write_text(line + "\n")
    return key, trusted


def _sign(work: Path, path: Path, name: str = "alice") -> Path:
    from ddkit.share.sign import sign_file

    key, trusted = _keys(work, name)
    sign_file(path, key)
    return trusted


def _catalog(work: Path, files: dict[str, Callable[[Path], Path]] | None = None) -> Path:
    """A catalog of one scanned folder of good files (plus `files`: name -> builder)."""
    from ddkit.share.catalog import Catalog

    team = work / "team"
    team.mkdir()
    distilled(team, "good.ddk.h5")
    for name, make in (files or {}).items():
        make(team / name)
    with Catalog(work / "cat.sqlite") as cat:
        cat.scan([str(team)])
    return work / "cat.sqlite"


def _entry(cat: Path) -> str:
    """The id `catalog ls` shows for the catalog's first file: its content hash's first 12 hex digits."""
    with sqlite3.connect(cat) as db:
        return db.execute("SELECT content_sha256 FROM files ORDER BY id LIMIT 1").fetchone()[0][:12]


def _edited_row(work: Path, location: str) -> Path:
    cat = _catalog(work)
    with sqlite3.connect(cat) as db:
        db.execute("UPDATE files SET location = ?", (location,))
    return cat


def _named(method: str) -> Callable[[Path], Path]:
    def make(path: Path) -> Path:
        from crafted import forge

        distilled(path.parent, path.name)
        with forge(path) as f:
            f.attrs["method"] = method
        return path
    return make


# -- the cases ------------------------------------------------------------------------------------

CASES: list[SharingCase] = []
CHECKS: dict[str, Callable[[Path, str], None]] = {}


def case(surface: str, name: str, expect: str = "refused", inside: tuple[str, ...] = (".",),
         outputs: tuple[str, ...] = (), check: Callable[[Path, str], None] | None = None):
    """Register the decorated `build(work) -> argv` as a case (and its post-condition `check`)."""
    def register(build: Callable[[Path], list]) -> Callable[[Path], list]:
        def argv(work: Path) -> list[str]:
            return [str(a) for a in build(work)]

        c = SharingCase(surface, name, argv, expect, inside, outputs)
        CASES.append(c)
        if check is not None:
            CHECKS[c.id] = check
        return build
    return register


def _survives(*names: str) -> Callable[[Path, str], None]:
    def check(work: Path, output: str) -> None:
        for name in names:
            assert (work / name).exists(), f"{name} was deleted"
    return check


# pack: teacher names and pack.json members stay inside the pack ----------------------------------

def _pack_arch_check(work: Path, output: str) -> None:
    written = sorted(p.name for p in (work / "pack" / "teachers").iterdir())
    assert len(written) == 1 and "/" not in written[0] and not written[0].startswith("."), written
    assert not any(outside(work).rglob("*.safetensors")), "a teacher was written outside the pack"


@case("pack", "teacher arch ../../x writes inside the pack", expect="ok", check=_pack_arch_check)
def _(work):
    path, teacher = _set_with_teacher(work, arch=f"../../../{outside(work).name}/x")
    return ["pack", path, work / "pack", "--teacher", teacher.parent]


@case("pack", "symlinked teacher in --teacher DIR", outputs=("pack",))
def _(work):
    path, teacher = _set_with_teacher(work)
    real = outside(work) / "t.safetensors"
    teacher.rename(real)
    teacher.symlink_to(real)
    return ["pack", path, work / "pack", "--teacher", teacher.parent]


@case("pack", "pack.json set is an absolute path")
def _(work):
    other = distilled(outside(work), "other.ddk.h5")
    folder = _edit_manifest(work, lambda m, w: {**m, "set": str(other)})
    return ["evaluate", folder, *EVALUATE]


@case("pack", "pack.json set is ../x")
def _(work):
    distilled(outside(work), "other.ddk.h5")
    folder = _edit_manifest(work, lambda m, w: {**m, "set": f"../../{outside(w).name}/other.ddk.h5"})
    return ["evaluate", folder, *EVALUATE]


@case("pack", "pack.json set is a symlink out of the pack")
def _(work):
    other = distilled(outside(work), "other.ddk.h5")
    folder = _pack(work)
    (folder / "set.ddk.h5").unlink()
    (folder / "set.ddk.h5").symlink_to(other)
    return ["evaluate", folder, *EVALUATE]


@case("pack", "pack.json teacher file is absolute")
def _(work):
    teacher, _ = _teacher(outside(work))
    folder = _edit_manifest(work, lambda m, w: {**m, "teachers": [{**m["teachers"][0], "file": str(teacher)}]})
    return ["evaluate", folder, "--protocol", "teacher-cpu", *EVALUATE]


@case("pack", "pack.json set is a number")
def _(work):
    return ["evaluate", _edit_manifest(work, lambda m, w: {**m, "set": 5}), *EVALUATE]


@case("pack", "pack.json is a list")
def _(work):
    return ["evaluate", _edit_manifest(work, lambda m, w: []), *EVALUATE]


@case("pack", "pack.json nested 1e5 deep")
def _(work):
    return ["evaluate", _edit_manifest(work, lambda m, w: "[" * 100_000 + "]" * 100_000), *EVALUATE]


@case("pack", "pack.json is a FIFO")
def _(work):
    folder = _pack(work)
    (folder / "pack.json").unlink()
    _fifo(folder / "pack.json")
    return ["evaluate", folder, *EVALUATE]


def _card_in_pack(work: Path, output: str) -> None:
    from ddkit.store import read_results

    assert read_results(work / "pack" / "set.ddk.h5"), "the result card was not written into the pack"


@case("pack", "evaluate PACK writes its card inside the pack", expect="ok", check=_card_in_pack)
def _(work):
    return ["evaluate", _pack(work), *EVALUATE]


# export: OUT and --overwrite ----------------------------------------------------------------------

@case("export", "--overwrite over a folder of the user's files", check=_survives("mine/notes.txt"))
def _(work):
    path = distilled(work, "set.ddk.h5")
    (work / "mine").mkdir()
    (work / "mine" / "notes.txt").write_text("my notes")
    return ["export", path, "--to", "pt", work / "mine", "--overwrite"]


@case("export", "--overwrite over the folder holding the source set", check=_survives("data/set.ddk.h5"))
def _(work):
    (work / "data").mkdir()
    path = distilled(work / "data", "set.ddk.h5")
    return ["export", path, "--to", "imagefolder", work / "data", "--overwrite"]


@case("export", "--overwrite over an earlier export", expect="ok", check=_survives("out/images.pt"))
def _(work):
    from ddkit.share import export_file

    path = distilled(work, "set.ddk.h5")
    export_file(path, "pt", work / "out")
    return ["export", path, "--to", "pt", work / "out", "--overwrite"]


@case("export", "--overwrite over an earlier export plus a user file", check=_survives("out/mine.txt"))
def _(work):
    from ddkit.share import export_file

    path = distilled(work, "set.ddk.h5")
    export_file(path, "pt", work / "out")
    (work / "out" / "mine.txt").write_text("added later")
    return ["export", path, "--to", "pt", work / "out", "--overwrite"]


@case("export", "--overwrite over an export holding a symlink")
def _(work):
    from ddkit.share import export_file

    path = distilled(work, "set.ddk.h5")
    export_file(path, "pt", work / "out")
    (work / "out" / "labels.pt").unlink()
    (work / "out" / "labels.pt").symlink_to(_secret(work))
    return ["export", path, "--to", "pt", work / "out", "--overwrite"]


for _label, _out in (("OUT is .", "."), ("OUT is ..", ".."), ("OUT is /", "/"), ("OUT is /proc/x", "/proc/ddkit-x"),
                     ("OUT is ./.", "./.")):
    @case("export", _label, check=_survives("set.ddk.h5"))
    def _(work, _out=_out):
        return ["export", distilled(work, "set.ddk.h5"), "--to", "pt", _out, "--overwrite"]


@case("export", "OUT is a dangling symlink", outputs=("out",))
def _(work):
    (work / "out").symlink_to(work / "nowhere")
    return ["export", distilled(work, "set.ddk.h5"), "--to", "pt", work / "out"]


@case("export", "OUT is a symlink to a folder outside", check=_survives("set.ddk.h5"))
def _(work):
    (work / "out").symlink_to(outside(work))
    return ["export", distilled(work, "set.ddk.h5"), "--to", "pt", work / "out", "--overwrite"]


# import: links and special files in sources ------------------------------------------------------

@case("import", "a PNG symlinked to a file outside", outputs=("out.ddk.h5",))
def _(work):
    root = _image_folder(work)
    (root / "train" / "coarse-0" / "stolen.png").symlink_to(_png_outside(work))
    return ["import", root, "--from", "imagefolder", "--dataset", DATASET, "out.ddk.h5"]


@case("import", "a PNG symlink read on purpose (--follow-symlinks)", expect="ok", inside=(".", "../work-outside"))
def _(work):
    root = _image_folder(work)
    (root / "train" / "coarse-0" / "linked.png").symlink_to(_png_outside(work))
    return ["import", root, "--from", "imagefolder", "--dataset", DATASET, "out.ddk.h5", "--follow-symlinks"]


@case("import", "a class folder symlinked outside", outputs=("out.ddk.h5",))
def _(work):
    root = _image_folder(work)
    target = outside(work) / "coarse-0"
    (root / "train" / "coarse-0").rename(target)
    (root / "train" / "coarse-0").symlink_to(target)
    return ["import", root, "--from", "imagefolder", "--dataset", DATASET, "out.ddk.h5"]


@case("import", "train/ symlinked outside", outputs=("out.ddk.h5",))
def _(work):
    root = _image_folder(work)
    (root / "train").rename(outside(work) / "train")
    (root / "train").symlink_to(outside(work) / "train")
    return ["import", root, "--from", "imagefolder", "--dataset", DATASET, "out.ddk.h5"]


@case("import", "classes.json symlinked outside", outputs=("out.ddk.h5",))
def _(work):
    root = _image_folder(work)
    target = outside(work) / "classes.json"
    (root / "classes.json").rename(target)
    (root / "classes.json").symlink_to(target)
    return ["import", root, "--from", "imagefolder", "--dataset", DATASET, "out.ddk.h5"]


@case("import", "extras/*.npy symlinked outside", outputs=("out.ddk.h5",))
def _(work):
    folder = _export(work, "pt")
    target = outside(work) / "labels.npy"
    (folder / "extras" / "labels.npy").rename(target)
    (folder / "extras" / "labels.npy").symlink_to(target)
    return ["import", folder, "--from", "pt", "--dataset", DATASET, "out.ddk.h5"]


@case("import", "a parquet file symlinked outside", outputs=("out.ddk.h5",))
def _(work):
    folder = _parquet(work, [0, 1, 2])
    target = outside(work) / "x.parquet"
    (folder / "train-00000-of-00001.parquet").rename(target)
    (folder / "train-00000-of-00001.parquet").symlink_to(target)
    return ["import", folder, "--from", "hf", "--dataset", DATASET, "out.ddk.h5"]


@case("import", "a FIFO named like a PNG in a class folder", outputs=("out.ddk.h5",))
def _(work):
    root = _image_folder(work)
    _fifo(root / "train" / "coarse-0" / "pipe.png")
    return ["import", root, "--from", "imagefolder", "--dataset", DATASET, "out.ddk.h5"]


@case("import", "labels.pt is a FIFO", outputs=("out.ddk.h5",))
def _(work):
    folder = _pt_folder(work)
    (folder / "labels.pt").unlink()
    _fifo(folder / "labels.pt")
    return ["import", folder, "--from", "pt", "--dataset", DATASET, "out.ddk.h5"]


# import: foreign values ----------------------------------------------------------------------------

for _label, _text in (("5", "5"), ("true", "true"), ("[{}]", "[{}]"), ("nested 1e5 deep", "[" * 100_000 + "]" * 100_000),
                      ("not UTF-8", b"\xff\xfe[".decode("latin-1"))):
    @case("import", f"classes.json is {_label}", outputs=("out.ddk.h5",))
    def _(work, _text=_text, _raw=_label == "not UTF-8"):
        root = _image_folder(work)
        (root / "classes.json").write_bytes(_text.encode("latin-1") if _raw else _text.encode())
        return ["import", root, "--from", "imagefolder", "--dataset", DATASET, "out.ddk.h5"]


for _label, _change in (
    ("without num_stored", lambda m: {k: v for k, v in m.items() if k != "num_stored"}),
    ("with seed 'x'", lambda m: {**m, "seed": "x"}),
    ("with dataset 5", lambda m: {**m, "dataset": 5}),
    ("with budget.ipc_stored -3", lambda m: {**m, "budget": {**m["budget"], "ipc_stored": -3}}),
    ("with soft a list", lambda m: {**m, "soft": []}),
    ("a list", lambda m: [m]),
):
    @case("import", f"ddkit.json {_label}", outputs=("out.ddk.h5",))
    def _(work, _change=_change):
        return ["import", _edit_sidecar(work, _change), "--from", "pt", "--dataset", DATASET, "out.ddk.h5"]


for _label, _labels in (
    ("negative", torch.tensor([-1] + [0] * 19)),
    ("fractional floats", torch.full((20,), 1.5)),
    ("out of range", torch.tensor([10] + [0] * 19)),
    ("3e8", torch.full((20,), 300_000_000)),
    ("NaN floats", torch.full((20,), float("nan"))),
    ("booleans", torch.ones(20, dtype=torch.bool)),
    ("strings", ["a"] * 20),
):
    @case("import", f"labels.pt {_label}", outputs=("out.ddk.h5",))
    def _(work, _labels=_labels):
        return ["import", _pt_folder(work, labels=_labels), "--from", "pt", "--dataset", DATASET, "out.ddk.h5"]


for _label, _labels in (("null", [0, None, 1]), ("string", ["0", "cat", "1"]), ("negative", [0, -2, 1]),
                        ("out of range", [0, 1, 99]), ("fractional", [0.0, 1.5, 2.0])):
    @case("import", f"parquet label {_label}", outputs=("out.ddk.h5",))
    def _(work, _labels=_labels):
        return ["import", _parquet(work, _labels), "--from", "hf", "--dataset", DATASET, "out.ddk.h5"]


@case("import", "parquet logits ragged", outputs=("out.ddk.h5",))
def _(work):
    folder = _parquet(work, [0, 1, 2], logits=[[0.0] * 10, [0.0] * 3, [0.0] * 10])
    return ["import", folder, "--from", "hf", "--dataset", DATASET, "out.ddk.h5"]


@case("import", "parquet logits strings", outputs=("out.ddk.h5",))
def _(work):
    folder = _parquet(work, [0, 1, 2], logits=[["a"] * 10] * 3)
    return ["import", folder, "--from", "hf", "--dataset", DATASET, "out.ddk.h5"]


@case("import", "soft_labels.pt with NaN", outputs=("out.ddk.h5",))
def _(work):
    folder = _pt_folder(work, logits=torch.full((20, 10), float("nan")))
    return ["import", folder, "--from", "pt", "--dataset", DATASET, "out.ddk.h5"]


@case("import", "soft_labels.pt of the wrong row count", outputs=("out.ddk.h5",))
def _(work):
    folder = _pt_folder(work, logits=torch.zeros(7, 10))
    return ["import", folder, "--from", "pt", "--dataset", DATASET, "out.ddk.h5"]


for _label, _lr in (("negative", torch.tensor(-0.01)), ("NaN", torch.tensor(float("nan"))),
                    ("zero", torch.tensor(0.0)), ("three values", torch.tensor([0.1, 0.2, 0.3]))):
    @case("import", f"lr.pt {_label}", outputs=("out.ddk.h5",))
    def _(work, _lr=_lr):
        return ["import", _pt_folder(work, lr=_lr), "--from", "pt", "--dataset", DATASET, "out.ddk.h5"]


@case("import", "--mean abc", outputs=("out.ddk.h5",))
def _(work):
    return ["import", _pt_folder(work), "--from", "pt", "--dataset", DATASET, "out.ddk.h5", "--mean", "abc",
            "--std", "0.3"]


@case("import", "a clean tensor folder", expect="ok")
def _(work):
    folder = _pt_folder(work, logits=torch.randn(20, 10), lr=torch.tensor(0.01))
    return ["import", folder, "--from", "pt", "--dataset", DATASET, "out.ddk.h5"]


# catalog ------------------------------------------------------------------------------------------

def _scan_counts(expected: str) -> Callable[[Path, str], None]:
    def check(work: Path, output: str) -> None:
        assert expected in output, output
    return check


@case("catalog", "one bad file does not end a scan", expect="ok", check=_scan_counts("2 ok, 2 damaged"))
def _(work):
    team = work / "team"
    team.mkdir()
    distilled(team, "a.ddk.h5")
    distilled(team, "b.ddk.h5")
    (team / "junk.ddk.h5").write_bytes(b"not a file")
    (team / "cut.ddk.h5").write_bytes((team / "a.ddk.h5").read_bytes()[:3000])
    return ["catalog", "scan", team, "--catalog", work / "cat.sqlite"]


@case("catalog", "a scan skips symlinks and FIFOs", expect="ok", check=_scan_counts("1 ok, 0 damaged, 2 skipped"))
def _(work):
    team = work / "team"
    team.mkdir()
    distilled(team, "a.ddk.h5")
    (team / "link.ddk.h5").symlink_to(distilled(outside(work), "other.ddk.h5"))
    _fifo(team / "pipe.ddk.h5")
    return ["catalog", "scan", team, "--catalog", work / "cat.sqlite"]


@case("catalog", "a catalog of another schema")
def _(work):
    with sqlite3.connect(work / "cat.sqlite") as db:
        db.execute("CREATE TABLE files (id INTEGER, name TEXT)")
    return ["catalog", "ls", "--catalog", work / "cat.sqlite"]


@case("catalog", "a catalog that is not SQLite")
def _(work):
    (work / "cat.sqlite").write_bytes(b"hello" * 100)
    return ["catalog", "ls", "--catalog", work / "cat.sqlite"]


@case("catalog", "get 99999999999999999999")
def _(work):
    return ["catalog", "get", "99999999999999999999", "--catalog", _catalog(work)]


@case("catalog", "ls --limit 2**70")
def _(work):
    return ["catalog", "ls", "--catalog", _catalog(work), "--limit", str(2**70)]


@case("catalog", "ls --ipc 2**70")
def _(work):
    return ["catalog", "ls", "--catalog", _catalog(work), "--ipc", str(2**70)]


def _escaped(work: Path, output: str) -> None:
    assert "\x1b" not in output and "\\x1b" in output, output
    assert not any(line.startswith("FAKE") for line in output.splitlines()), output


@case("catalog", "names with escape sequences and newlines are escaped", expect="ok", check=_escaped)
def _(work):
    cat = _catalog(work, {"evil.ddk.h5": _named("\x1b[2J\x1b[31mred\nFAKE row")})
    return ["catalog", "ls", "--catalog", cat]


for _label, _where in (("/etc/passwd", lambda w: "/etc/passwd"), ("/dev/zero", lambda w: "/dev/zero"),
                       ("a FIFO", lambda w: str(_fifo(outside(w) / "pipe.ddk.h5"))),
                       ("a symlink to a good file", lambda w: str(_symlink_to_good(w))),
                       ("a text file named .ddk.h5", lambda w: str(_secret(w, "notes.ddk.h5")))):
    @case("catalog", f"get of an edited row pointing at {_label}", outputs=("got.ddk.h5",))
    def _(work, _where=_where):
        cat = _edited_row(work, _where(work))
        return ["catalog", "get", _entry(cat), "--catalog", cat, "--out", work / "got.ddk.h5"]


def _symlink_to_good(work: Path) -> Path:
    good = distilled(outside(work), "good.ddk.h5")
    (work / "link.ddk.h5").symlink_to(good)
    return work / "link.ddk.h5"


@case("catalog", "ls with a row pointing at a FIFO", expect="ok")
def _(work):
    cat = _edited_row(work, str(_fifo(outside(work) / "pipe.ddk.h5")))
    return ["catalog", "ls", "--catalog", cat]


@case("catalog", "get of a good row", expect="ok", check=_survives("got.ddk.h5"))
def _(work):
    cat = _catalog(work)
    return ["catalog", "get", _entry(cat), "--catalog", cat, "--out", work / "got.ddk.h5"]


# signatures ---------------------------------------------------------------------------------------

@case("sign", "evaluate --require-signature of an unsigned set")
def _(work):
    _, trusted = _keys(work)
    return ["evaluate", distilled(work), "--require-signature", "--trusted-keys", trusted, *EVALUATE]


@case("sign", "evaluate --require-signature of a signed set", expect="ok")
def _(work):
    path = distilled(work)
    return ["evaluate", path, "--require-signature", "--trusted-keys", _sign(work, path), *EVALUATE]


@case("sign", "evaluate --require-signature of an edited, re-sealed signed set")
def _(work):
    from crafted import forge

    path = distilled(work)
    trusted = _sign(work, path)
    with forge(path) as f:
        f.attrs["license_note"] = "edited after signing"
    return ["evaluate", path, "--require-signature", "--trusted-keys", trusted, *EVALUATE]


@case("sign", "evaluate --require-signature of a set signed by an untrusted key")
def _(work):
    path = distilled(work)
    _sign(work, path, "mallory")
    _, trusted = _keys(work, "alice")
    return ["evaluate", path, "--require-signature", "--trusted-keys", trusted, *EVALUATE]


@case("sign", "evaluate --require-signature of a signed pack", expect="ok")
def _(work):
    folder = _pack(work)
    return ["evaluate", folder, "--require-signature", "--trusted-keys", _sign(work, folder / "set.ddk.h5"),
            *EVALUATE]


@case("sign", "catalog get --require-signature of an unsigned file", outputs=("got.ddk.h5",))
def _(work):
    _, trusted = _keys(work)
    cat = _catalog(work)
    return ["catalog", "get", _entry(cat), "--catalog", cat, "--out", work / "got.ddk.h5",
            "--require-signature", "--trusted-keys", trusted]


@case("sign", "catalog get --require-signature of a signed file", expect="ok", check=_survives("got.ddk.h5"))
def _(work):
    cat = _catalog(work)
    trusted = _sign(work, work / "team" / "good.ddk.h5")
    from ddkit.share.catalog import Catalog

    with Catalog(cat) as c:  # signing rewrote the file: index it again
        c.scan([str(work / "team")])
    return ["catalog", "get", _entry(cat), "--catalog", cat, "--out", work / "got.ddk.h5", "--require-signature",
            "--trusted-keys", trusted]


@case("sign", "import --require-signature of an unsigned export", outputs=("out.ddk.h5",))
def _(work):
    _, trusted = _keys(work)
    return ["import", _export(work), "--from", "pt", "--dataset", DATASET, "out.ddk.h5", "--require-signature",
            "--trusted-keys", trusted]


@case("sign", "import --require-signature of a signed export", expect="ok")
def _(work):
    folder = _export(work, "imagefolder", signed=True)
    return ["import", folder, "--from", "imagefolder", "--dataset", DATASET, "out.ddk.h5", "--require-signature",
            "--trusted-keys", work / "keys" / "trusted-alice"]


@case("sign", "import --require-signature of a signed export with edited normalization", outputs=("out.ddk.h5",))
def _(work):
    folder = _export(work, "pt", signed=True)
    meta = json.loads((folder / "ddkit.json").read_text())
    meta["normalization"]["std"] = [1.0]
    (folder / "ddkit.json").write_text(json.dumps(meta))
    return ["import", folder, "--from", "pt", "--dataset", DATASET, "out.ddk.h5", "--require-signature",
            "--trusted-keys", work / "keys" / "trusted-alice"]


@case("sign", "import --require-signature of a signed export with edited pixels", outputs=("out.ddk.h5",))
def _(work):
    folder = _export(work, "pt", signed=True)
    images = torch.load(folder / "images.pt", weights_only=True)
    images[0] = 0.0
    torch.save(images, folder / "images.pt")
    return ["import", folder, "--from", "pt", "--dataset", DATASET, "out.ddk.h5", "--require-signature",
            "--trusted-keys", work / "keys" / "trusted-alice"]


def _signed(work: Path, output: str) -> None:
    from ddkit.share.sign import verify_file

    verify_file(work / "set.ddk.h5", work / "trusted")


@case("sign", "ddkit keys new, then ddkit sign", expect="ok")
def _(work):
    from ddkit.share.sign import new_key_pair

    _, line = new_key_pair(work / "k", "team")
    (work / "trusted").write_text(line + "\n")
    return ["sign", distilled(work, "set.ddk.h5"), "--key", work / "k"]


CHECKS["sign/ddkit keys new, then ddkit sign"] = _signed


@case("sign", "ddkit sign with a key that is not a key")
def _(work):
    (work / "k").write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    return ["sign", distilled(work, "set.ddk.h5"), "--key", work / "k"]


@case("sign", "ddkit keys new over an existing key", check=_survives("k"))
def _(work):
    (work / "k").write_text("an existing key")
    return ["keys", "new", "--out", work / "k"]
