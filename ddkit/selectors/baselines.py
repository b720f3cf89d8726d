"""Honest baselines for selectors."""

from __future__ import annotations

import numpy as np

from ddkit.data.base import class_balanced_indices
from ddkit.errors import InvalidInput
from ddkit.seeding import numpy_rng
from ddkit.selectors.acquisition import class_balanced_rule, coreset_features_rule, entropy_rule, random_rule
from ddkit.selectors.active import ActiveSelector
from ddkit.selectors.base import RandomConfig, SelectionInputs, Selector, register_selector
from ddkit.store import Selection, pool_record


@register_selector
class RandomSelector(Selector):
    """Random samples, seeded: class-balanced (budget/C per class) or uniform over the pool."""

    name = "random"
    version = "1"
    Config = RandomConfig
    uses_inputs = True  # --labeled: one active-learning round, uniform over the unlabeled samples

    def select(self, pool, teachers, budget, config: RandomConfig, seed, device, inputs: SelectionInputs | None = None):
        if inputs is not None and inputs.given():
            round_config = _RandomRound.Config(distill=False)  # no student: uniform over the unlabeled samples
            return _RandomRound().select(pool, teachers, budget, round_config, seed, device, inputs)
        self.check_budget(pool, budget)
        if config.balanced:
            if budget % pool.num_classes:
                raise InvalidInput(f"a class-balanced budget must be a multiple of {pool.num_classes} classes, "
                                   f"got {budget}",
                                   "choose such a budget, or pass --config balanced=false for a uniform draw")
            positions = class_balanced_indices(pool, budget // pool.num_classes, seed, salt="random-selector")
        else:
            rng = numpy_rng(seed, "random-selector-uniform", budget)
            positions = np.sort(rng.choice(len(pool), budget, replace=False))
        return Selection(method=self.name, method_version=self.version, config=config, seed=seed,
                         pool=pool_record(pool), ids=pool.ids[positions].numpy(),
                         teachers=[t.header.summary() for t in teachers])


class _RandomRound(ActiveSelector):
    """`random --labeled L`: uniform over the pool's unlabeled samples (no student, no teacher)."""

    name = "random"
    rule = random_rule


@register_selector
class EntropySelector(ActiveSelector):
    """Highest entropy of the ActiveKD student's combined p(x) (one AL round)."""

    name = "entropy"
    rule = entropy_rule


@register_selector
class CoresetFeaturesSelector(ActiveSelector):
    """k-center on the ActiveKD student's L2-normalized features (one AL round)."""

    name = "coreset-features"
    rule = coreset_features_rule


@register_selector
class ClassBalancedSelector(ActiveSelector):
    """Fill the rarest labeled class by the student's predicted class, randomly (one AL round)."""

    name = "class-balanced"
    rule = class_balanced_rule
