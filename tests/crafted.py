"""Files crafted as an adversarial user would (issue 19): edited with h5py, then given a correct
content hash, header hash and seal, so only ddkit's reader policy and typed checks stand between
them and the commands. Shared by tests/test_untrusted.py and scripts/bench_reliability.py.

Each case builds one file in a work folder and says which commands must refuse it (a clear
message, non-zero exit, no traceback) and which must succeed (the correct result).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import torch
from safetensors.torch import save_file

from ddkit.data import load_dataset
from ddkit.data.base import DatasetInfo, ImageDataset, Normalization
from ddkit.models import create_model
from ddkit.models.teacher import save_teacher
from ddkit.store import DistilledSet, Selection, write_distilled, write_selection
from ddkit.store.h5io import seal
from ddkit.store.hashing import content_sha256, header_sha256
from ddkit.store.selection import pool_record


@contextlib.contextmanager
def forge(path: Path, rehash: bool = True):
    """Edit a ddkit file and give it a correct content hash (unless `rehash` is False: hashing a
    declared-but-unwritten dataset would take hours), header hash and seal (anyone can)."""
    with h5py.File(path, "r+") as f:
        yield f
        with contextlib.suppress(Exception):  # a file reaching outside itself may not hash
            if rehash:
                f.attrs["content_sha256"] = content_sha256(f)
        f.attrs["header_sha256"] = header_sha256(f)
    seal(path)


def distilled(work: Path, name: str = "base.ddk.h5") -> Path:
    """A valid float16 distilled file of `procedural`, 2 images per class."""
    source = load_dataset("procedural", "train")
    idx = torch.cat([torch.nonzero(source.labels == c).flatten()[:2] for c in range(source.num_classes)])
    dset = DistilledSet.from_source(source, method="crafted", method_version="1", config={}, seed=0,
                                    images=source.pixels(idx) * 0.5 + 0.25, labels=source.labels[idx], ipc=2)
    path = work / name
    write_distilled(path, dset, overwrite=True)
    return path


def selection(work: Path, name: str = "base.sel.h5") -> Path:
    pool = load_dataset("procedural", "train")
    sel = Selection("crafted", "1", {}, 0, pool_record(pool), ids=pool.ids[:20].numpy())
    path = work / name
    write_selection(path, sel, overwrite=True)
    return path


def teacher_header(work: Path, change: Callable[[dict], object], name: str = "t.safetensors") -> Path:
    """A tiny teacher file whose JSON header is changed by `change` and re-hashed (as anyone can)."""
    info = load_dataset("procedural", "train").info
    model = create_model("convnet-bn", 1, 16, 10, seed=0, width=4)
    path = work / name
    save_teacher(path, model, info, overwrite=True)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        state = {k: fh.get_tensor(k) for k in fh.keys()}
        header = json.loads(fh.metadata()["ddkit"])
    header = change(header)
    text = json.dumps(header)
    save_file(state, str(path), metadata={"ddkit": text, "ddkit_sha256": hashlib.sha256(text.encode()).hexdigest()})
    return path


def _set(key: str, value):
    def change(header: dict) -> dict:
        header[key] = value
        return header

    return change


def _outside(work: Path, nbytes: int) -> Path:
    target = work / "outside.bin"
    target.write_bytes(np.random.default_rng(0).integers(0, 255, nbytes, dtype=np.uint8).tobytes())
    return target


def _other_h5(work: Path, like: h5py.Dataset) -> Path:
    other = work / "other.h5"
    with h5py.File(other, "w") as g:
        g["images"] = np.full(like.shape, 0.5, like.dtype)
    return other


def _replace_images(f: h5py.File, make: Callable[[h5py.File, tuple, np.dtype], None]) -> None:
    shape, dtype = f["images"].shape, f["images"].dtype
    del f["images"]
    make(f, shape, dtype)


def _ext_storage(work: Path) -> Callable[[h5py.File], None]:
    def edit(f):
        nbytes = int(np.prod(f["images"].shape)) * f["images"].dtype.itemsize
        target = _outside(work, nbytes)
        _replace_images(f, lambda f, s, d: f.create_dataset("images", shape=s, dtype=d, external=[(str(target), 0, nbytes)]))
    return edit


def _ext_link(work: Path) -> Callable[[h5py.File], None]:
    def edit(f):
        other = _other_h5(work, f["images"])
        _replace_images(f, lambda f, s, d: f.__setitem__("images", h5py.ExternalLink(str(other), "/images")))
    return edit


def _virtual(work: Path) -> Callable[[h5py.File], None]:
    def edit(f):
        other = _other_h5(work, f["images"])

        def make(f, shape, dtype):
            layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
            layout[:] = h5py.VirtualSource(str(other), "images", shape=shape)
            f.create_virtual_dataset("images", layout)
        _replace_images(f, make)
    return edit


def _soft_link(f: h5py.File) -> None:
    f.move("images", "pixels")
    f["images"] = h5py.SoftLink("/pixels")


def _unwritten_rows(f: h5py.File) -> None:
    _replace_images(f, lambda f, s, d: f.create_dataset("images", shape=(200_000_000, *s[1:]), dtype=d,
                                                        chunks=(1024, *s[1:])))


def _json_attr(key: str, change: Callable[[object], object]) -> Callable[[h5py.File], None]:
    def edit(f):
        f.attrs[key] = json.dumps(change(json.loads(f.attrs[key])))
    return edit


def _dataset_field(key: str, value) -> Callable[[h5py.File], None]:
    return _json_attr("dataset", lambda d: {**d, key: value})


def _nan_pixels(f: h5py.File) -> None:
    images = f["images"][()]
    images[0, 0, 0, 0] = np.nan
    f["images"][...] = images


def _card_list(f: h5py.File) -> None:
    f.require_group("results").create_group("x").attrs["card"] = "[1, 2]"


def _huge_ids(f: h5py.File) -> None:
    for name in ("ids", "score", "rank", "round"):
        dtype = f[name].dtype
        del f[name]
        f.create_dataset(name, shape=(2_000_000_000,), dtype=dtype, chunks=(65536,))


def _pool_name(value: str) -> Callable[[h5py.File], None]:
    return _json_attr("pool", lambda p: {**p, "name": value})


def many_classes(work: Path) -> Path:
    """A valid file of 20 000 classes (one 1×4×4 image each): `show` must stay bounded, not fail."""
    k = 20_000
    info = DatasetInfo("procedural", tuple(f"c{i}" for i in range(k)), (1, 4, 4), Normalization((0.5,), (0.25,)))
    images = torch.rand(k, 1, 4, 4)
    source = ImageDataset(info, "train", images, torch.arange(k))
    dset = DistilledSet.from_source(source, method="crafted", method_version="1", config={}, seed=0,
                                    images=images, labels=torch.arange(k), ipc=1)
    path = work / "many.ddk.h5"
    write_distilled(path, dset, overwrite=True)
    return path


FILE_COMMANDS = ("info", "validate", "show", "evaluate")


@dataclass
class Case:
    """A crafted file: `build(work)` writes it; `refused` commands must fail cleanly, the rest succeed."""

    name: str
    build: Callable[[Path], Path]
    refused: tuple[str, ...] = FILE_COMMANDS
    message: str = ""  # a word the refusal must contain
    commands: tuple[str, ...] = field(default=FILE_COMMANDS)


def _edited(base: Callable[[Path], Path], edit_for: Callable[[Path], Callable[[h5py.File], None]], rehash: bool = True):
    def build(work: Path) -> Path:
        path = base(work)
        with forge(path, rehash) as f:
            edit_for(work)(f)
        return path
    return build


def _plain(edit: Callable[[h5py.File], None]):
    return lambda work: edit


CASES = [
    Case("external storage (/images bytes from another file)", _edited(distilled, _ext_storage), message="external file"),
    Case("external link (/images in another HDF5 file)", _edited(distilled, _ext_link), message="external link"),
    Case("virtual dataset over another file", _edited(distilled, _virtual), message="virtual dataset"),
    Case("soft link", _edited(distilled, _plain(_soft_link)), message="soft link"),
    Case("2e8 unwritten rows declared in a small file", _edited(distilled, _plain(_unwritten_rows), rehash=False),
         message="fill values"),
    Case("2 MB attribute", _edited(distilled, _plain(lambda f: f["images"].attrs.__setitem__("x", "x" * (2 << 20)))),
         message="byte limit"),
    Case("dataset named imagefolder:/etc", _edited(distilled, _plain(_dataset_field("name", "imagefolder:/etc"))),
         refused=("evaluate",), message="path"),
    Case("budget fields as strings", _edited(distilled, _plain(_json_attr("budget", lambda b: {**b, "ipc_stored": "2"}))),
         message="budget.ipc_stored"),
    Case("teachers as strings", _edited(distilled, _plain(_json_attr("teachers", lambda t: ["a", "b"]))),
         message="teachers[0]"),
    Case("result card that is a list", _edited(distilled, _plain(_card_list)), refused=("info", "validate"),
         message="result card"),
    Case("zero-sized image shape", _edited(distilled, _plain(_dataset_field("image_shape", [1, 0, 16]))),
         message="image_shape"),
    Case("NaN normalization", _edited(distilled, _plain(_json_attr("normalization", lambda n: {**n, "std": [float("nan")]}))),
         message="normalization"),
    Case("zero-std normalization", _edited(distilled, _plain(_json_attr("normalization", lambda n: {**n, "std": [0.0]}))),
         message="normalization"),
    Case("NaN pixels", _edited(distilled, _plain(_nan_pixels)), refused=("validate", "show", "evaluate"), message="NaN"),
    Case("20 000 classes", many_classes, refused=(), commands=("info", "validate", "show")),
    Case(".sel.h5 declaring 2e9 ids", _edited(selection, _plain(_huge_ids), rehash=False), commands=("info", "validate", "evaluate"),
         refused=("info", "validate", "evaluate"), message="fill values"),
    Case(".sel.h5 whose pool is imagefolder:/etc", _edited(selection, _plain(_pool_name("imagefolder:/etc"))),
         commands=("info", "validate", "evaluate"), refused=("evaluate",), message="path"),
]

TEACHER_CASES = [
    ("header is a list", lambda h: [h], "JSON object"),
    ("header is null", lambda h: None, "JSON object"),
    ("header is a string", lambda h: "teacher", "JSON object"),
    ("arch_kwargs is a list", _set("arch_kwargs", [4]), "arch_kwargs"),
    ("class_names is an int", _set("class_names", 10), "class_names"),
    ("in_channels is 'one'", _set("in_channels", "one"), "in_channels"),
    ("width 6000 (3 GB if built)", _set("arch_kwargs", {"width": 6000}), "do not fit"),
    ("dataset imagefolder:/etc", _set("dataset", "imagefolder:/etc"), "path"),
]


def bomb_png(path: Path, side: int = 12_000) -> Path:
    """A PNG of a few hundred bytes whose header says side×side pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def image_folder(work: Path, bad: str) -> Path:
    """An image folder with one bad entry: `bad` is "dangling-symlink" or "bomb-png"."""
    from PIL import Image

    root = work / f"folder-{bad}"
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(2):
                Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(root / split / c / f"{i}.png")
    (root / "classes.json").write_text('["a", "b"]')
    if bad == "dangling-symlink":
        (root / "train" / "a" / "gone.png").symlink_to(root / "nowhere.png")
    else:
        bomb_png(root / "train" / "a" / "bomb.png")
    return root


def command(name: str, path: Path, work: Path) -> list[str]:
    """The argv of `name` run on `path` (evaluate: one seed, one step, nothing else trained)."""
    return {
        "info": ["info", path],
        "validate": ["validate", path],
        "show": ["show", path, "--out", work / f"{path.stem}.png", "--overwrite"],
        "evaluate": ["evaluate", path, "--seeds", "1", "--steps", "1", "--no-baseline", "--no-full", "--no-write"],
    }[name]
