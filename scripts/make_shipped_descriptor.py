"""Make the copy descriptor shipped in ddkit (`ddkit/contamination/weights/fashion-mnist.safetensors`).

Without `--trained` this is `ddkit contamination calibrate fashion-mnist --seed 0 --out OUT`: the
descriptor is learned on the Fashion-MNIST train split with the default `FitConfig` (seed 0; about
2 h on one core of this machine) and calibrated on held-out train images. With `--trained STATE`
(a safetensors file of the trained float32 network, the output of `train_descriptor` for that same
split and config) the training is skipped and only the calibration runs, which is how the shipped
file was made: see docs/contamination.md ("Where the weights live") for the run it came from. The
shipped network itself, as float32, is such a STATE (its weights are float16 values; rounding them
again changes nothing): that is how its calibrations are remade when a detector version is added.

    nice -n 10 env OMP_NUM_THREADS=1 python scripts/make_shipped_descriptor.py --trained STATE --out OUT
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from safetensors.torch import load_file

from ddkit.contamination.descriptor import CopyNet, DescriptorArch
from ddkit.contamination.fit import FitConfig
from ddkit.contamination.weights import fit_dataset, save_descriptor
from ddkit.data import load_dataset

DATASET = "fashion-mnist"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--trained", default=None, help="the trained float32 network (safetensors); default: train now")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the thread count the recorded run used (results depend on it)
    train = load_dataset(DATASET, "train")
    config = FitConfig()
    trained = None
    command = f"ddkit contamination calibrate {DATASET} --seed {config.seed}"
    if args.trained:
        trained = CopyNet(DescriptorArch.for_images(train.info.image_shape, config.width, config.dim))
        trained.load_state_dict(load_file(args.trained))
        command = (f"{command}, its training step run earlier (docs/contamination.md); calibrated by "
                   f"python scripts/make_shipped_descriptor.py --trained {args.trained.rsplit('/', 1)[-1]}")
    found = fit_dataset(train, config, command=command, trained=trained)
    save_descriptor(args.out, found, overwrite=args.overwrite)
    print(json.dumps({"1": found.header.calibration, **found.header.calibrations}, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
