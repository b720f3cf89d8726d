"""Shared pytest fixtures."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest

# Caches the tests write (image-folder manifests, reference accuracies) go to a throwaway folder, never
# to the user's ~/.cache/ddkit; tests that need their own set DDKIT_CACHE themselves.
os.environ.setdefault("DDKIT_CACHE", tempfile.mkdtemp(prefix="ddkit-test-cache-"))


def write_imagefolder(root, class_names, per_split=None, size=(8, 8), mode="RGB", seed=0):
    """Write a small PATH/{train,test}/<class>/NNN.png tree (no classes.json) and return `root`.

    Each class gets a distinct mean brightness so the data is learnable and checkable.
    """
    from PIL import Image

    per_split = per_split or {"train": 6, "test": 3}
    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    for split, n in per_split.items():
        for c, name in enumerate(class_names):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = 40 + 60 * c
                px = np.clip(rng.normal(base, 20, (size[1], size[0], channels)), 0, 255).astype(np.uint8)
                Image.fromarray(px[..., 0] if channels == 1 else px, mode).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def make_imagefolder():
    """The `write_imagefolder(root, class_names, per_split, size, mode, seed)` helper."""
    return write_imagefolder


@pytest.fixture(scope="session")
def imagefolder_root(tmp_path_factory):
    """A tiny RGB imagefolder dataset with classes.json ["zebra", "apple", "mango"] (not sorted order)."""
    from ddkit.data.imagefolder import write_class_map

    root = write_imagefolder(tmp_path_factory.mktemp("imagefolder"), ["zebra", "apple", "mango"])
    write_class_map(root, ["zebra", "apple", "mango"])
    return root


@pytest.fixture
def quiet(monkeypatch, tmp_path):
    """No progress lines, and a cache of the test's own (`pytestmark = pytest.mark.usefixtures("quiet")`)."""
    monkeypatch.setenv("DDKIT_PROGRESS", "0")
    monkeypatch.setenv("DDKIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def source(request):
    """The train split of the test module's `DATASET` (default "procedural"): generated, never downloaded."""
    from ddkit.data import load_dataset

    return load_dataset(getattr(request.module, "DATASET", "procedural"), "train")
