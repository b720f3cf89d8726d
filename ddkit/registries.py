"""All registries in one place, for `ddkit list` and for tests parametrized over them."""

from __future__ import annotations


def all_registries() -> dict:
    """Every registry by the name `ddkit list` prints it under."""
    from ddkit.augment import AUGMENTATIONS, MIXES
    from ddkit.contamination.detectors import DETECTORS
    from ddkit.contamination.perturb import PERTURBATIONS
    from ddkit.data import DATASETS
    from ddkit.dbr import VIEW_RECIPES
    from ddkit.evaluate.labels import STORED_LOSSES
    from ddkit.evaluate.protocols import PROTOCOLS
    from ddkit.evaluate.sources import BASELINE_PAYLOADS
    from ddkit.models import MODELS
    from ddkit.selectors import SELECTORS
    from ddkit.selectors.acquisition import RULES
    from ddkit.share import EXPORTERS, IMPORTERS
    from ddkit.store import PAYLOADS
    from ddkit.synth import SYNTHESIZERS

    return {"models": MODELS, "datasets": DATASETS, "synthesizers": SYNTHESIZERS, "selectors": SELECTORS,
            "protocols": PROTOCOLS, "acquisition-rules": RULES, "label-payloads": PAYLOADS,
            "stored-label-losses": STORED_LOSSES, "baseline-payloads": BASELINE_PAYLOADS, "view-recipes": VIEW_RECIPES,
            "augmentations": AUGMENTATIONS, "mixes": MIXES, "export-formats": EXPORTERS, "import-formats": IMPORTERS,
            "perturbations": PERTURBATIONS, "contamination-detectors": DETECTORS}
