"""Models by name, through one registry.

`create_model(name, in_channels, image_size, num_classes, **kwargs)`; every model is an
`ImageClassifier` (feature map, pooled features, linear classifier) and records how to rebuild
itself (`arch`, `arch_kwargs`) so a teacher file can be loaded without pickles.
"""

from __future__ import annotations

import inspect
import math

import torch

from ddkit.config import ACCEPTED
from ddkit.errors import InvalidInput
from ddkit.models.base import ImageClassifier, ModelOutput, has_batchnorm, make_norm
from ddkit.models.convnet import ConvNet
from ddkit.models.imagenet import EFFICIENTNET_B0, MOBILENET_V2, RESNET18, build_torchvision
from ddkit.models.mobilenet import MobileNet
from ddkit.models.resnet import cifar_resnet, resnet18_modified
from ddkit.registry import Registry
from ddkit.seeding import derive_seed

MODELS = Registry("model")


@MODELS.register("convnet", summary="DC-style ConvNet: depth × [conv3×3-norm-ReLU-avgpool], flatten, linear", teacher=False)
def convnet(in_channels, image_size, num_classes, depth=3, width=128, norm="instance", pooling="flatten", stem_padding=1):
    return ConvNet(in_channels, image_size, num_classes, depth, width, norm, pooling, stem_padding)


@MODELS.register("convnet-bn", summary="ConvNet with BatchNorm (a BN teacher for INFER/NRR-DD)", teacher=True)
def convnet_bn(in_channels, image_size, num_classes, depth=3, width=64, pooling="avg"):
    return ConvNet(in_channels, image_size, num_classes, depth, width, "batch", pooling)


@MODELS.register("resnet8", summary="CIFAR-style ResNet-8 (16-32-64), BatchNorm", teacher=True)
def resnet8(in_channels, image_size, num_classes, width=16, norm="batch"):
    return cifar_resnet(in_channels, image_size, num_classes, 8, width, norm)


@MODELS.register("resnet20", summary="CIFAR-style ResNet-20 (16-32-64), BatchNorm", teacher=True)
def resnet20(in_channels, image_size, num_classes, width=16, norm="batch"):
    return cifar_resnet(in_channels, image_size, num_classes, 20, width, norm)


@MODELS.register("resnet18", summary="ResNet-18 modified: 3×3 stride-1 stem, no max-pool, BatchNorm", teacher=True)
def resnet18(in_channels, image_size, num_classes, width=64, norm="batch"):
    return resnet18_modified(in_channels, image_size, num_classes, width, norm)


@MODELS.register("mobilenet", summary="small MobileNetV2-style net (inverted residuals), BatchNorm", teacher=True)
def mobilenet(in_channels, image_size, num_classes, width=16, norm="batch", head=256):
    return MobileNet(in_channels, image_size, num_classes, width, norm, head)


# torchvision's ImageNet nets (224 px in their papers, any size here), with torchvision's state-dict keys:
# a released checkpoint imports as is (`ddkit teacher import`). `resnet18`/`mobilenet` above are the
# small-image variants.
@MODELS.register("tv-resnet18", summary="torchvision ResNet-18 (ImageNet: 7×7 stride-2 stem + max-pool), its state-dict keys",
                 teacher=True)
def tv_resnet18(in_channels, image_size, num_classes):
    return build_torchvision(RESNET18, in_channels, num_classes)


@MODELS.register("tv-mobilenet-v2", summary="torchvision MobileNetV2 (ImageNet), its state-dict keys", teacher=True)
def tv_mobilenet_v2(in_channels, image_size, num_classes, width_mult=1.0, dropout=0.2):
    return build_torchvision(MOBILENET_V2, in_channels, num_classes, width_mult=width_mult, dropout=dropout)


@MODELS.register("tv-efficientnet-b0", summary="torchvision EfficientNet-B0 (ImageNet), its state-dict keys", teacher=True)
def tv_efficientnet_b0(in_channels, image_size, num_classes, dropout=0.2, stochastic_depth_prob=0.2):
    return build_torchvision(EFFICIENTNET_B0, in_channels, num_classes, dropout=dropout, stochastic_depth_prob=stochastic_depth_prob)


def create_model(name: str, in_channels: int, image_size: int, num_classes: int, seed: int | None = None, **kwargs) -> ImageClassifier:
    """Build a registered model; unknown keyword arguments are a clear error, not a TypeError.

    With `seed`, the initial weights depend only on it (the global RNG is left as it was), and so do the
    training-time draws of nets whose modules draw randomly (torchvision's dropout and stochastic depth,
    also inside a wrapper such as the KD³ student: `seed_randomness`).
    """
    factory = MODELS.get(name)
    params = inspect.signature(factory).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        allowed = [p for p in params if p not in ("in_channels", "image_size", "num_classes")]
        raise InvalidInput(f"model {name!r} has no option {', '.join(unknown)}", f"its options are: {', '.join(allowed)}")
    for key, value in kwargs.items():
        _check_option(name, key, value, params[key].default)
    try:
        if seed is None:
            model = factory(in_channels, image_size, num_classes, **kwargs)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive_seed(seed, "init", name))
                model = factory(in_channels, image_size, num_classes, **kwargs)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise InvalidInput(f"cannot build model {name!r} with {kwargs or 'its defaults'}: {exc}") from exc
    if seed is not None:
        for i, part in enumerate(m for m in model.modules() if hasattr(m, "seed_randomness")):
            part.seed_randomness(derive_seed(seed, "randomness", name, i))
    model.arch = name
    model.arch_kwargs = dict(kwargs)
    model.input_shape = (in_channels, image_size, image_size)
    model.num_classes = num_classes
    return model


def _check_option(model: str, key: str, value, default) -> None:
    """Refuse a constructor option whose type differs from its default's (width=abc, depth=2.5), and
    a non-positive size: the model would fail deep inside torch, or build something else."""
    if default is inspect.Parameter.empty or default is None:
        return
    kind = type(default)
    ok = (isinstance(value, bool) if kind is bool else
          isinstance(value, int) and not isinstance(value, bool) if kind is int else
          isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) if kind is float else
          isinstance(value, kind))
    if not ok:
        raise InvalidInput(f"model {model!r} option {key}={value!r} must be {kind.__name__} (like its default {default!r})",
                           f"give {key} {ACCEPTED.get(kind, 'a ' + kind.__name__)}, e.g. {key}={default}")
    if kind is int and default > 0 and value <= 0:  # sizes and counts
        raise InvalidInput(f"model {model!r} option {key}={value!r} must be positive", f"e.g. {key}={default}")


def parse_model_options(pairs) -> dict:
    """Turn CLI `key=value` strings (a list, or one comma-separated string) into keyword arguments
    (ints, floats, bools, strings)."""
    if isinstance(pairs, str):
        pairs = [p for p in pairs.split(",") if p.strip()]
    out = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep:
            raise InvalidInput(f"model option {pair!r} is not key=value", "write KEY=VALUE, e.g. width=32")
        for cast in (int, float):
            try:
                out[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[key] = {"true": True, "false": False}.get(value.lower(), value)
    return out


__all__ = ["MODELS", "ImageClassifier", "ModelOutput", "create_model", "has_batchnorm", "make_norm", "parse_model_options"]

from ddkit.models import kd3_student as _kd3_student  # noqa: E402,F401  (registers kd3-student)
