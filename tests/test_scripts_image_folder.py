"""scripts/make_image_folder.py: the generated layout, byte-for-byte determinism whatever the worker
count, that ddkit's `imagefolder:` loader reads it, corrupt files, and the complete-or-absent output."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddkit.data import load_dataset

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_image_folder.py"
SMALL = ["--classes", "3", "--train-per-class", "4", "--test-per-class", "2", "--size", "16", "--seed", "1"]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("make_image_folder", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and the worker processes look the module up by name
    spec.loader.exec_module(module)
    return module


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_determinism_and_loader(script, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert script.main([*SMALL, "--workers", "1", "--out", str(a)]) == 0
    assert script.main([*SMALL, "--workers", "2", "--out", str(b)]) == 0
    names = json.loads((a / "classes.json").read_text())
    assert len(names) == 3 and len(set(names)) == 3
    for split, per_class in (("train", 4), ("test", 2)):
        for name in names:
            files = sorted((a / split / name).iterdir())
            assert len(files) == per_class and all(f.suffix == ".jpg" for f in files)
            with Image.open(files[0]) as im:
                assert im.format == "JPEG" and im.size == (16, 16) and im.mode == "RGB"
    marker = json.loads((a / "generated.json").read_text())
    assert marker["images"] == {"train": 12, "test": 6} and marker["corrupt"] == []
    assert _files(a) == _files(b)  # same arguments, other worker count: the same bytes
    assert not (tmp_path / "a.partial").exists()

    train = load_dataset(f"imagefolder:{a}", "train")
    test = load_dataset(f"imagefolder:{a}", "test")
    assert tuple(train.images.shape) == (12, 3, 16, 16) and train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert len(test) == 6 and train.info.class_names == tuple(names)
    # the classes are told apart by their pixels: nearest class mean on the test split beats chance (1/3)
    x, y = train.images.float().flatten(1).numpy(), train.labels.numpy()
    means = np.stack([x[y == c].mean(0) for c in range(3)])
    xt = test.images.float().flatten(1).numpy()
    predicted = ((xt[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert (predicted == test.labels.numpy()).mean() >= 2 / 3


def test_other_seed_differs_and_pool_stream_is_not_the_train_split(script, tmp_path):
    assert script.main([*SMALL, "--workers", "1", "--out", str(tmp_path / "a")]) == 0
    other = [*SMALL[:-1], "2"]
    assert script.main([*other, "--workers", "1", "--out", str(tmp_path / "s2")]) == 0
    first = "train/c000-disk/c000-disk_000000.jpg"
    assert _files(tmp_path / "a")[first] != _files(tmp_path / "s2")[first]
    assert script.main([*SMALL, "--pool-only", "--workers", "1", "--out", str(tmp_path / "p")]) == 0
    assert not (tmp_path / "p" / "test").exists()
    pool = load_dataset(f"imagefolder:{tmp_path / 'p'}", "train")
    train = load_dataset(f"imagefolder:{tmp_path / 'a'}", "train")
    assert len(pool) == 12 and not np.array_equal(pool.images.numpy(), train.images.numpy())


def test_corrupt_files_are_unreadable_and_listed(script, tmp_path):
    out = tmp_path / "c"
    assert script.main([*SMALL, "--corrupt", "3", "--workers", "1", "--out", str(out)]) == 0
    listed = json.loads((out / "generated.json").read_text())["corrupt"]
    assert len(listed) == 3 and len({Path(p).parent for p in listed}) == 3  # spread over the classes
    for rel in listed:
        with pytest.raises(OSError):  # truncated, garbage, empty: PIL cannot decode any of them
            with Image.open(out / rel) as im:
                im.load()


def test_rerun_existing_and_interrupted_outputs(script, tmp_path, capsys):
    out = tmp_path / "f"
    assert script.main([*SMALL, "--workers", "1", "--out", str(out)]) == 0
    before = _files(out)
    assert script.main([*SMALL, "--workers", "1", "--out", str(out)]) == 0  # complete already: nothing done
    assert "nothing to do" in capsys.readouterr().err and _files(out) == before
    assert script.main([*SMALL[:-1], "2", "--workers", "1", "--out", str(out)]) == 2  # other args: refused
    assert "--overwrite" in capsys.readouterr().err and _files(out) == before
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    assert script.main([*SMALL, "--overwrite", "--out", str(foreign)]) == 2  # never replaces a folder it did not write
    assert (foreign / "keep.txt").exists()
    # an interrupted run leaves OUT.partial (and no OUT): the next run removes it and writes OUT whole
    partial = tmp_path / "g.partial"
    (partial / "train").mkdir(parents=True)
    (partial / "train" / "half.jpg").write_bytes(b"\xff\xd8")
    assert script.main([*SMALL, "--workers", "1", "--out", str(tmp_path / "g")]) == 0
    assert not partial.exists() and _files(tmp_path / "g") == before
    assert script.main([*SMALL, "--size", "4", "--out", str(tmp_path / "h")]) == 2  # bad input: one clear error
    assert "--size" in capsys.readouterr().err and not (tmp_path / "h").exists()
