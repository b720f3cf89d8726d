"""The BN-statistics loss against a hand computation, on every registered BN model."""

import pytest
import torch
from helpers import tiny_model_options
from torch import nn

from ddkit.models import MODELS, create_model
from ddkit.synth.bn_stats import BNStatisticsLoss


def test_hand_computation_two_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3)).eval()
    for bn in (model[1], model[4]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(4, 1, 5, 5)
    with BNStatisticsLoss(model, first_layer_weight=10.0) as hook:
        model(x)
        got = hook.loss()
    a1 = model[0](x)
    a2 = model[3](model[2](model[1](a1)))

    def r(a, bn):
        mean = a.permute(1, 0, 2, 3).reshape(a.shape[1], -1).mean(1)
        var = ((a.permute(1, 0, 2, 3).reshape(a.shape[1], -1) - mean[:, None]) ** 2).mean(1)
        return ((bn.running_var - var) ** 2).sum().sqrt() + ((bn.running_mean - mean) ** 2).sum().sqrt()

    torch.testing.assert_close(got, 10 * r(a1, model[1]) + r(a2, model[4]))
    assert not model[1]._forward_hooks, "hooks are removed on exit"


@pytest.mark.parametrize("name", MODELS.names(teacher=True))
def test_every_bn_model_is_hooked_without_model_code(name):
    model = create_model(name, 1, 16, 10, **tiny_model_options(name)).eval()
    x = torch.rand(2, 1, 16, 16, requires_grad=True)
    with BNStatisticsLoss(model) as hook:
        model(x)
        loss = hook.loss()
    loss.backward()
    assert loss.item() > 0 and x.grad is not None and x.grad.abs().sum() > 0
    assert len(hook.layers) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_model_without_bn_is_refused():
    with pytest.raises(ValueError, match="no BatchNorm"):
        BNStatisticsLoss(create_model("convnet", 1, 16, 10, width=8))


@pytest.mark.parametrize("name,builder,layers", [("tv-resnet18", "resnet18", 20), ("tv-mobilenet-v2", "mobilenet_v2", 52),
                                                 ("tv-efficientnet-b0", "efficientnet_b0", 49)])
def test_torchvision_teacher_bn_layers_are_the_ones_hooked(name, builder, layers):
    """INFER's and NRR-DD's hooks sit on every BatchNorm of a torchvision net loaded from a torchvision
    state dict (the stem's first), and read its loaded running statistics."""
    import torchvision

    torch.manual_seed(0)
    reference = getattr(torchvision.models, builder)(weights=None, num_classes=4)
    for m in reference.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    model = create_model(name, 3, 32, 4)
    model.load_state_dict(reference.state_dict(), strict=True)
    model.eval()
    with BNStatisticsLoss(model) as hook:
        model(torch.rand(2, 3, 32, 32))
        distances = hook.per_layer()
    ref_bns = [m for m in reference.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(hook.layers) == len(ref_bns) == layers
    for ours, theirs in zip(hook.layers, ref_bns):
        assert torch.equal(ours.running_mean, theirs.running_mean) and torch.equal(ours.running_var, theirs.running_var)
    assert all(d.item() > 0 for d in distances)
    assert hook.layers[0] is model.net.bn1 if name == "tv-resnet18" else hook.layers[0] is model.net.features[0][1]
