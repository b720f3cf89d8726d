"""Calibrate the `pixel-align-1` contamination detector's threshold on a dataset's TRAIN split only, and write it
(with the suite's seed) to ddkit/contamination/calibration.json.

References: `--references` train images; copies: `--per-kind` of them under every perturbation of
the suite (ddkit.contamination.perturb); distinct images: `--negatives` other train images. The
threshold is the largest score at which at most `--clean-rate` of the distinct images are flagged
(train images are not guaranteed distinct: Fashion-MNIST has near-duplicates inside its train
split, which is why the target is below the 1% goal). Test images are never read. (`descriptor-1` is
calibrated by `ddkit contamination calibrate DATASET`, with the same `ddkit.contamination.fit.calibrate`.)

    OMP_NUM_THREADS=1 nice -n 5 python scripts/calibrate_contamination.py
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from ddkit.contamination.detector import CALIBRATION_FILE, NAME, VERSION, Detector, DetectorConfig
from ddkit.contamination.fit import calibrate
from ddkit.data import load_dataset
from ddkit.seeding import numpy_rng


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--references", type=int, default=10000)
    parser.add_argument("--negatives", type=int, default=10000)
    parser.add_argument("--per-kind", type=int, default=500)
    parser.add_argument("--clean-rate", type=float, default=0.0075)
    parser.add_argument("--out", default=str(CALIBRATION_FILE))
    args = parser.parse_args()

    train = load_dataset(args.dataset, "train")
    images = train.images.numpy()
    if images.dtype != np.uint8:
        images = (images.clip(0, 1) * 255).round().astype(np.uint8)
    order = numpy_rng(args.seed, "calibration", "order").permutation(len(images))
    refs = images[order[: args.references]]
    negatives = images[order[args.references : args.references + args.negatives]]

    def make(references, threshold):
        return Detector(references, DetectorConfig(threshold=threshold))

    cal = calibrate(make, refs, negatives, args.clean_rate, args.per_kind, args.seed)
    record = {
        "detector": f"{NAME}-{VERSION}", "dataset": args.dataset, "split": "train", "seed": args.seed,
        "threshold": round(cal.threshold, 6), "target_clean_rate": args.clean_rate, "clean_rate": cal.clean_rate,
        "references": len(refs), "negatives": len(negatives), "copies_per_kind": cal.copies_per_kind,
        "recall": cal.recall, "seconds_per_10k_queries": cal.seconds_per_10k_queries,
        "command": "OMP_NUM_THREADS=1 python scripts/calibrate_contamination.py",
    }
    with open(args.out, "w") as fh:
        json.dump(record, fh, indent=2)
        fh.write("\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
