"""Small-image ResNets: CIFAR-style ResNet-8/20 (16-32-64 channels) and ResNet-18 "modified"
(3×3 stride-1 stem, no max-pool), the student/teacher of the soft-label distillation papers."""

from __future__ import annotations

from torch import nn

from ddkit.models.base import ImageClassifier, make_norm


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = make_norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = make_norm(norm, cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), make_norm(norm, cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(ImageClassifier):
    def __init__(self, in_channels: int, num_classes: int, blocks: tuple[int, ...], widths: tuple[int, ...], norm: str):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            make_norm(norm, widths[0]),
            nn.ReLU(inplace=True),
        ]
        cin = widths[0]
        for stage, (n, width) in enumerate(zip(blocks, widths)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(BasicBlock(cin, width, stride, norm))
                cin = width
        self.body = nn.Sequential(*layers)
        self.pooling = "avg"
        self.classifier = nn.Linear(cin, num_classes)


def cifar_resnet(in_channels: int, image_size: int, num_classes: int, depth: int = 20, width: int = 16, norm: str = "batch") -> ResNet:
    """ResNet-(6n+2) of He et al. for 32-px images; depth 8 → n=1, depth 20 → n=3."""
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    n = (depth - 2) // 6
    return ResNet(in_channels, num_classes, (n, n, n), (width, 2 * width, 4 * width), norm)


def resnet18_modified(in_channels: int, image_size: int, num_classes: int, width: int = 64, norm: str = "batch") -> ResNet:
    """ResNet-18 with a 3×3 stride-1 stem and no max-pool (the small-image variant)."""
    return ResNet(in_channels, num_classes, (2, 2, 2, 2), (width, 2 * width, 4 * width, 8 * width), norm)
