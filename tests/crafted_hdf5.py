"""Issue 26, the HDF5 and bounds half: files and servers crafted as a stranger would, for every door a
shared file comes in by (local `info`/`validate`/`export`, `info local://…`, remote header reads,
downloads, catalog scans, imports, experts files).

`CASES` (a list of `tests.sharing_cases.SharingCase`) is what tests/test_sharing_hdf5.py runs in-process
and `scripts/bench_reliability_sharing.py` replays in fresh processes. `header_mutants(work, n, seed)`
yields byte edits of a valid `.ddk.h5`'s HDF5 metadata (superblock, object headers, attribute
messages, B-tree and heap blocks), each re-sealed as anyone can, for the header fuzz.

Layout of a case's work folder: the crafted inputs under `set/` (or `served/` for a server's files),
what a command may write under `out/`, and bytes that must never be read under `outside/`.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import torch
from crafted import distilled, forge
from sharing_cases import SharingCase

from ddkit.store.h5io import SEAL_BYTES, seal, seal_bytes

LABEL_ROWS_DECLARED = 150_000_000
VLEN_ENTRIES = 3000
BIG_STRING = 1_000_000  # characters: under the 1 MiB attribute limit on its own


# -- crafted .ddk.h5 files -------------------------------------------------------------------------


def _base(work: Path, name: str) -> Path:
    (work / "set").mkdir(parents=True, exist_ok=True)
    (work / "out").mkdir(exist_ok=True)
    return distilled(work / "set", name)


def _replace_labels(f: h5py.File, make) -> None:
    n = f["labels"].shape[0]
    del f["labels"]
    make(f, n)


def labels_external(work: Path, fifo: bool = False) -> Path:
    """`labels` stored as HDF5 external storage in outside/labels.bin (a FIFO with `fifo`): whoever reads
    the labels reads (or blocks on) a file the user never named."""
    path = _base(work, "external-fifo.ddk.h5" if fifo else "external.ddk.h5")
    outside = work / "outside"
    outside.mkdir(exist_ok=True)
    target = outside / ("labels.fifo" if fifo else "labels.bin")
    with forge(path, rehash=not fifo) as f:
        n = f["labels"].shape[0]
        if fifo:
            os.mkfifo(target)
        else:
            target.write_bytes(np.full(n, 7, np.int64).tobytes())
        _replace_labels(f, lambda f, n: f.create_dataset("labels", shape=(n,), dtype=np.int64,
                                                         external=[(str(target), 0, 8 * n)]))
    return path


def labels_virtual_self(work: Path) -> Path:
    """`labels` as a virtual dataset whose source is itself (reading it recursed until a segfault at 3 GB)."""
    path = _base(work, "virtual-self.ddk.h5")

    def make(f, n):
        layout = h5py.VirtualLayout(shape=(n,), dtype=np.int64)
        layout[:] = h5py.VirtualSource(".", "labels", shape=(n,))
        f.create_virtual_dataset("labels", layout)

    with forge(path, rehash=False) as f:
        _replace_labels(f, make)
    return path


def labels_unwritten(work: Path) -> Path:
    """A chunked `labels` of 1.5e8 rows never written, with a fill value: 1.2 GB of 3s from a 20 kB file."""
    path = _base(work, "unwritten.ddk.h5")
    with forge(path, rehash=False) as f:
        _replace_labels(f, lambda f, n: f.create_dataset("labels", shape=(LABEL_ROWS_DECLARED,), dtype=np.int64,
                                                         chunks=(1 << 16,), fillvalue=3))
    return path


def vlen_alias(work: Path) -> Path:
    """A root attribute of 3000 variable-length strings that all point at one 1 MB string (3 GB when read)."""
    path = _base(work, "vlen-alias.ddk.h5")
    with forge(path) as f:
        f.attrs["big"] = "x" * BIG_STRING
        f.attrs.create("notes", ["b"] * VLEN_ENTRIES, dtype=h5py.string_dtype())
    data = bytearray(path.read_bytes())
    big = _vlen_record(data, BIG_STRING)
    start = _vlen_record(data, 1, after=data.find(b"notes\0"))
    assert big is not None and start is not None, "the vlen records were not found"
    count = 0
    for offset in range(start, len(data) - 15, 16):  # 3000 records in a row: (length, heap address, index)
        if struct.unpack_from("<I", data, offset)[0] != 1:
            break
        data[offset:offset + 16] = big
        count += 1
    assert count == VLEN_ENTRIES, count
    path.write_bytes(seal_bytes(bytes(data)))
    return path


def _vlen_record(data: bytearray, length: int, after: int | None = None):
    """The first 16-byte vlen record (u32 length, u64 global-heap address, u32 index) of `length`: its
    bytes, or with `after` its offset (the first one after that offset)."""
    needle = struct.pack("<I", length)
    at = data.find(needle, after or 0)
    while at >= 0:
        address = struct.unpack_from("<Q", data, at + 4)[0]
        if SEAL_BYTES + address + 4 <= len(data) and data[SEAL_BYTES + address:SEAL_BYTES + address + 4] == b"GCOL":
            return at if after is not None else bytes(data[at:at + 16])
        at = data.find(needle, at + 1)
    return None


def attr_dtype_flip(work: Path) -> Path:
    """`license_note`'s datatype message with one byte of its class bit field changed (a variable-length
    string becomes an undefined kind), re-sealed: reading that attribute segfaulted the HDF5 library."""
    path = _base(work, "attr-dtype.ddk.h5")
    data = bytearray(path.read_bytes())
    name = data.find(b"license_note\0")
    # attribute message v1: the name is padded to 8 bytes, then the datatype message (class+version, bit field)
    dtype_at = name + 16
    assert data[dtype_at] & 0x0F == 9, "license_note is not a variable-length string"
    data[dtype_at + 1] = 0x02
    path.write_bytes(seal_bytes(bytes(data)))
    return path


HDF5_FILES = {
    "external storage (labels read from a file outside)": (labels_external, "external file"),
    "external storage pointing at a FIFO": (lambda w: labels_external(w, fifo=True), "external file"),
    "virtual dataset resolving into itself": (labels_virtual_self, "virtual dataset"),
    "unwritten chunked labels declaring 1.5e8 rows": (labels_unwritten, "fill values"),
    "3000 vlen attribute entries aliasing one 1 MB string": (vlen_alias, "variable-length"),
    "one-byte edit of an attribute's datatype (crash)": (attr_dtype_flip, "crashed the HDF5 library"),
}


def _served(work: Path, build, mode: str = "plain") -> str:
    """Build the file into served/ and serve it in the background; its URL."""
    from http_hostile import background

    path = build(work)
    served = work / "served"
    served.mkdir(exist_ok=True)
    target = served / path.name
    path.replace(target)
    return f"{background(served, mode)}/{target.name}"


def _hdf5_cases() -> list[SharingCase]:
    cases = []
    for name, (build, _) in HDF5_FILES.items():
        cases += [
            SharingCase("info", f"local path: {name}", lambda w, b=build: ["info", str(b(w).relative_to(w))],
                        inside=("set", "out")),
            SharingCase("info", f"local:// URL: {name}", lambda w, b=build: ["info", f"local://{b(w)}"],
                        inside=("set", "out")),
            SharingCase("remote", f"info over HTTP: {name}", lambda w, b=build: ["info", _served(w, b)],
                        inside=("out",)),
            SharingCase("catalog", f"scan a folder holding: {name}",
                        lambda w, b=build: (b(w), ["catalog", "scan", "set", "--catalog", "set/cat.sqlite"])[1],
                        expect="ok", inside=("set", "out")),
        ]
    crash = HDF5_FILES["one-byte edit of an attribute's datatype (crash)"][0]
    cases += [
        SharingCase("validate", "one-byte edit of an attribute's datatype (crash)",
                    lambda w: ["validate", str(crash(w).relative_to(w))], inside=("set", "out")),
        SharingCase("export", "one-byte edit of an attribute's datatype (crash)",
                    lambda w: ["export", str(crash(w).relative_to(w)), "--to", "pt", "out/x"],
                    inside=("set", "out"), outputs=("out/x",)),
        SharingCase("remote", "validate over HTTP: one-byte edit of an attribute's datatype (crash)",
                    lambda w: ["validate", _served(w, crash)], inside=("out",)),
    ]
    return cases


# -- hostile servers and URLs ----------------------------------------------------------------------


def _good(work: Path) -> Path:
    return _base(work, "good.ddk.h5")


def _network_cases() -> list[SharingCase]:
    cases = []
    for mode, what in (("stall", "a server that never answers"), ("endless", "an endless body"),
                       ("gzip", "a gzip Content-Encoding bomb (1 MB → 1 GB)"), ("short", "a short body")):
        for verb in ("info", "validate"):
            cases.append(SharingCase("remote", f"{verb}: {what}", lambda w, m=mode, v=verb: [v, _served(w, _good, m)],
                                     inside=("out",)))
    for verb in ("info", "validate"):
        cases += [
            SharingCase("remote", f"{verb}: an ftp:// URL", lambda w, v=verb: [v, "ftp://127.0.0.1:9/set.ddk.h5"],
                        inside=("out",)),
            SharingCase("remote", f"{verb}: a malformed URL", lambda w, v=verb: [v, "http://[::1/set.ddk.h5"],
                        inside=("out",)),
            SharingCase("remote", f"{verb}: nothing listening", lambda w, v=verb: [v, "http://127.0.0.1:9/x.ddk.h5"],
                        inside=("out",)),
        ]
    return cases


# -- imports: sizes declared by a stranger's bytes -------------------------------------------------


def stride0_pt(work: Path) -> Path:
    """A 765-byte-ish images.pt whose one stored pixel is viewed with stride 0 as 400 000 images."""
    folder = work / "set" / "stride0"
    folder.mkdir(parents=True)
    torch.save(torch.zeros(1).expand(400_000, 1, 28, 28), folder / "images.pt")
    torch.save(torch.zeros(400_000, dtype=torch.int64)[:1].expand(400_000), folder / "labels.pt")
    return folder


def huge_labels_pt(work: Path) -> Path:
    """A valid images.pt and labels of 3e8 (a bincount sized by the largest label would take 2.4 GB)."""
    folder = work / "set" / "labels3e8"
    folder.mkdir(parents=True)
    torch.save(torch.zeros(2, 1, 28, 28), folder / "images.pt")
    torch.save(torch.tensor([0, 300_000_000]), folder / "labels.pt")
    return folder


def memo_bomb_pt(work: Path, fmt: str, fanout: int = 8) -> Path:
    """A ~2 kB pickle of lists nested ~30 deep, each holding the previous one 8 times (memo references):
    a container walk that visits every path visits 8**30 leaves. `fmt` "pt" (as images.pt) or "dc"
    (as a DC result file's accuracy record, beside a valid experiment)."""
    folder = work / "set" / f"memo-{fmt}"
    folder.mkdir(parents=True)
    node: list = [0.5]
    for _ in range(30 if fmt == "pt" else 28):
        node = [node] * fanout
    if fmt == "pt":
        torch.save(node, folder / "images.pt")
        torch.save(torch.arange(10), folder / "labels.pt")
        return folder
    path = folder / "res_dc_x_y_1ipc.pt"
    torch.save({"data": [[torch.zeros(10, 1, 28, 28), torch.arange(10)]], "accs_all_exps": node}, path)
    return path


def big_pngs(work: Path, side: int, count: int) -> Path:
    """An image folder whose PNGs declare side×side zero pixels (compressed to almost nothing)."""
    import zlib

    root = work / "set" / f"png{side}x{count}"
    (root / "train" / "0").mkdir(parents=True)
    idat = _zero_rows_zlib(b"\0" + bytes(side), side)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    for i in range(count):
        (root / "train" / "0" / f"{i}.png").write_bytes(png)
    return root


def _zero_rows_zlib(row: bytes, rows: int) -> bytes:
    """zlib data of `row` repeated `rows` times, made fast: after a full flush, compressing the same
    block again gives the same bytes, so one compressed block of rows is repeated."""
    import zlib

    per_block = max(1, min(rows, (4 << 20) // len(row)))
    block = row * per_block
    comp = zlib.compressobj(9)
    head = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)  # the zlib header + the first block
    again = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)  # the same block, as any later one
    full, rest = divmod(rows, per_block)
    tail = comp.compress(row * rest) + comp.flush() if rest else comp.flush()
    checksum = zlib.adler32(block)
    for _ in range(full - 1):
        checksum = zlib.adler32(block, checksum)
    checksum = zlib.adler32(row * rest, checksum)
    if full < 2:  # too small to bother: compress it plainly
        return zlib.compress(row * rows, 9)
    body = head + again * (full - 1) + tail
    return body[:-4] + struct.pack(">I", checksum)  # the trailer checks all the rows, not the blocks compressed


def parquet_rows(work: Path, rows: int = 30_000_000) -> Path:
    """A parquet file of `rows` rows of one repeated tiny PNG and label 0 (dictionary-encoded: small on disk)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = work / "set" / "parquet"
    root.mkdir(parents=True)
    indices = pa.array(np.zeros(rows, np.int32))
    image = pa.DictionaryArray.from_arrays(indices, pa.array([b"\x89PNG"], pa.binary()))
    label = pa.DictionaryArray.from_arrays(indices, pa.array([0], pa.int64()))
    pq.write_table(pa.table({"image": image, "label": label}), root / "train.parquet", row_group_size=1 << 22)
    return root / "train.parquet"


def npy_header(work: Path, elements: int = 10**13) -> Path:
    """An export folder whose extras/images.npy header declares 1e13 elements in a few hundred bytes."""
    from ddkit.share import export_file

    src = _base(work, "src.ddk.h5")
    folder = work / "set" / "npy"
    export_file(src, "imagefolder", folder)
    fake = work / "set" / "fake.npy"
    np.save(fake, np.zeros(1, np.float16))
    raw = fake.read_bytes()
    header_len = struct.unpack_from("<H", raw, 8)[0]
    header = f"{{'descr': '<f2', 'fortran_order': False, 'shape': ({elements}, 1, 16, 16), }}"
    header = header.ljust(header_len - 1) + "\n"
    extras = folder / "extras"
    (extras / "images.npy").chmod(0o644)
    (extras / "images.npy").write_bytes(raw[:10] + header.encode() + b"\0" * 64)
    fake.unlink()
    return folder


def _import_cases() -> list[SharingCase]:
    def imp(source: Path, w: Path, fmt: str, *extra: str) -> list[str]:
        return ["import", str(source.relative_to(w)), "--from", fmt, "--dataset", "fashion-mnist-mini",
                "out/x.ddk.h5", *extra]

    return [
        SharingCase("import", "a 765-byte stride-0 tensor viewed as 400 000 images",
                    lambda w: imp(stride0_pt(w), w, "pt"), outputs=("out/x.ddk.h5",)),
        SharingCase("import", "labels of 3e8", lambda w: imp(huge_labels_pt(w), w, "pt"), outputs=("out/x.ddk.h5",)),
        SharingCase("import", "a 1 kB pickle of shared lists 8-way, 30 deep (dc)",
                    lambda w: imp(memo_bomb_pt(w, "dc"), w, "dc"), outputs=("out/x.ddk.h5",)),
        SharingCase("import", "a 1 kB pickle of shared lists 8-way, 30 deep (pt)",
                    lambda w: imp(memo_bomb_pt(w, "pt"), w, "pt"), outputs=("out/x.ddk.h5",)),
        SharingCase("import", "a 30000² PNG", lambda w: imp(big_pngs(w, 30_000, 1), w, "imagefolder"),
                    outputs=("out/x.ddk.h5",)),
        SharingCase("import", "24 × 9000² PNGs", lambda w: imp(big_pngs(w, 9000, 24), w, "imagefolder"),
                    outputs=("out/x.ddk.h5",)),
        SharingCase("import", "a parquet file declaring 30M rows", lambda w: imp(parquet_rows(w), w, "hf"),
                    outputs=("out/x.ddk.h5",)),
        SharingCase("import", "an .npy header declaring 1e13 elements",
                    lambda w: ["import", str(npy_header(w).relative_to(w)), "--from", "imagefolder", "--dataset",
                               "procedural", "out/x.ddk.h5"], outputs=("out/x.ddk.h5",)),
        SharingCase("import", "a singular ZCA transform",
                    lambda w: imp(mtt_set(w), w, "mtt", "--zca", str(zca_file(w, "singular").relative_to(w))),
                    outputs=("out/x.ddk.h5",)),
        SharingCase("import", "a ZCA mean that is a string",
                    lambda w: imp(mtt_set(w), w, "mtt", "--zca", str(zca_file(w, "string-mean").relative_to(w))),
                    outputs=("out/x.ddk.h5",)),
    ]


def mtt_set(work: Path) -> Path:
    """A tiny MTT-style folder (images_best.pt, labels_best.pt) of fashion-mnist-mini's shape."""
    folder = work / "set" / "mtt"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(0)), folder / "images_best.pt")
    torch.save(torch.arange(10), folder / "labels_best.pt")
    return folder


def zca_file(work: Path, kind: str) -> Path:
    """ZCA parameters that cannot be undone: a singular transform, or a mean stored as a string (a pickle)."""
    (work / "set").mkdir(parents=True, exist_ok=True)
    if kind == "singular":
        path = work / "set" / "zca.npz"
        np.savez(path, mean=np.zeros(784, np.float32), transform=np.zeros((784, 784), np.float32))
    else:
        path = work / "set" / "zca.pt"
        torch.save({"mean": "0.5", "transform": torch.eye(784)}, path)
    return path


# -- experts files ---------------------------------------------------------------------------------


def experts_file(work: Path, change: str) -> Path:
    """A small valid experts file of `procedural` (convnet width 4), then edited (`change`) and re-sealed
    with its header's params hash made to match again (anyone can): only the typed checks remain."""
    from ddkit.data import load_dataset
    from ddkit.experts import ExpertsHeader, dataset_record, param_layout, params_sha256, write_experts
    from ddkit.models import create_model

    (work / "set").mkdir(parents=True, exist_ok=True)
    source = load_dataset("procedural", "train")
    info = source.info
    model = create_model("convnet", info.image_shape[0], info.image_shape[1], info.num_classes, seed=0, width=4)
    layout = param_layout(model)
    num = sum(int(np.prod(s)) for _, s in layout)
    header = ExpertsHeader(arch="convnet", arch_kwargs={"width": 4}, dataset=dataset_record(source),
                           normalization=info.normalization.to_dict(),
                           training={"epochs": 1, "lr": 0.01, "momentum": 0.0, "weight_decay": 0.0, "batch_size": 8,
                                     "augmentation": "none"},
                           num_experts=1, seed=0, expert_seeds=[0], param_layout=layout, num_params=num)
    params = np.random.default_rng(0).normal(0, 0.1, (1, 2, num)).astype(np.float32)
    path = work / "set" / f"{change}.experts.h5"
    write_experts(path, header, params)
    if change == "valid":
        return path
    with h5py.File(path, "r+") as f:
        d = json.loads(f.attrs["header"])
        stored = f["params"][()]
        if change == "width-6000":
            d["arch_kwargs"] = {"width": 6000}
        elif change == "wrong-layout":
            d["param_layout"] = [["x", [num]]]  # the right count, not the architecture's tensors
        elif change == "layout-not-lists":
            d["param_layout"] = {"a": 1}
        elif change == "empty-params":
            d["num_params"] = 0
            d["param_layout"] = []
            del f["params"]
            f.create_dataset("params", shape=(1, 2, 0), dtype=np.float32)
            stored = np.zeros((1, 2, 0), np.float32)
        elif change in ("nan-params", "inf-params"):
            stored[0, 1, 3] = np.nan if change == "nan-params" else np.inf
            f["params"][...] = stored
        elif change == "zero-std":
            d["normalization"] = {**d["normalization"], "std": [0.0] * len(d["normalization"]["std"])}
        elif change == "negative-lr":
            d["training"]["lr"] = -0.01
        d["params_sha256"] = params_sha256(stored)
        f.attrs["header"] = json.dumps(d)
    seal(path)
    return path


EXPERTS_CHANGES = {
    "width-6000": "an arch_kwargs width of 6000 with the honest parameters (a 3 GB model if built)",
    "wrong-layout": "a parameter layout of the right size that is not the architecture's",
    "layout-not-lists": "a parameter layout that is not a list",
    "empty-params": "no parameters at all",
    "nan-params": "NaN parameters",
    "inf-params": "infinite parameters",
    "zero-std": "zero-std normalization",
    "negative-lr": "a negative expert lr",
}


def _experts_cases() -> list[SharingCase]:
    cases = []
    for change, what in EXPERTS_CHANGES.items():
        cases.append(SharingCase("experts", f"experts info: {what}",
                                 lambda w, c=change: ["experts", "info", str(experts_file(w, c).relative_to(w))]))
        cases.append(SharingCase(
            "experts", f"synthesize mtt: {what}",
            lambda w, c=change: ["synthesize", "--method", "mtt", "--dataset", "procedural", "--ipc", "1",
                                 "--config", f"experts={experts_file(w, c).relative_to(w)}", "--config",
                                 "iterations=1", "--config", "max_start_epoch=0", "--config", "expert_epochs=1",
                                 "--config", "syn_steps=2", "--out", "out/x.ddk.h5"],
            outputs=("out/x.ddk.h5",)))
    return cases


CASES: list[SharingCase] = _hdf5_cases() + _network_cases() + _import_cases() + _experts_cases()


# -- the header fuzz -------------------------------------------------------------------------------


def metadata_regions(path: Path) -> list[tuple[str, int, int]]:
    """(kind, start, stop) byte ranges of a ddkit file's HDF5 metadata: the superblock, every object
    header, every root attribute message and every B-tree, local heap, symbol node and global heap."""
    data = path.read_bytes()
    regions = [("superblock", SEAL_BYTES, SEAL_BYTES + 96)]
    with h5py.File(path, "r") as f:
        objects = [f] + [f[name] for name in f]
        for obj in objects:
            info = h5py.h5o.get_info(obj.id)
            start = SEAL_BYTES + info.addr
            regions.append((f"object-header {obj.name}", start, min(len(data), start + max(16, info.hdr.space.total))))
        names = list(f.attrs)
    for name in names:
        at = data.find(name.encode() + b"\0")
        if at > 0:
            regions.append((f"attribute {name}", at - 8, min(len(data), at + 64)))
    for signature in (b"TREE", b"HEAP", b"SNOD", b"GCOL"):
        at = data.find(signature)
        while at >= 0:
            regions.append((f"{signature.decode()} block", at, min(len(data), at + 64)))
            at = data.find(signature, at + 1)
    return regions


def mutate_metadata(data: bytes, regions: list[tuple[str, int, int]], rng: np.random.Generator) -> tuple[bytes, str]:
    """1–3 byte edits inside one metadata region (a new value, a flipped bit, 0x00/0xff, ±1); the description."""
    kind, start, stop = regions[int(rng.integers(len(regions)))]
    blob = bytearray(data)
    edits = []
    for _ in range(int(rng.integers(1, 4))):
        at = int(rng.integers(start, stop))
        op = int(rng.integers(5))
        old = blob[at]
        blob[at] = [int(rng.integers(256)), old ^ (1 << int(rng.integers(8))), 0x00, 0xFF, (old + 1) & 0xFF][op]
        edits.append(f"{at}:{old:02x}>{blob[at]:02x}")
    return seal_bytes(bytes(blob)), f"{kind} [{' '.join(edits)}]"


def header_mutants(work: Path, n: int, seed: int) -> Iterator[tuple[str, Path]]:
    """`n` re-sealed header mutants of one valid `.ddk.h5` (written under `work/mutants/`, ~20 kB each),
    as (description, path); the same `seed` gives the same mutants."""
    base = _base(work, "fuzz-base.ddk.h5")
    data = base.read_bytes()
    regions = metadata_regions(base)
    folder = work / "mutants"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        blob, what = mutate_metadata(data, regions, rng)
        path = folder / f"m{i:05d}.ddk.h5"
        path.write_bytes(blob)
        yield f"mutant {i}: {what}", path


def replay_in_child(path: Path, reference: str, timeout: float = 60.0) -> tuple[str, int, int]:
    """What `ddkit info` and `ddkit validate` do with `path`, run in a forked child (so a crash is
    seen, not suffered): (outcome, the child's pid, its peak RSS in KiB). The outcome is "refused" (a
    ddkit error or a failed validation), "read" (both passed and the content hash is `reference`),
    "wrong: …" (both passed with another content hash), "traceback: …", "crash: SIGNAL" or "hang"."""
    import select
    import signal
    import time
    import traceback

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        outcome = "read"
        try:
            from ddkit.errors import DdkitError
            from ddkit.store import info_dict, validate_file

            try:
                found = info_dict(path)["content_sha256"]
                report = validate_file(path)
                if not report.ok:
                    outcome = "refused"
                elif found != reference:
                    outcome = f"wrong: content_sha256 {found[:16]} read as valid"
            except DdkitError:
                outcome = "refused"
        except BaseException as exc:  # noqa: BLE001 — what the fuzz counts
            outcome = f"traceback: {type(exc).__name__}: {str(exc)[:200]} @ {traceback.format_exc().splitlines()[-3].strip()}"
        os.write(write_end, outcome.encode()[:4000])
        os._exit(0)
    os.close(write_end)
    deadline, data, hung = time.monotonic() + timeout, b"", False
    while True:
        ready, _, _ = select.select([read_end], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            os.kill(pid, signal.SIGKILL)
            hung = True
            break
        chunk = os.read(read_end, 4096)
        if not chunk:
            break
        data += chunk
    os.close(read_end)
    _, status, usage = os.wait4(pid, 0)
    if hung:
        return "hang", pid, usage.ru_maxrss
    if os.WIFSIGNALED(status):
        return f"crash: {signal.Signals(os.WTERMSIG(status)).name}", pid, usage.ru_maxrss
    return data.decode() or f"crash: exit {os.WEXITSTATUS(status)}", pid, usage.ru_maxrss


_TEMP_NAME = re.compile(r"^\..*\.(tmp|old|probe)$")


def header_fuzz(n: int, work: Path, seed: int = 26, timeout: float = 60.0, stop_at: float | None = None) -> dict:
    """The header-fuzz row of the replay benchmark: `n` mutants of `header_mutants(work, n, seed)`, each
    read by `replay_in_child` with `$DDKIT_CACHE` in `work/cache`; no mutant starts after the epoch time
    `stop_at` (the row's "cases" says how many ran).

    A mutant is clean when it was refused or read with the original content hash, no temporary file
    was left anywhere under `work`, and the mutant's own bytes did not change. Returns the row's
    counts (see scripts/bench_reliability_sharing.py) plus "unclean" [(id, reason)], "peak_mutant" (the
    mutant of the peak RSS) and "pids" [(pid, id)] in the order the children were forked (the benchmark
    maps an strace log's accesses to mutants with them); "outside" is left to the caller, which alone
    can trace file accesses.
    """
    import hashlib
    import time

    from ddkit.store import info_dict

    work.mkdir(parents=True, exist_ok=True)
    os.environ["DDKIT_CACHE"] = str(work / "cache")
    counts = {"cases": 0, "clean": 0, "peak_rss_mib": 0.0, "outside": 0, "crashes": 0, "hangs": 0,
              "tracebacks": 0, "leftovers": 0, "wrong": 0, "refused": 0, "read": 0}
    unclean, pids, reference, peak_mutant = [], [], None, ""
    for what, path in header_mutants(work, n, seed):
        if stop_at is not None and time.time() > stop_at:
            path.unlink()
            break
        if reference is None:
            reference = info_dict(work / "set" / "fuzz-base.ddk.h5")["content_sha256"]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        outcome, pid, peak_kib = replay_in_child(path, reference, timeout)
        mutant = what.split(":", 1)[0]
        pids.append((pid, mutant))
        counts["cases"] += 1
        if peak_kib / 1024 > counts["peak_rss_mib"]:
            counts["peak_rss_mib"], peak_mutant = peak_kib / 1024, what
        left = [str(p.relative_to(work)) for p in work.rglob(".*") if _TEMP_NAME.match(p.name)]
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            left.append(f"{path.name} changed")
        problems = [] if outcome in ("refused", "read") else [outcome]
        if left:
            counts["leftovers"] += 1
            problems.append(f"left: {', '.join(left[:3])}")
            for p in work.rglob(".*"):
                if _TEMP_NAME.match(p.name):
                    p.unlink()
        if outcome in ("refused", "read"):
            counts[outcome] += 1
        elif outcome == "hang":
            counts["hangs"] += 1
        elif outcome.startswith("crash"):
            counts["crashes"] += 1
        elif outcome.startswith("traceback"):
            counts["tracebacks"] += 1
        else:
            counts["wrong"] += 1
        if problems:
            unclean.append((what, "; ".join(problems)[:300]))
        else:
            counts["clean"] += 1
        path.unlink()
    return counts | {"unclean": unclean, "peak_mutant": peak_mutant, "pids": pids}
