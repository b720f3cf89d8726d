"""The KD³ student as a registered model: a student backbone, the SimKD-style projector into the
teacher's feature space, and a classifier shaped like the teacher's (whose weights KD³ copies from
the teacher and freezes).

Registered as `kd3-student`, so a trained KD³ student is saved as an ordinary teacher file (arch +
constructor args in the JSON header) and `ddkit teacher eval` / `ddkit evaluate --teacher` rebuild
it with no KD³ code path: `features` = P(F_S), pooling = GAP, `classifier` = (W_T, b_T).
"""

from __future__ import annotations

from torch import nn

from ddkit.models import MODELS, create_model
from ddkit.models.base import ImageClassifier


def projector(in_channels: int, out_channels: int, bottleneck: int = 2) -> nn.Sequential:
    """1×1 conv → BN → ReLU → 3×3 conv → BN → ReLU → 1×1 conv → BN → ReLU (width out/bottleneck)."""
    mid = max(1, out_channels // bottleneck)
    return nn.Sequential(
        nn.Conv2d(in_channels, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
        nn.Conv2d(mid, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
        nn.Conv2d(mid, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
    )


class KD3Student(ImageClassifier):
    """backbone (a registered model's body) → projector → GAP → linear classifier (teacher-shaped)."""

    def __init__(self, backbone: ImageClassifier, backbone_channels: int, teacher_channels: int, num_classes: int, bottleneck: int):
        super().__init__()
        self.body = nn.Sequential(backbone.body, projector(backbone_channels, teacher_channels, bottleneck))
        self.pooling = "avg"
        self.classifier = nn.Linear(teacher_channels, num_classes)

    @property
    def backbone(self) -> nn.Module:
        return self.body[0]

    @property
    def projector(self) -> nn.Module:
        return self.body[1]


def _map_channels(model: ImageClassifier, in_channels: int, image_size: int) -> int:
    import torch

    was = model.training
    model.eval()
    with torch.no_grad():
        c = model.body(torch.zeros(1, in_channels, image_size, image_size)).shape[1]
    model.train(was)
    return int(c)


@MODELS.register("kd3-student", summary="KD³ student: a registered backbone + projector to the teacher's channels + "
                                        "teacher-shaped linear head", teacher=True)
def kd3_student(in_channels, image_size, num_classes, student="resnet8", width=16, teacher_channels=64, bottleneck=2):
    if student == "kd3-student":
        raise ValueError("the KD³ student's backbone cannot itself be a kd3-student")
    kwargs = {"width": width}
    backbone = create_model(student, in_channels, image_size, num_classes, **kwargs)
    channels = _map_channels(backbone, in_channels, image_size)
    return KD3Student(backbone, channels, int(teacher_channels), num_classes, int(bottleneck))
