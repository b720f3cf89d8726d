#!/usr/bin/env python
"""Generate a Tiny-ImageNet-like labeled JPEG folder in the `imagefolder:` layout, for scale tests.

    python scripts/make_image_folder.py --classes 200 --train-per-class 500 --test-per-class 50 \
        --size 64 --seed 0 --quality 90 --workers 2 --out /data/tiny-procedural

writes OUT/classes.json, OUT/train/<class>/*.jpg, OUT/test/<class>/*.jpg and OUT/generated.json (the
arguments, counts and the list of corrupt files; written last). Read it as `imagefolder:OUT`.

Why procedural: ddkit's scale paths (streamed folders, pool build/score over 10^5..10^6 images) need
a large folder on a machine without ImageNet. The images must be *learnable*, or a benchmark
measures decode speed of noise: every class is a procedural family — a background grating of a
class frequency and orientation in a class colour, one class shape (disk, square, ring, cross,
diamond, triangle) filled with a second class texture and colour — and every image draws its own
placement, scale, rotation, phase, colour jitter, brightness, a random distractor blob and pixel
noise. With 200 classes drawn from continuous ranges, neighbouring families overlap, so a small
ConvNet beats chance clearly but not trivially.

Deterministic: the same arguments give the same bytes whatever --workers is (work items of fixed
size, each seeded from (seed, stream, class, chunk) by ddkit.seeding; JPEG by PIL/libjpeg).
Atomic: everything is written into OUT.partial/ and renamed to OUT at the end, so OUT exists only
complete; an interrupted run leaves OUT.partial/, which the next run removes and starts over.

--pool-only writes the layout `ddkit pool build` reads (`--from imagefolder:OUT@train`; pools are
built from registered datasets only): classes.json and train/<class>/ with images drawn from a
separate "pool" stream — the same class families as the labeled folder of the same --seed, other
images — and no test split. --corrupt K adds K unreadable files (truncated JPEGs, garbage bytes,
empty files) to train/ for the skip-and-count path of streamed readers; generated.json lists them.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ddkit.data.imagefolder import CLASS_MAP, write_class_map
from ddkit.errors import DdkitError, InvalidInput, OutputExists
from ddkit.seeding import numpy_rng

MARKER = "generated.json"
FORMAT = "ddkit.procedural-image-folder"
VERSION = 1  # bump when the images a given seed produces change
CHUNK = 128  # images per work item: fixed, so the bytes do not depend on --workers
SHAPES = ("disk", "square", "ring", "cross", "diamond", "triangle")


@dataclass(frozen=True)
class Args:
    classes: int
    train_per_class: int
    test_per_class: int
    size: int
    seed: int
    quality: int
    corrupt: int
    pool_only: bool


@dataclass(frozen=True)
class ClassFamily:
    """The parameters every image of one class shares (jittered per image)."""

    background: tuple[float, float, float]
    foreground: tuple[float, float, float]
    shape: str
    bg_cycles: float  # grating periods across the image
    bg_angle: float  # radians
    fg_cycles: float
    fg_angle: float
    bg_contrast: float


def class_family(seed: int, label: int) -> ClassFamily:
    rng = numpy_rng(seed, "image-folder-class", label)
    bg, fg = rng.uniform(0.1, 0.9, 3), rng.uniform(0.1, 0.9, 3)
    return ClassFamily(tuple(bg), tuple(fg), SHAPES[label % len(SHAPES)], float(rng.uniform(1.0, 6.0)),
                       float(rng.uniform(0, np.pi)), float(rng.uniform(2.0, 8.0)), float(rng.uniform(0, np.pi)),
                       float(rng.uniform(0.1, 0.35)))


def class_names(classes: int) -> list[str]:
    width = max(3, len(str(classes - 1)))
    return [f"c{c:0{width}d}-{SHAPES[c % len(SHAPES)]}" for c in range(classes)]


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-mask of a unit-sized shape in local coordinates (u, v), N×S×S."""
    if shape == "disk":
        return u * u + v * v < 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) < 0.8
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 < 1.0) & (r2 > 0.36)
    if shape == "cross":
        return ((np.abs(u) < 0.3) & (np.abs(v) < 1.0)) | ((np.abs(v) < 0.3) & (np.abs(u) < 1.0))
    if shape == "diamond":
        return np.abs(u) + np.abs(v) < 1.0
    if shape == "triangle":
        return (v > -0.5) & (np.sqrt(3) * u + v < 1.0) & (-np.sqrt(3) * u + v < 1.0)
    raise ValueError(shape)


def _grating(coords: np.ndarray, cycles: np.ndarray, angle: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """sin(2π·cycles·(x cos θ + y sin θ) + phase), N×S×S, from separable factors (O(N·S) sines)."""
    a = (2 * np.pi * cycles * np.cos(angle))[:, None] * coords  # N×S, along x
    b = (2 * np.pi * cycles * np.sin(angle))[:, None] * coords + phase[:, None]  # N×S, along y
    return np.sin(b)[:, :, None] * np.cos(a)[:, None, :] + np.cos(b)[:, :, None] * np.sin(a)[:, None, :]


def render(family: ClassFamily, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """`n` uint8 images N×S×S×3 of one class family, every nuisance drawn from `rng` (float32 math)."""
    f32 = np.float32
    coords = (np.arange(size) / size).astype(f32)
    y, x = coords[None, :, None], coords[None, None, :]

    def uniform(lo, hi, shape=n):
        return rng.uniform(lo, hi, shape).astype(f32)

    jitter = np.deg2rad(15.0)
    bg_tex = _grating(coords, family.bg_cycles * uniform(0.85, 1.15), family.bg_angle + uniform(-jitter, jitter),
                      uniform(0, 2 * np.pi)).astype(f32)
    fg_tex = _grating(coords, family.fg_cycles * uniform(0.85, 1.15), family.fg_angle + uniform(-jitter, jitter),
                      uniform(0, 2 * np.pi)).astype(f32)
    # the shape: random centre, radius, rotation
    cx, cy = uniform(0.25, 0.75)[:, None, None], uniform(0.25, 0.75)[:, None, None]
    radius = uniform(0.15, 0.35)[:, None, None]
    rot = uniform(0, 2 * np.pi)[:, None, None]
    dx, dy = (x - cx) / radius, (y - cy) / radius
    mask = _shape_mask(family.shape, np.cos(rot) * dx + np.sin(rot) * dy, -np.sin(rot) * dx + np.cos(rot) * dy)
    # a distractor blob of a random colour in half of the images
    bx, by, br = uniform(0, 1)[:, None, None], uniform(0, 1)[:, None, None], uniform(0.05, 0.15)[:, None, None]
    blob = (((x - bx) ** 2 + (y - by) ** 2) < br**2) & (rng.random(n) < 0.5)[:, None, None]

    # Channels-first keeps the big per-pixel passes contiguous (several times faster than N×S×S×3);
    # the draws and the arithmetic are those of version 1, so the bytes are too.
    bg_col = (np.asarray(family.background) + rng.normal(0, 0.08, (n, 3))).astype(f32)[:, :, None, None]
    fg_col = (np.asarray(family.foreground) + rng.normal(0, 0.08, (n, 3))).astype(f32)[:, :, None, None]
    blob_col = uniform(0, 1, (n, 3))[:, :, None, None]
    contrast = family.bg_contrast * uniform(0.7, 1.3)[:, None, None]
    img = bg_col * (1 + contrast * bg_tex)[:, None]  # N×3×S×S
    fg = fg_col * (1 + f32(0.25) * fg_tex)[:, None]
    img += mask[:, None].astype(f32) * (fg - img)  # blends: several times cheaper than np.where here
    img += blob[:, None].astype(f32) * (blob_col - img)
    noise = (rng.random((n, size, size, 3), dtype=f32) - f32(0.5)).transpose(0, 3, 1, 2)  # uniform: cheaper than normal
    gain = 255 * uniform(0.75, 1.25)[:, None, None, None]
    img = img * gain + noise * (255 * np.sqrt(12) * uniform(0.02, 0.08))[:, None, None, None]  # noise std 0.02..0.08
    pixels = np.clip(img + f32(0.5), 0, 255, out=img).astype(np.uint8)  # +0.5 then truncation: rounding
    return np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))


def jpeg_bytes(pixels: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _file_name(name: str, index: int) -> str:
    return f"{name}_{index:06d}.jpg"


def splits(args: Args) -> list[tuple[str, str, int]]:
    """(image stream, split folder, images per class) of the layout."""
    if args.pool_only:
        return [("pool", "train", args.train_per_class)]
    return [("train", "train", args.train_per_class), ("test", "test", args.test_per_class)]


def work_items(args: Args) -> list[tuple[str, str, int, int, int]]:
    """(stream, split folder, label, first index, count) in a fixed order."""
    return [(stream, folder, label, start, min(CHUNK, per_class - start))
            for stream, folder, per_class in splits(args) for label in range(args.classes)
            for start in range(0, per_class, CHUNK)]


def _write_item(job) -> tuple[int, int]:
    """Render and write one work item; returns (images, bytes)."""
    root, args, (stream, folder, label, start, count) = job
    name = class_names(args.classes)[label]
    rng = numpy_rng(args.seed, "image-folder", VERSION, stream, label, start)
    pixels = render(class_family(args.seed, label), count, args.size, rng)
    total = 0
    for i, image in enumerate(pixels):
        data = jpeg_bytes(image, args.quality)
        (Path(root) / folder / name / _file_name(name, start + i)).write_bytes(data)
        total += len(data)
    return count, total


def _write_corrupt(root: Path, args: Args) -> list[str]:
    """K unreadable files spread over the train classes: truncated JPEGs, garbage, empty files."""
    names, written = class_names(args.classes), []
    for k in range(args.corrupt):
        rng = numpy_rng(args.seed, "image-folder-corrupt", k)
        name = names[k % args.classes]
        kind = ("truncated", "garbage", "empty")[k % 3]
        if kind == "truncated":
            good = jpeg_bytes(render(class_family(args.seed, k % args.classes), 1, args.size, rng)[0], args.quality)
            data = good[: len(good) // 2]
        elif kind == "garbage":
            data = rng.integers(0, 256, int(rng.integers(64, 2048)), dtype=np.uint8).tobytes()
        else:
            data = b""
        rel = Path("train") / name / f"{name}_corrupt{k:04d}.jpg"
        (root / rel).write_bytes(data)
        written.append(str(rel))
    return written


class _Progress:
    """One progress line on stderr: rewritten in place on a terminal, every 10 % otherwise."""

    def __init__(self, total: int):
        self.total, self.done, self.start = total, 0, time.perf_counter()
        self.tty, self.last, self.next_pct = sys.stderr.isatty(), 0.0, 10

    def add(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        pct = 100 * self.done / self.total
        if self.tty and now - self.last < 0.5 and self.done < self.total:
            return
        if not self.tty and pct < self.next_pct:
            return
        self.last, self.next_pct = now, (int(pct) // 10 + 1) * 10
        rate = self.done / max(now - self.start, 1e-9)
        eta = (self.total - self.done) / max(rate, 1e-9)
        line = f"{self.done}/{self.total} images ({pct:.0f}%), {rate:.0f} images/s, eta {eta:.0f} s"
        sys.stderr.write(("\r" + line) if self.tty else line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def check_args(args: Args, workers: int) -> None:
    checks = [(args.classes >= 1, "--classes must be at least 1"),
              (args.train_per_class >= 1, "--train-per-class must be at least 1"),
              (args.test_per_class >= 0, "--test-per-class must be 0 or more"),
              (8 <= args.size <= 4096, "--size must be between 8 and 4096 pixels"),
              (1 <= args.quality <= 95, "--quality must be between 1 and 95 (PIL's JPEG scale)"),
              (args.corrupt >= 0, "--corrupt must be 0 or more"), (workers >= 1, "--workers must be at least 1")]
    for ok, message in checks:
        if not ok:
            raise InvalidInput(message, "see --help")


def _marker(root: Path) -> dict | None:
    try:
        data = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def _prepare(out: Path, args: Args, overwrite: bool) -> bool:
    """Decide what to do with an existing OUT: False when it already holds this exact output."""
    if out.exists():
        found = _marker(out)
        if found is None:
            raise OutputExists(f"{out} exists and was not written by this script (no {MARKER})",
                               "choose another --out; this script only replaces folders it wrote")
        if found.get("args") == asdict(args) and found.get("version") == VERSION and not overwrite:
            return False
        if not overwrite:
            raise OutputExists(f"{out} holds a generated folder with other arguments or of another version "
                               f"({found.get('args')}, version {found.get('version')})",
                               "pass --overwrite to replace it, or choose another --out")
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        print(f"removing {partial} left by an interrupted run", file=sys.stderr)
        shutil.rmtree(partial)
    return True


def generate(out: str | os.PathLike, args: Args, workers: int = 1, overwrite: bool = False) -> dict:
    """Write the folder; returns the marker record (plus wall time and rate, which are not stored)."""
    check_args(args, workers)
    out = Path(out).expanduser().resolve()
    if not _prepare(out, args, overwrite):
        print(f"{out} is already complete with these arguments; nothing to do", file=sys.stderr)
        return _marker(out)
    partial = out.with_name(out.name + ".partial")
    names = class_names(args.classes)
    items = work_items(args)
    for _, folder, _ in splits(args):
        for name in names:
            (partial / folder / name).mkdir(parents=True, exist_ok=True)
    write_class_map(partial, names)
    total = sum(item[4] for item in items)
    progress, nbytes, start = _Progress(total), 0, time.perf_counter()
    jobs = [(str(partial), args, item) for item in items]
    if workers == 1:
        results = map(_write_item, jobs)
        for count, size in results:
            progress.add(count)
            nbytes += size
    else:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for count, size in pool.imap_unordered(_write_item, jobs, chunksize=1):
                progress.add(count)
                nbytes += size
    progress.close()
    corrupt = _write_corrupt(partial, args)
    wall = time.perf_counter() - start
    per_split = {folder: args.classes * per_class for _, folder, per_class in splits(args)}
    record = {"format": FORMAT, "version": VERSION, "args": asdict(args), "class_map": CLASS_MAP,
              "images": per_split, "corrupt": corrupt,
              "command": "python scripts/make_image_folder.py " + " ".join(_cli_args(args))}
    (partial / MARKER).write_text(json.dumps(record, indent=1) + "\n")  # last: marks the folder complete
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
    return {**record, "wall_s": wall, "images_per_s": total / max(wall, 1e-9), "bytes": nbytes}


def _cli_args(args: Args) -> list[str]:
    out = [f"--classes {args.classes}", f"--train-per-class {args.train_per_class}",
           f"--test-per-class {args.test_per_class}", f"--size {args.size}", f"--seed {args.seed}",
           f"--quality {args.quality}"]
    return out + ([f"--corrupt {args.corrupt}"] if args.corrupt else []) + (["--pool-only"] if args.pool_only else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="output folder (created; must not exist unless ours)")
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=50, help="ignored with --pool-only")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (RGB, square)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality (1-95)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    parser.add_argument("--corrupt", type=int, default=0, metavar="K", help="also write K unreadable files into train/")
    parser.add_argument("--pool-only", action="store_true",
                        help="train/ only, from the pool stream (for `ddkit pool build --from imagefolder:OUT@train`)")
    parser.add_argument("--overwrite", action="store_true", help="replace an OUT this script wrote earlier")
    ns = parser.parse_args(argv)
    args = Args(ns.classes, ns.train_per_class, 0 if ns.pool_only else ns.test_per_class, ns.size, ns.seed, ns.quality,
                ns.corrupt, ns.pool_only)
    try:
        result = generate(ns.out, args, workers=ns.workers, overwrite=ns.overwrite)
    except DdkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{k}: {v}" for k, v in result["images"].items())
    line = f"wrote {ns.out} ({counts} images"
    if "wall_s" in result:
        line += f", {result['bytes'] / 2**20:.1f} MiB; {result['wall_s']:.1f} s, {result['images_per_s']:.0f} images/s " \
                f"with {ns.workers} workers"
    print(line + (f"; {len(result['corrupt'])} corrupt files" if result["corrupt"] else "") + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
