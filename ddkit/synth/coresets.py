"""Coreset baselines written as distilled sets: real images chosen in a feature space, class by class.

- `herding` (Welling, "Herding dynamical weights to learn", ICML 2009; the iCaRL form): per class, add
  greedily the image whose inclusion brings the mean of the chosen features closest to the class mean.
- `kcenter` (Sener & Savarese, "Active learning for CNNs: a core-set approach", ICLR 2018): per class,
  greedy farthest-point selection from a seeded first point, with `ddkit.index.kcenter`.

The feature space is a teacher's embedding (the classifier's input) when a teacher is given, otherwise
that of a randomly initialised network (`net`, seeded); the file's config says which. A distilled set
must beat these, not only random real images, at the same budget (DESIGN §5).

Each class is one work item: its images are embedded in a streamed pass (`iter_batches`), its
coreset chosen, and only the chosen positions kept, so memory holds one class's features whatever
the source's size; under torchrun each rank embeds only its classes, and a killed run resumes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from ddkit import index
from ddkit.data.base import ImageDataset, per_class_positions
from ddkit.data.stream import iter_batches
from ddkit.errors import InvalidInput
from ddkit.models import create_model, parse_model_options
from ddkit.seeding import derive_seed
from ddkit.store import DistilledSet
from ddkit.synth.base import Synthesizer, pick_real, register_synthesizer, say
from ddkit.workitems import WorkItemStore


@dataclass
class CoresetConfig:
    features: str = "auto"  # auto (teacher if given, else random) | teacher | random
    net: str = "convnet"  # the random network, when features are random
    net_options: str = "depth=3,width=32,norm=instance"  # the CPU protocols' student
    batch_size: int = 1024  # images per forward pass when embedding the source


@torch.no_grad()
def embed_source(model, source: ImageDataset, positions, batch_size: int, device) -> torch.Tensor:
    """The classifier-input features of the images at `positions` of `source`, in eval mode, float32 on
    the CPU; one pass in batches, streamed when the source is."""
    model.eval()
    out = [model.pool(model.features(b.x)).float().cpu()
           for b in iter_batches(source, batch_size, positions, device=device)]
    return torch.cat(out)


def herding(features: torch.Tensor, budget: int) -> np.ndarray:
    """Positions of `budget` rows chosen greedily so the running mean of the chosen rows tracks the mean
    of all rows: step k picks argmin_i ‖μ − (S + x_i)/k‖ over rows not yet chosen (S = chosen sum)."""
    if not 0 <= budget <= len(features):
        raise InvalidInput(f"herding budget {budget} is outside [0, {len(features)}]")
    x = features.double()
    target = x.mean(0)
    chosen_sum = torch.zeros_like(target)
    taken = torch.zeros(len(x), dtype=torch.bool)
    picks = []
    for k in range(1, budget + 1):
        gap = ((k * target - chosen_sum)[None, :] - x).square().sum(1)  # k²‖μ − (S + x_i)/k‖²
        gap[taken] = float("inf")
        pick = int(torch.argmin(gap))
        picks.append(pick)
        taken[pick] = True
        chosen_sum += x[pick]
    return np.asarray(picks, dtype=np.int64)


class Coreset(Synthesizer):
    """Shared flow of the coreset baselines: embed the source, choose per class, store the real images."""

    Config = CoresetConfig
    max_teachers = 1

    def choose(self, features: torch.Tensor, budget: int, seed: int, device=None) -> np.ndarray:
        """`budget` positions among `features` (one class's); `device`: the run's, for index work."""
        raise NotImplementedError

    def synthesize(self, source, teachers, ipc, config: CoresetConfig, seed, device, workdir=None):
        self.check_teachers(teachers)
        info = source.info
        space = config.features if config.features != "auto" else ("teacher" if teachers else "random")
        if space not in ("teacher", "random"):
            raise InvalidInput(f"{self.name}: features must be auto, teacher or random, got {config.features!r}")
        if space == "teacher" and not teachers:
            raise InvalidInput(f"{self.name}: features=teacher needs a teacher",
                               "pass --teacher T, or use features=random")
        if space == "teacher":
            header = teachers[0].header
            model, described = teachers[0].model, f"teacher {header.arch} ({header.tensors_sha256[:12]})"
        else:
            kwargs = parse_model_options(config.net_options)
            model = create_model(config.net, info.image_shape[0], info.image_shape[1], info.num_classes,
                                 seed=derive_seed(seed, self.name, "random-features"), **kwargs).to(device)
            described = f"randomly initialised {config.net}({config.net_options}), seed {seed}"
        per_class = per_class_positions(source, ipc)
        store = WorkItemStore(workdir, {
            "method": self.name, "method_version": self.version, "config": dataclasses.asdict(config), "seed": seed,
            "ipc": ipc, "dataset": info.name, "source_ids_sha256": source.ids_sha256(), "feature_space": described,
            "teacher": teachers[0].header.tensors_sha256 if space == "teacher" else None,
        })
        say(f"{self.name}: embedding {len(source)} images, class by class, in the feature space of a {described}")

        def compute(key: str) -> dict[str, np.ndarray]:
            c = int(key[5:])
            rows = per_class[c].numpy()
            features = embed_source(model, source, rows, config.batch_size, device)
            return {"picks": rows[self.choose(features, ipc, derive_seed(seed, self.name, c), device)],
                    "feature_dim": np.array([features.shape[1]])}

        keys = [f"class{c:05d}" for c in range(len(per_class))]
        items = store.run(keys, compute, desc=f"{self.name} classes")
        picked = pick_real(source, np.concatenate([items[key]["picks"] for key in keys]))
        return DistilledSet.from_source(
            source, method=self.name, method_version=self.version,
            config={**dataclasses.asdict(config), "features_resolved": space, "feature_space": described,
                    "feature_dim": int(items[keys[0]]["feature_dim"][0]), "source_ids": picked.ids.tolist()},
            seed=seed, images=picked.images, labels=picked.labels, ipc=ipc,
            teachers=[t.header.summary() for t in teachers],
        )


@register_synthesizer
class Herding(Coreset):
    """Herding coreset (Welling 2009): per class, real images whose feature mean tracks the class mean."""

    name = "herding"
    version = "1"

    def choose(self, features, budget, seed, device=None):
        return herding(features, budget)


@register_synthesizer
class KCenter(Coreset):
    """k-center coreset (Sener & Savarese 2018): per class, greedy farthest points in feature space."""

    name = "kcenter"
    version = "1"

    def choose(self, features, budget, seed, device=None):
        return index.kcenter(features.numpy().astype(np.float32), budget, seed=seed % (2**31), device=device).indices
