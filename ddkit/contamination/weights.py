"""Copy-descriptor weights files: safetensors plus a typed JSON header — never a pickle — and where
a dataset's descriptor is found.

The header says how to rebuild the network (`DescriptorArch`), what it learned from (dataset name,
the train split's fingerprint, the fit config with its seed), the calibrations made on held-out
train images, one per detector version (threshold, clean rate, recall per edit: `calibration` for
`descriptor-1`, `calibrations[V]` for the later ones), and the command that made it, plus a sha256
of the tensors. Tensors are stored as float16 (half the bytes); the network always runs the
rounded weights, calibration included, so the rounding is part of the calibrated detector.

A dataset's descriptor is, in order: a file shipped inside ddkit (`weights/`, listed in `SHIPPED`,
for Fashion-MNIST and its embedded subset), else one cached under `$DDKIT_CACHE/contamination/`
(default ~/.cache/ddkit) for this train split's fingerprint and fit config, else learned now
(`fit_dataset`, minutes on a CPU) and cached. `ddkit contamination calibrate DATASET` does the last step
ahead of time, or into a file of your choice.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import ddkit
from ddkit.contamination.descriptor import CopyNet, DescriptorArch
from ddkit.contamination.fit import Calibration, FitConfig, calibrate, holdout_split, train_descriptor
from ddkit.errors import DdkitError, FileFormatError, InvalidInput
from ddkit.fileio import atomic_output
from ddkit.models.teacher import tensors_sha256
from ddkit.provenance import utc_now
from ddkit.records import record_fields

FORMAT = "ddkit.copy-descriptor"
SCHEMA = 1
WEIGHTS_DIR = Path(__file__).with_name("weights")
SHIPPED = {"fashion-mnist": "fashion-mnist.safetensors", "fashion-mnist-mini": "fashion-mnist.safetensors"}
_MAX_HEADER_BYTES = 1 << 20
FIX = "learn it again: ddkit contamination calibrate DATASET"
# The detector versions a file is calibrated for (the keys of `learned.SCORINGS`, which this module does
# not import: `learned` stays free of `weights`; tests check the two agree), and the one `threshold` and
# summaries mean (`detectors.DEFAULT`).
DETECTOR_VERSIONS = ["1", "2"]
DETECTOR_VERSION = "2"


@dataclass
class DescriptorHeader:
    """What a descriptor file records (see the module docstring)."""

    arch: dict
    fit: dict
    dataset: str
    image_shape: list
    train_fingerprint: str
    calibration: dict  # descriptor-1's
    command: str = ""
    calibrations: dict = field(default_factory=dict)  # version -> calibration, for the versions after 1
    created: str = field(default_factory=utc_now)
    ddkit_version: str = ddkit.__version__
    tensors_sha256: str = ""
    format: str = FORMAT
    schema: int = SCHEMA

    @property
    def threshold(self) -> float:
        return float(self.calibration_of(DETECTOR_VERSION)["threshold"])

    def calibration_of(self, version: str) -> dict:
        """The calibration of detector version `version` (a clear error if this file has none)."""
        found = self.calibration if version == "1" else self.calibrations.get(version)
        if not isinstance(found, dict) or "threshold" not in found:
            raise FileFormatError(f"this copy descriptor ({self.dataset}) has no calibration for descriptor-{version}",
                                  FIX)
        return found

    def summary(self) -> str:
        return (f"learned on {self.dataset} train (seed {self.fit.get('seed')}), threshold {self.threshold:.4g}, "
                f"weights {self.tensors_sha256[:12]}")


@dataclass
class Descriptor:
    """A loaded descriptor: the network (eval mode), its header, and the background: descriptors of
    training images (float32 n×dim, as stored: int8 steps of 1/127) with the sha256 of each image's
    pixels (uint8 n×32), which the detector's score is normalized by (`learned.py`)."""

    net: CopyNet
    header: DescriptorHeader
    background: np.ndarray
    background_sha256: np.ndarray
    path: str = ""


BACKGROUND = ("background.vectors", "background.sha256")


def quantized(vectors: np.ndarray) -> np.ndarray:
    """Unit descriptors as stored in a file: int8 steps of 1/127, back as float32."""
    return (np.clip(np.round(np.asarray(vectors, np.float32) * 127), -127, 127) / 127).astype(np.float32)


def _state(net: CopyNet) -> dict[str, torch.Tensor]:
    return {k: (v.half() if v.is_floating_point() else v).detach().contiguous().clone()
            for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}


def rounded(net: CopyNet) -> CopyNet:
    """`net` with its weights as stored (float16, run as float32)."""
    out = CopyNet(net.arch)
    out.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in _state(net).items()}, strict=False)
    return out.to(memory_format=torch.channels_last).eval()


def save_descriptor(path: str | os.PathLike, descriptor: Descriptor, overwrite: bool = False) -> Path:
    """Write the weights (float16), the background (int8) and the header, atomically."""
    header = descriptor.header
    state = _state(descriptor.net)
    state[BACKGROUND[0]] = torch.from_numpy(np.round(descriptor.background * 127).astype(np.int8))
    state[BACKGROUND[1]] = torch.from_numpy(np.array(descriptor.background_sha256, np.uint8))  # a writable copy
    header.tensors_sha256 = tensors_sha256(state)
    text = json.dumps(asdict(header))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, overwrite) as tmp:
        save_file(state, str(tmp), metadata={"ddkit": text, "ddkit_sha256": hashlib.sha256(text.encode()).hexdigest()})
    return Path(path)


def load_descriptor(path: str | os.PathLike) -> Descriptor:
    """Read and check a descriptor file: header hash, format, schema, tensor names/shapes and hash."""
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"descriptor file {path} does not exist", FIX)
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = _parse_header(path, fh.metadata() or {})
            arch = DescriptorArch.from_dict(header.arch, f"{path}: arch")
            net = CopyNet(arch)
            expected = {k: tuple(v.shape) for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
            found = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
            vectors, hashes = (found.pop(name, ()) for name in BACKGROUND)
            if found != expected or len(vectors) != 2 or vectors[1] != arch.dim or tuple(hashes) != (vectors[0], 32):
                raise FileFormatError(f"{path}: its tensors do not match the architecture its header names",
                                      FIX)
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except DdkitError:
        raise
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise FileFormatError(f"{path} is not a readable descriptor file ({type(exc).__name__}: {exc})",
                              FIX) from None
    if tensors_sha256(state) != header.tensors_sha256:
        raise FileFormatError(f"{path}: the weights do not match their recorded sha256", FIX)
    vectors, hashes = (state.pop(name).numpy() for name in BACKGROUND)
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=False)
    return Descriptor(net.to(memory_format=torch.channels_last).eval(), header, vectors.astype(np.float32) / 127,
                      hashes, str(path))


def _parse_header(path: Path, meta: dict) -> DescriptorHeader:
    raw = meta.get("ddkit")
    if raw is None or len(raw) > _MAX_HEADER_BYTES:
        raise FileFormatError(f"{path} has no ddkit descriptor header", FIX)
    if hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest() != meta.get("ddkit_sha256"):
        raise FileFormatError(f"{path}: descriptor header hash mismatch — the header was modified or corrupted",
                              FIX)
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise FileFormatError(f"{path} is not a ddkit copy descriptor")
        if isinstance(data.get("schema"), int) and data["schema"] > SCHEMA:
            raise FileFormatError(f"{path} was written by a newer ddkit (descriptor schema {data['schema']})",
                                  "upgrade ddkit: pip install -U ddkit")
        header = DescriptorHeader(**record_fields(DescriptorHeader, data, "descriptor header"))
        later = header.calibrations
        if not isinstance(later, dict) or not all(isinstance(c, dict) for c in later.values()):
            raise InvalidInput("calibrations must map versions to calibrations")
        thresholds = [float(c["threshold"]) for c in (header.calibration, *later.values())]
        if not all(np.isfinite(thresholds)):  # negative is fine: the score is a distance minus a multiple of another
            raise InvalidInput(f"thresholds {thresholds}")
    except FileFormatError:
        raise
    except (InvalidInput, ValueError, TypeError, KeyError) as exc:
        raise FileFormatError(f"{path}: malformed descriptor header ({exc})", FIX) from None
    return header


# -- where a dataset's descriptor lives -------------------------------------------------------------
def cache_dir() -> Path:
    return Path(os.environ.get("DDKIT_CACHE") or Path.home() / ".cache" / "ddkit") / "contamination"


def cache_path(dataset: str, fingerprint: str, config: FitConfig) -> Path:
    """The cached file of a descriptor learned on a train split (its fingerprint) with `config`."""
    key = hashlib.sha256(json.dumps({"fingerprint": fingerprint, "fit": config.to_dict(), "schema": SCHEMA},
                                    sort_keys=True).encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", dataset)[-60:].strip("_") or "dataset"
    return cache_dir() / f"{slug}-{key}.safetensors"


def shipped_path(dataset: str) -> Path | None:
    name = SHIPPED.get(dataset)
    return WEIGHTS_DIR / name if name and (WEIGHTS_DIR / name).is_file() else None


def fit_dataset(train, config: FitConfig | None = None, command: str = "",
                trained: CopyNet | None = None) -> Descriptor:
    """Learn and calibrate a descriptor on `train` (an ImageDataset, its train split; a streamed one
    is read once into a temporary row file), see `ddkit.contamination.fit`. `trained`: a network
    already trained by `train_descriptor` on this split with `config` (float32), only calibrated here
    (how the shipped file was made, `scripts/make_shipped_descriptor.py`)."""
    from ddkit.contamination.descriptor import embed
    from ddkit.contamination.detector import pixel_hashes
    from ddkit.contamination.rows import pixel_rows

    config = config or FitConfig()
    with pixel_rows(train, np.arange(len(train))) as images:
        split = holdout_split(len(images), config.holdout, config.seed, config.background)
        net = rounded(trained if trained is not None else train_descriptor(images, config, positions=split.fit))
        header = DescriptorHeader(net.arch.to_dict(), config.to_dict(), train.info.name, list(images.shape[1:]),
                                  train.fingerprint(), {}, command)
        background = images[split.background]
        found = Descriptor(net, header, quantized(embed(net, background)),
                           np.frombuffer(b"".join(pixel_hashes(background)), np.uint8).reshape(-1, 32))

        calibrations = _calibrate(found, images, split, config, DETECTOR_VERSIONS)
    header.calibration = calibrations.pop("1")
    header.calibrations = calibrations
    return found


def add_calibrations(found: Descriptor, train, config: FitConfig) -> Descriptor:
    """`found` (learned on `train` with `config` before a later detector version existed) calibrated
    for the versions it lacks: same network, same held-out split; its own calibrations are kept."""
    from ddkit.contamination.rows import pixel_rows

    missing = [v for v in DETECTOR_VERSIONS if v != "1" and v not in found.header.calibrations]
    with pixel_rows(train, np.arange(len(train))) as images:
        split = holdout_split(len(images), config.holdout, config.seed, config.background)
        found.header.calibrations = {**found.header.calibrations,
                                     **_calibrate(found, images, split, config, missing)}
    return found


def _calibrate(found: Descriptor, images, split, config: FitConfig, versions: list[str]) -> dict:
    """Each detector version's calibration (`fit.calibrate`) on the split's held-out train images."""
    from ddkit.contamination.learned import DescriptorDetector, DescriptorDetectorConfig

    out = {}
    for version in versions:
        def make(references, threshold, version=version):
            return DescriptorDetector(references, DescriptorDetectorConfig(threshold=threshold, version=version),
                                      descriptor=found)

        cal: Calibration = calibrate(make, images[split.references], images[split.negatives], config.clean_rate,
                                     config.copies_per_kind, config.seed)
        out[version] = cal.to_dict()
    return out


def descriptor_for(dataset: str, config: FitConfig | None = None, learn: bool = True) -> Descriptor:
    """The descriptor of `dataset` (a registered name): shipped, cached, or learned now and cached
    (`learn`; else a clear error naming the command that learns it)."""
    from ddkit.data import load_dataset
    from ddkit.progress import say

    config = config or FitConfig()
    shipped = shipped_path(dataset)
    if shipped is not None and config == FitConfig():
        return load_descriptor(shipped)
    train = load_dataset(dataset, "train")
    path = cache_path(dataset, train.fingerprint(), config)
    if path.is_file():
        found = load_descriptor(path)
        if set(DETECTOR_VERSIONS) <= {"1", *found.header.calibrations}:
            return found
        # learned before a later detector version: its network stays, every version is calibrated again
        say(f"calibrating the cached copy descriptor of {dataset} for the detector versions it lacks ({path})")
        save_descriptor(path, add_calibrations(found, train, config), overwrite=True)
        return load_descriptor(path)
    if not learn:
        raise DdkitError(f"no copy descriptor for {dataset} yet",
                         f"learn one with `ddkit contamination calibrate {dataset}` (minutes on a CPU)")
    say(f"learning the copy descriptor of {dataset} on its train split ({len(train)} images; once, cached in {path})")
    found = fit_dataset(train, config, command=f"ddkit contamination calibrate {dataset} --seed {config.seed}")
    save_descriptor(path, found, overwrite=True)
    return load_descriptor(path)
