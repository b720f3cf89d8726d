"""torchvision's ImageNet classifiers (ResNet-18, MobileNetV2, EfficientNet-B0) as ddkit models.

INFER, NRR-DD and the SRe2L line report their headline numbers with these teachers at 224 px, and
their released weights are plain torchvision state dicts. Each net is built by torchvision's own
constructor (`weights=None`: nothing is ever downloaded) and kept unchanged as `self.net`. The
wrapper adds the ddkit contract (`features` → global average pool → linear `classifier`, `body`,
CAM) and presents its state dict under torchvision's own key names (`conv1.weight`, `fc.weight`,
`features.0.0.weight`, …): a released checkpoint loads with `strict=True`, and a ddkit teacher's
tensors are a torchvision state dict again.

- `in_channels` other than 3 replaces the stem convolution (same kernel, stride and padding;
  torchvision's initialisation); only its weight's shape differs from torchvision's.
- Any image size works (the nets pool adaptively); at the 32× total stride the last feature map is
  1×1 at 32 px or less, 7×7 at the paper's 224 px.
- MobileNetV2's and EfficientNet-B0's heads keep their dropout (and EfficientNet its stochastic
  depth). torchvision's modules draw from torch's global RNG and take no generator, so the wrapper
  gives them a stream of their own: a model built with a seed (`create_model(..., seed=)`, as every
  trainer does) runs its i-th training-mode forward with the global generator of the input's device
  seeded with `derive_seed(seed, i)` and restored afterwards (`seeding.seeded_global_rng`). Two
  trainings from the same seed then give bit-identical weights whatever else uses the global RNG,
  and the global RNG is left as it was. A model built without a seed draws from the global RNG as
  torchvision's does; evaluation and ResNet-18 (nothing random) are unaffected.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from ddkit.models.base import ImageClassifier, ModelOutput
from ddkit.seeding import derive_seed, seeded_global_rng

_NET = "net."


@dataclass(frozen=True)
class TorchvisionArch:
    """Where a torchvision classifier splits into ddkit's parts."""

    builder: str  # the constructor in torchvision.models
    trunk: tuple[str, ...]  # the net's children that map an image to the last feature map, in order
    head: str  # the child applied to the pooled vector: a Linear, or Dropout + Linear


RESNET18 = TorchvisionArch("resnet18", ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"),
                           "fc")
MOBILENET_V2 = TorchvisionArch("mobilenet_v2", ("features",), "classifier")
EFFICIENTNET_B0 = TorchvisionArch("efficientnet_b0", ("features",), "classifier")


class TorchvisionClassifier(ImageClassifier):
    """A torchvision classifier under the `ImageClassifier` contract, with torchvision's state-dict keys."""

    def __init__(self, arch: TorchvisionArch, net: nn.Module, in_channels: int):
        super().__init__()
        self.arch_spec = arch
        self.net = net
        self.pooling = "avg"  # torchvision's AdaptiveAvgPool2d(1) + flatten
        if in_channels != 3:
            _replace_stem(net, in_channels)
        if not isinstance(self.classifier, nn.Linear):
            raise ValueError(f"torchvision {arch.builder}: head {arch.head!r} ends in no Linear layer")
        self.stochastic = any(_draws_randomly(m) for m in net.modules())
        self.randomness_seed: int | None = None  # see seed_randomness
        self._forwards = 0  # training-mode forwards drawn from the stream so far
        if hasattr(self, "register_state_dict_post_hook"):  # public in newer torch; the same hooks, private, before
            self.register_state_dict_post_hook(_drop_net_prefix)
            self.register_load_state_dict_pre_hook(_add_net_prefix)
        else:
            self._register_state_dict_hook(_drop_net_prefix)
            self._register_load_state_dict_pre_hook(_add_net_prefix, with_module=True)

    @property
    def body(self) -> nn.Module:  # type: ignore[override]  (a view of the trunk; `net` owns the modules)
        parts = [getattr(self.net, name) for name in self.arch_spec.trunk]
        return parts[0] if len(parts) == 1 else nn.Sequential(*parts)

    @property
    def head(self) -> nn.Module:
        return getattr(self.net, self.arch_spec.head)

    @property
    def classifier(self) -> nn.Linear:  # type: ignore[override]
        head = self.head
        return head if isinstance(head, nn.Linear) else [m for m in head.modules() if isinstance(m, nn.Linear)][-1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.arch_spec.trunk:
            x = getattr(self.net, name)(x)
        return x

    def seed_randomness(self, seed: int) -> None:
        """Draw dropout and stochastic depth from a stream of `seed` (see the module docstring), from its start."""
        self.randomness_seed = int(seed)
        self._forwards = 0

    def _randomness(self, x: torch.Tensor):
        """The context a forward runs in: the seeded stream's next draw when training a seeded net that draws."""
        if not (self.training and self.stochastic and self.randomness_seed is not None):
            return contextlib.nullcontext()
        self._forwards += 1
        return seeded_global_rng(derive_seed(self.randomness_seed, self._forwards), x.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self._randomness(x):
            return self.head(self.pool(self.features(x)))

    def forward_all(self, x: torch.Tensor) -> ModelOutput:
        with self._randomness(x):
            fmap = self.features(x)
            pooled = self.pool(fmap)
            return ModelOutput(self.head(pooled), pooled, fmap)  # the head's dropout too, as torchvision's forward


def build_torchvision(arch: TorchvisionArch, in_channels: int, num_classes: int, **options) -> TorchvisionClassifier:
    """torchvision's constructor with `weights=None` (never a download) and `options`, wrapped."""
    import torchvision.models

    net = getattr(torchvision.models, arch.builder)(weights=None, num_classes=num_classes, **options)
    return TorchvisionClassifier(arch, net, in_channels)


def _draws_randomly(module: nn.Module) -> bool:
    """A dropout or stochastic-depth module with a positive rate (they draw from the global RNG)."""
    from torchvision.ops import StochasticDepth

    return isinstance(module, (nn.modules.dropout._DropoutNd, StochasticDepth)) and float(module.p) > 0


def _replace_stem(net: nn.Module, in_channels: int) -> None:
    """Swap the first convolution for one taking `in_channels` (torchvision's conv initialisation)."""
    name, old = next((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d))
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, old.dilation,
                    old.groups, old.bias is not None)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    parent_name, _, child = name.rpartition(".")
    setattr(net.get_submodule(parent_name), child, new)


def _drop_net_prefix(module, state_dict, prefix, local_metadata) -> None:
    """state_dict post-hook: `PREFIXnet.conv1.weight` → `PREFIXconv1.weight`."""
    inner = prefix + _NET
    _move(state_dict, lambda key: prefix + key[len(inner):] if key.startswith(inner) else None)
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:  # per-module versions (BatchNorm's), keyed by module path
        wrapper, net = prefix[:-1], inner[:-1]
        _move(metadata, lambda key: wrapper if key == net else
              _join(wrapper, key[len(inner):]) if key.startswith(inner) else None)


def _add_net_prefix(module, state_dict, prefix, *unused) -> None:
    """load_state_dict pre-hook: torchvision's keys back under `net.` (keys already there stay). The
    caller's metadata is left alone: without it BatchNorm reads a checkpoint as unversioned, which
    only adds a missing `num_batches_tracked` (old torchvision releases lack it)."""
    inner = prefix + _NET
    _move(state_dict, lambda k: None if k.startswith(inner) or not k.startswith(prefix) else inner + k[len(prefix):])


def _join(path: str, rest: str) -> str:
    return f"{path}.{rest}" if path and rest else path or rest


def _move(mapping, target_of) -> None:
    for key in list(mapping):
        target = target_of(key)
        if target is not None and target != key:
            mapping[target] = mapping.pop(key)
