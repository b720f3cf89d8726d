"""The ConvNet of the dataset-distillation literature (DC/DSA/DM/MTT): `depth` blocks of
conv3×3(width) → norm → ReLU → avg-pool 2, then a linear classifier on the flattened map."""

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
    ):
        super().__init__()
        if image_size >> depth < 1:
            raise ValueError(f"image size {image_size} is too small for a depth-{depth} ConvNet")
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(depth):
            layers += [
                nn.Conv2d(channels, width, 3, padding=1, bias=norm != "batch"),
                make_norm(norm, width),
                nn.ReLU(inplace=True),
                nn.AvgPool2d(2),
            ]
            channels = width
        self.body = nn.Sequential(*layers)
        self.pooling = pooling
        side = image_size >> depth
        self.classifier = nn.Linear(width * side * side if pooling == "flatten" else width, num_classes)
