"""All registries in one place, for `ddkit list` and for tests parametrized over them."""

from __future__ import annotations


def all_registries() -> dict:
    from ddkit.augment import AUGMENTATIONS, MIXES
    from ddkit.data import DATASETS
    from ddkit.evaluate.protocols import PROTOCOLS
    from ddkit.models import MODELS
    from ddkit.selectors import SELECTORS
    from ddkit.synth import SYNTHESIZERS

    return {"models": MODELS, "datasets": DATASETS, "synthesizers": SYNTHESIZERS, "selectors": SELECTORS, "protocols": PROTOCOLS,
            "augmentations": AUGMENTATIONS, "mixes": MIXES}
