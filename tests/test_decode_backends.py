"""Decode backends of image folders: torchvision (in workers, or bytes read in workers and a batch
decoded by the consumer) gives the PIL path's samples; the GPU path is chosen or refused clearly.

The nvjpeg path itself needs a GPU: scripts/gpu_check.py (stage `decode`) runs it. Here the same
code runs with the consumer's device "cpu", which is what differs on a GPU is only the device.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from helpers import run_cli
from PIL import Image

from ddkit.data import batch_decode, load_dataset
from ddkit.data.batch_decode import DecodePlan, decode_plan, jpeg_frame
from ddkit.data.decode import FolderFit, _resize_center_crop, fit_tensor, gray_from_rgb
from ddkit.data.imagefolder import write_class_map
from ddkit.data.stream import _ReadRows, iter_batches, read_rows
from ddkit.errors import InvalidInput

CLASSES = ["zebra", "apple"]
SIZES = [(40, 30), (30, 40), (36, 36), (50, 28)]  # (width, height): landscape, portrait, square, wide


def _photo(rng, width: int, height: int, channels: int, level: int) -> np.ndarray:
    """A smooth image with texture (what a JPEG encoder and a resize meet in photos), H×W(×C)."""
    coarse = rng.integers(0, 256, (height // 6 + 2, width // 6 + 2, 3)).astype(np.uint8)
    x = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int64)
    x = np.clip((x + level) // 2 + rng.integers(-25, 25, x.shape), 0, 255).astype(np.uint8)
    return x[..., 0] if channels == 1 else x


def _encode(pixels, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    (pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)).save(buf, fmt, **kw)
    return buf.getvalue()


def _folder(root, sizes, channels: int = 3, fit: dict | None = None, extras: bool = True):
    """train/test JPEG folder (quality 85) with, per class, a progressive JPEG, a PNG and (with a fit, which
    sets the channels) a grey JPEG in an RGB folder or an RGB one in a grey folder when `extras`: every
    routing of the torchvision path."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 5), ("test", 2)):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                w, h = sizes[i % len(sizes)]
                (folder / f"{i:03d}.jpg").write_bytes(_encode(_photo(rng, w, h, channels, 60 + 80 * c), "JPEG",
                                                              quality=85))
            if extras:
                w, h = sizes[0]
                (folder / "p.jpg").write_bytes(_encode(_photo(rng, w, h, channels, 90), "JPEG", progressive=True))
                if fit:
                    (folder / "q.jpg").write_bytes(_encode(_photo(rng, w, h, 4 - channels, 90), "JPEG"))
                (folder / "r.png").write_bytes(_encode(_photo(rng, w, h, channels, 90), "PNG"))
    write_class_map(root, CLASSES)
    if fit:
        (root / "ddkit-folder.json").write_text(json.dumps(fit))
    return root


def _load(root, split, monkeypatch, backend, mode="memory"):
    monkeypatch.setenv("DDKIT_DECODE", backend)
    monkeypatch.setenv("DDKIT_DATA_MODE", mode)
    return load_dataset(f"imagefolder:{root}", split)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DDKIT_CACHE", str(tmp_path / "cache"))


def _assert_close(a: torch.Tensor, b: torch.Tensor, exact: bool, most: int = 2, share: float = 0.05) -> None:
    """Exact, or within the resize's rounding (`decode.fit_tensor`): at most `most`/255 per pixel, on at
    most a `share` of them (CPU's uint8 resize: 2, under 1% measured; float32: 1, about 20%)."""
    assert a.shape == b.shape and a.dtype == b.dtype == torch.uint8
    d = (a.int() - b.int()).abs()
    if exact:
        assert torch.equal(a, b)
    else:
        assert d.max() <= most and (d > 0).float().mean() <= share


@pytest.mark.parametrize("channels,fit,exact", [
    (3, None, True),  # decode only: libjpeg-turbo both ways
    (3, {"image_size": 24, "resize": 28}, False),  # resize + crop
    (1, {"image_size": 24, "resize": 28, "channels": 1}, False),  # grey: PIL's luma, then the fit
    (3, {"image_size": 28, "resize": 28}, True),  # crop only (the shorter sides are 28 after a no-op resize)
])
def test_torchvision_backend_gives_the_pil_samples(tmp_path, monkeypatch, channels, fit, exact):
    sizes = [(28, 28), (36, 28), (28, 40)] if fit and fit["resize"] == 28 else SIZES if fit else [(32, 24)]
    root = _folder(tmp_path / "f", sizes, channels, fit)
    for split in ("train", "test"):
        pil = _load(root, split, monkeypatch, "pil")
        tv = _load(root, split, monkeypatch, "torchvision")
        assert pil.info == tv.info and pil.images.shape == (len(pil), channels, *pil.info.image_shape[1:])
        assert torch.equal(pil.labels, tv.labels) and torch.equal(pil.ids, tv.ids)
        assert pil.fingerprint() == tv.fingerprint()
        _assert_close(tv.images, pil.images, exact)
        streamed = _load(root, split, monkeypatch, "torchvision", mode="stream")
        assert streamed.fingerprint() == pil.fingerprint()
        got = torch.cat([b.x for b in iter_batches(streamed, batch_size=4, raw=True, workers=0)])
        assert torch.equal(got, tv.images)  # one torchvision decode, however the read was made


def test_byte_reading_workers_and_batch_decode_give_the_pil_batches(tmp_path, monkeypatch):
    root = _folder(tmp_path / "f", SIZES, 3, {"image_size": 24, "resize": 26})
    ds = _load(root, "train", monkeypatch, "pil", mode="stream")
    reader = ds.reader
    order = np.random.default_rng(1).permutation(len(ds))
    batches = [order[i:i + 5] for i in range(0, len(order), 5)]
    rows, encoded = _ReadRows(reader, encoded=True)[batches[0]]  # what a worker sends on the GPU path: bytes
    assert [e.dtype for e in encoded] == [torch.uint8] * 5 and all(e.ndim == 1 for e in encoded)
    assert bytes(encoded[0].numpy()) == (root / str(reader.paths[rows[0]])).read_bytes()
    pil = list(read_rows(reader, batches, workers=2, plan=DecodePlan("pil")))
    in_workers = list(read_rows(reader, batches, workers=2, plan=DecodePlan("torchvision")))
    batched = list(read_rows(reader, batches, workers=2, plan=DecodePlan("torchvision", torch.device("cpu"))))
    assert [len(b) for b in batched] == [len(b) for b in batches] == [len(b) for b in pil]
    for p, w, b in zip(pil, in_workers, batched, strict=True):
        assert torch.equal(w, b)
        _assert_close(b, p, exact=False)


def test_fit_tensor_is_pil_fit_within_rounding_on_one_geometry():
    rng = np.random.default_rng(2)
    for (w, h), fit in [((40, 30), FolderFit(3, 24, 28)), ((30, 50), FolderFit(3, 16, 16)),
                        ((20, 20), FolderFit(3, 24, 30)), ((28, 36), FolderFit(3, 28, 28))]:
        px = _photo(rng, w, h, 3, 100)
        pil = torch.from_numpy(np.array(_resize_center_crop(Image.fromarray(px), fit))).permute(2, 0, 1).contiguous()
        x = torch.from_numpy(px).permute(2, 0, 1).contiguous()
        out = fit_tensor(x, fit)
        _assert_close(out, pil, exact=min(w, h) == fit.resize)
        assert torch.equal(fit_tensor(torch.stack([x, x]), fit), torch.stack([out, out]))  # batched = per image
        # the float32 resize a CUDA device runs, here on the CPU
        _assert_close(fit_tensor(x, fit, torch.float32), pil, exact=min(w, h) == fit.resize, most=1, share=0.4)
    rgb = rng.integers(0, 256, (9, 7, 3)).astype(np.uint8)
    expect = torch.from_numpy(np.asarray(Image.fromarray(rgb).convert("L")))[None]
    assert torch.equal(gray_from_rgb(torch.from_numpy(rgb).permute(2, 0, 1)), expect)


def test_jpeg_frames_route_only_what_torchvision_decodes_like_pil():
    px = np.zeros((12, 20, 3), np.uint8)
    assert jpeg_frame(_encode(px, "JPEG")) == (0xC0, 3, 12, 20)
    assert jpeg_frame(_encode(px, "JPEG", progressive=True)) == (0xC2, 3, 12, 20)
    assert jpeg_frame(_encode(px[..., 0], "JPEG"))[1] == 1
    cmyk = _encode(Image.new("CMYK", (20, 12)), "JPEG")
    assert jpeg_frame(cmyk)[1] == 4 and not batch_decode._torchvision_decodes(np.frombuffer(cmyk, np.uint8))
    for other in (_encode(px, "PNG"), b"", b"\xff\xd8\xff", b"\xff\xd8garbage" * 4, _encode(px, "JPEG")[:20]):
        assert jpeg_frame(other) is None


def test_the_gpu_path_is_chosen_only_where_it_decodes_and_refused_clearly(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(batch_decode, "_PROBES", {})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for choice, expect in (("auto", DecodePlan("pil")), ("pil", DecodePlan("pil")),
                           ("torchvision", DecodePlan("torchvision"))):
        monkeypatch.setenv("DDKIT_DECODE", choice)
        assert decode_plan("cpu") == expect and decode_plan(None) == expect
        if choice != "torchvision":
            assert decode_plan("cuda") == expect  # no GPU decode: the CPU plan
    monkeypatch.setenv("DDKIT_DECODE", "nvjpeg")
    with pytest.raises(InvalidInput, match="no CUDA device") as err:
        decode_plan("cpu")
    assert "--decode auto" in err.value.fix
    monkeypatch.setenv("DDKIT_DECODE", "fast")
    with pytest.raises(InvalidInput, match="DDKIT_DECODE='fast'"):
        decode_plan()
    monkeypatch.setattr(batch_decode, "_PROBES", {"cuda": ""})  # as on a GPU where torchvision decodes
    for choice in ("auto", "torchvision", "nvjpeg"):
        monkeypatch.setenv("DDKIT_DECODE", choice)
        assert decode_plan("cuda") == DecodePlan("torchvision", torch.device("cuda"))
    monkeypatch.setenv("DDKIT_DECODE", "auto")
    assert decode_plan("cpu") == DecodePlan("pil")

    monkeypatch.setattr(batch_decode, "_PROBES", {})
    root = _folder(tmp_path / "f", [(16, 12)], extras=False)
    out = tmp_path / "r.ddk.h5"
    monkeypatch.setenv("DDKIT_DECODE", "auto")  # restored after the test: the CLI sets it
    code, _, stderr = run_cli(capsys, "--decode", "nvjpeg", "synthesize", "--dataset", f"imagefolder:{root}",
                              "--ipc", 1, "--out", out)
    assert code != 0 and "nvjpeg" in stderr and "fix: use --decode auto" in stderr and not out.exists()
