"""Seeds derived from (root seed, item id) only, never from the clock or the global RNG.

A work item's seed must not depend on which rank or in which order it runs, so synthesis sharded
over any number of processes reproduces the single-process result.
"""

from __future__ import annotations

import contextlib
import hashlib

import numpy as np
import torch


def derive_seed(root: int, *parts) -> int:
    """A 63-bit seed that depends only on `root` and the item's identifying parts."""
    text = "/".join([str(int(root))] + [str(p) for p in parts])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def generator(root: int, *parts, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator seeded with `derive_seed(root, *parts)`."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(root, *parts))
    return g


def numpy_rng(root: int, *parts) -> np.random.Generator:
    return np.random.default_rng(derive_seed(root, *parts))


@contextlib.contextmanager
def seeded_global_rng(seed: int, device: str | torch.device = "cpu"):
    """Run the block with torch's global generator of `device` seeded with `seed`, and restore its
    state afterwards: for modules that draw from the global RNG and take no generator (torchvision's
    dropout and stochastic depth), so their draws depend on `seed` alone and nothing else is disturbed."""
    device = torch.device(device)
    if device.type == "cuda":
        gen = torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    else:
        gen = torch.default_generator
    state = gen.get_state()
    gen.manual_seed(int(seed))
    try:
        yield
    finally:
        gen.set_state(state)
