"""Honest baselines: what a distilled set must beat at the same budget."""

from __future__ import annotations

from ddkit.data.base import class_balanced_indices
from ddkit.store import DistilledSet
from ddkit.synth.base import Synthesizer, pick_real, register_synthesizer


@register_synthesizer
class RandomReal(Synthesizer):
    """Random real images, class-balanced and seeded, stored losslessly with hard labels."""

    name = "random-real"
    version = "1"

    def synthesize(self, source, teachers, ipc, config, seed, device, workdir=None):
        picked = pick_real(source, class_balanced_indices(source, ipc, seed))
        return DistilledSet.from_source(
            source, method=self.name, method_version=self.version, config={"source_ids": picked.ids.tolist()},
            seed=seed, images=picked.images, labels=picked.labels, ipc=ipc,
            teachers=[t.header.summary() for t in teachers],
        )
