"""The detector over datasets, in memory or streamed: the passes `pool dedup` and `validate --against` make.

Queries are matched block by block as `iter_batches` reads them (decoded ahead in workers for a
streamed dataset), and an in-memory dataset goes through the same blocks, so both paths give the
same matches. The references (a test split, or the set itself for `within`) are read once into an
uncompressed row file (`numpy.memmap`) when they stream, from which the detector reads the
candidates it verifies: memory holds the candidate vectors, never the pixels.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import numpy as np

from ddkit.contamination.detector import Matches, as_uint8
from ddkit.contamination.detectors import make_detector, within_images
from ddkit.contamination.rows import QUERY_BLOCK, pixel_rows
from ddkit.data.base import ImageDataset
from ddkit.data.stream import iter_batches


def match_dataset(detector, dataset: ImageDataset, positions=None) -> Matches:
    """`detector.match` of the dataset's images (or of its `positions`, in that order), block by block."""
    found = [detector.match(as_uint8(b.x))
             for b in iter_batches(dataset, QUERY_BLOCK, positions, normalized=False, raw=True)]
    if not found:
        return detector.match(np.zeros((0, *detector.shape), np.uint8))
    fields = ("flagged", "exact", "score", "reference", "flipped")
    kept = [None if found[0].vectors is None else np.concatenate([getattr(m, f) for m in found])
            for f in ("vectors", "crowding")]
    return Matches(*(np.concatenate([getattr(m, f) for m in found]) for f in fields), found[0].version, *kept)


@contextlib.contextmanager
def reference_detector(dataset: ImageDataset, detector: str | None = None, workdir: str | Path | None = None,
                       device=None, threshold: float | None = None) -> Iterator:
    """The detector `detector` (a registered name; default `detectors.DEFAULT`) over every image of
    `dataset` (a streamed one read once into a row file); its descriptor, if it learns one, is
    the one of `dataset`'s own name; `device`: the run's, for the search."""
    with pixel_rows(dataset, np.arange(len(dataset)), workdir) as images:
        yield make_detector(detector, images, dataset.info.name, device, threshold)


def within_dataset(dataset: ImageDataset, positions: np.ndarray, detector, workdir: str | Path | None = None,
                   vectors: np.ndarray | None = None,
                   crowding: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Near-duplicates among the images at `positions` (group, keep, score per position), with the
    search and threshold of a built `detector`. The descriptor detector streams the images through
    its network (`vectors`, `crowding`: theirs, when a match already computed them) and never
    writes a row file."""
    from ddkit.contamination.descriptor import embed
    from ddkit.contamination.learned import DescriptorDetector, within_vectors

    positions = np.asarray(positions, np.int64)
    if isinstance(detector, DescriptorDetector):
        mirrors, computed, crowds = [], [], []
        for b in iter_batches(dataset, QUERY_BLOCK, positions, normalized=False, raw=True):
            x = as_uint8(b.x)
            mirrors.append(embed(detector.net, x, mirror=True))
            if vectors is None:
                _, v, _, c = detector.queries(x)
                computed.append(v)
                crowds.append(c)
        empty = np.zeros((0, detector.net.arch.dim), np.float32)
        mirrors = np.concatenate(mirrors) if mirrors else empty
        if vectors is None:
            vectors = np.concatenate(computed) if computed else empty
            crowding = np.concatenate(crowds) if crowds else np.zeros(0)
        return within_vectors(vectors, mirrors, crowding, detector)
    with pixel_rows(dataset, positions, workdir) as images:
        return within_images(detector, images)
