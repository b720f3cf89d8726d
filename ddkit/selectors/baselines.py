"""Honest baselines for selectors."""

from __future__ import annotations

import numpy as np

from ddkit.data.base import class_balanced_indices
from ddkit.errors import InvalidInput
from ddkit.seeding import numpy_rng
from ddkit.selectors.base import RandomConfig, Selector, register_selector
from ddkit.store import Selection, pool_record


@register_selector
class RandomSelector(Selector):
    """Random samples, seeded: class-balanced (budget/C per class) or uniform over the pool."""

    name = "random"
    version = "1"
    Config = RandomConfig

    def select(self, pool, teachers, budget, config: RandomConfig, seed, device):
        self.check_budget(pool, budget)
        if config.balanced:
            if budget % pool.num_classes:
                raise InvalidInput(f"a class-balanced budget must be a multiple of {pool.num_classes} classes, got {budget}",
                                   "choose such a budget, or pass --config balanced=false for a uniform draw")
            positions = class_balanced_indices(pool, budget // pool.num_classes, seed, salt="random-selector")
        else:
            positions = np.sort(numpy_rng(seed, "random-selector-uniform", budget).choice(len(pool), budget, replace=False))
        return Selection(method=self.name, method_version=self.version, config=config, seed=seed,
                         pool=pool_record(pool), ids=pool.ids[positions].numpy(),
                         teachers=[t.header.summary() for t in teachers])
