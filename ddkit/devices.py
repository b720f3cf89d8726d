"""Device names as a user types them (`--device`, `$DDKIT_DEVICE`), checked without importing torch,
so a typo (`gpu`, `CUDA0`) fails at once with the accepted names instead of deep inside torch.

`training.pick_device` turns a checked name into a `torch.device` and checks that it exists.
"""

from __future__ import annotations

import difflib
import re

from ddkit.errors import InvalidInput

NAMES = ("auto", "cpu", "cuda", "mps")
ACCEPTED = "auto, cpu, cuda, cuda:N, mps"
_ALIASES = {"gpu": "cuda", "nvidia": "cuda", "cuda0": "cuda:0", "gpu0": "cuda:0"}


def parse_device(text: str, where: str = "--device") -> str:
    """The canonical spelling of a device name (lower case; `cuda:N`), or an error that names the
    accepted ones; `where` is how the user gave it (a flag or an environment variable)."""
    name = str(text).strip().lower()
    if name in NAMES or re.fullmatch(r"cuda:\d+", name):
        return name
    guess = _ALIASES.get(name) or next(iter(difflib.get_close_matches(name, NAMES, n=1)), None)
    hint = f" (did you mean {guess}?)" if guess else ""
    setting = f"{where}={guess or 'cpu'}" if where.startswith("$") else f"{where} {guess or 'cpu'}"
    raise InvalidInput(f"unknown device {text!r}{hint}; the accepted names are {ACCEPTED}",
                       f"use {setting} (accepted: {ACCEPTED})")
