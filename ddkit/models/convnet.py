"""The ConvNet of the dataset-distillation literature (DC/DSA/DM/MTT): `depth` blocks of
conv3×3(width) → norm → ReLU → avg-pool 2, then a linear classifier on the flattened map.

`stem_padding` is the first convolution's zero padding. The DC/DSA/DM/MTT code pads a 28-px
single-channel image by 3 there, so MNIST-like data runs at 32 px (a 4×4 final map, as for CIFAR);
the published Fashion-MNIST tables use that network, and `hard-paper@2` asks for it (`stem_padding=3`).
The default of 1 keeps the input size (a 3×3 final map at 28 px)."""

from __future__ import annotations

from torch import nn

from ddkit.models.base import ImageClassifier, make_norm


class ConvNet(ImageClassifier):
    def __init__(
        self,
        in_channels: int,
        image_size: int,
        num_classes: int,
        depth: int = 3,
        width: int = 128,
        norm: str = "instance",
        pooling: str = "flatten",
        stem_padding: int = 1,
    ):
        super().__init__()
        if not isinstance(stem_padding, int) or isinstance(stem_padding, bool) or not 0 <= stem_padding <= 8:
            raise ValueError(f"stem_padding must be an integer in [0, 8], got {stem_padding!r}")
        stem_size = image_size + 2 * stem_padding - 2  # after the first 3×3 convolution
        if stem_size >> depth < 1:
            raise ValueError(f"image size {image_size} is too small for a depth-{depth} ConvNet")
        layers: list[nn.Module] = []
        channels = in_channels
        for block in range(depth):
            layers += [
                nn.Conv2d(channels, width, 3, padding=stem_padding if block == 0 else 1, bias=norm != "batch"),
                make_norm(norm, width),
                nn.ReLU(inplace=True),
                nn.AvgPool2d(2),
            ]
            channels = width
        self.body = nn.Sequential(*layers)
        self.pooling = pooling
        side = stem_size >> depth
        self.classifier = nn.Linear(width * side * side if pooling == "flatten" else width, num_classes)
