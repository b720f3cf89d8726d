#!/usr/bin/env python
"""Regenerate ddkit/data/assets/fashion_mnist_mini.h5 from the full Fashion-MNIST.

The full set is read through ddkit's `fashion-mnist` source (e.g. after
`apt-get install dataset-fashion-mnist`). The output is written atomically and is deterministic:
running this twice gives the same pixel bytes. Only pass options to make a non-default variant;
the command line is recorded in the file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ddkit.data import mini
from ddkit.errors import DdkitError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=mini.ASSET_PATH, help="output file (default: the packaged asset)")
    parser.add_argument("--seed", type=int, default=mini.SEED)
    parser.add_argument("--train-per-class", type=int, default=mini.PER_CLASS["train"])
    parser.add_argument("--test-per-class", type=int, default=mini.PER_CLASS["test"])
    args = parser.parse_args(argv)
    extra = sys.argv[1:] if argv is None else argv
    command = " ".join([mini.COMMAND, *extra])
    try:
        out = mini.build(args.out, seed=args.seed, command=command,
                         per_class={"train": args.train_per_class, "test": args.test_per_class})
    except DdkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
