"""A small MobileNetV2-style net for small images: inverted residual blocks (expand 1×1,
depthwise 3×3, project 1×1) with BatchNorm — a teacher of a different shape from ConvNet/ResNet."""

from __future__ import annotations

from torch import nn

from ddkit.models.base import ImageClassifier, make_norm


def _conv_norm_act(cin, cout, kernel, stride, groups, norm, act=True):
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), make_norm(norm, cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return layers


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int, norm: str):
        super().__init__()
        hidden = cin * expand
        layers = []
        if expand != 1:
            layers += _conv_norm_act(cin, hidden, 1, 1, 1, norm)
        layers += _conv_norm_act(hidden, hidden, 3, stride, hidden, norm)
        layers += _conv_norm_act(hidden, cout, 1, 1, 1, norm, act=False)
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        out = self.block(x)
        return x + out if self.residual else out


class MobileNet(ImageClassifier):
    # (expansion, output channels as a multiple of `width`, repeats, first stride)
    STAGES = ((1, 1, 1, 1), (4, 2, 2, 2), (4, 4, 2, 2), (4, 8, 2, 1))

    def __init__(self, in_channels: int, image_size: int, num_classes: int, width: int = 16, norm: str = "batch", head: int = 256):
        super().__init__()
        layers: list[nn.Module] = list(_conv_norm_act(in_channels, width, 3, 1, 1, norm))
        cin = width
        for expand, mult, repeats, stride in self.STAGES:
            for i in range(repeats):
                layers.append(InvertedResidual(cin, width * mult, stride if i == 0 else 1, expand, norm))
                cin = width * mult
        layers += _conv_norm_act(cin, head, 1, 1, 1, norm)
        self.body = nn.Sequential(*layers)
        self.pooling = "avg"
        self.classifier = nn.Linear(head, num_classes)
