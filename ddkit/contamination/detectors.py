"""The contamination detectors by name: `ddkit validate --against ... --detector NAME`,
`ddkit pool dedup --detector NAME`, `ddkit list`.

Every detector is built the same way, `make_detector(name, references, dataset, device)`, and
answers the same two calls: `match(queries, exclude=None) -> Matches` and `version` (the string a
recorded check names it by). `within_images` finds near-duplicates inside one set with the
detector's own search.
"""

from __future__ import annotations

import numpy as np

from ddkit.contamination.detector import Detector, DetectorConfig, within
from ddkit.errors import InvalidInput
from ddkit.registry import Registry

DETECTORS = Registry("contamination detector")
# The default is descriptor-2: on the benchmark (BENCHMARKS.md `contamination`, Fashion-MNIST test copies) it
# finds ≥ 97.7% of every edit with 0.98% of 60k clean images flagged, at ~6× the pixel-align detector's
# images per CPU second, and its threshold is calibrated on each dataset's own train split.
DEFAULT = "descriptor-2"


@DETECTORS.register("pixel-align-1", "pixels registered onto candidates from a canonical-frame FAISS search; "
                    "threshold in contamination/calibration.json (fashion-mnist)")
def _pixel_align(references, dataset: str | None = None, device=None, threshold: float | None = None):
    return Detector(references, DetectorConfig(threshold=threshold), device)


def _descriptor(version: str):
    def make(references, dataset: str | None = None, device=None, threshold: float | None = None):
        from ddkit.contamination.learned import DescriptorDetector, DescriptorDetectorConfig
        from ddkit.contamination.weights import descriptor_for

        if dataset is None:
            raise InvalidInput("the descriptor detector needs the dataset its references come from",
                               "pass the dataset's name (its descriptor is shipped, cached or learned from its train "
                               "split)")
        return DescriptorDetector(references, DescriptorDetectorConfig(threshold=threshold, version=version), device,
                                  descriptor=descriptor_for(dataset))

    return make


DETECTORS.register("descriptor-2", "a small ConvNet descriptor learned on the dataset's train split (perturbation "
                   "suite as views), references also indexed under fixed rotations and crops, FAISS search; shipped "
                   "for fashion-mnist, else learned once and cached")(_descriptor("2"))
DETECTORS.register("descriptor-1", "descriptor-2's network with references and their mirror images only, and a "
                   "stronger crowding term (kept to reproduce earlier checks)")(_descriptor("1"))


def make_detector(name: str | None, references, dataset: str | None = None, device=None, threshold=None):
    """The detector `name` (default `DEFAULT`) over uint8 `references` of registered `dataset`."""
    return DETECTORS.create(name or DEFAULT, references, dataset, device, threshold)


def within_images(detector, images) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Near-duplicates inside uint8 `images` with the search of `detector` (a built one: its
    settings, weights and threshold): (group, keep, score) per row."""
    from ddkit.contamination.descriptor import embed
    from ddkit.contamination.learned import DescriptorDetector, within_vectors

    if isinstance(detector, DescriptorDetector):
        images, vectors, _, crowding = detector.queries(images)
        return within_vectors(vectors, embed(detector.net, images, mirror=True), crowding, detector)
    return within(images, detector.config, detector.device)
