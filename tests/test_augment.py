"""Augmentation: parameters come only from the given generator and replay the exact same view."""

import pytest
import torch

from ddkit.augment import (
    AUGMENTATIONS,
    MIXES,
    RandomCropPad,
    RandomHorizontalFlip,
    _beta,
    build_augmentation,
    build_mix,
)

ALL = [build_augmentation(n) for n in AUGMENTATIONS] + [build_mix(n) for n in MIXES if n != "none"]


@pytest.mark.parametrize("transform", ALL, ids=repr)
def test_replay_and_seed_determinism(transform):
    x = torch.rand(6, 3, 16, 16)
    params = transform.sample(x.shape, torch.Generator().manual_seed(1))
    again = transform.sample(x.shape, torch.Generator().manual_seed(1))
    a, b = transform.apply(x, params), transform.apply(x, again)
    assert torch.equal(a, b) and a.shape == x.shape
    state = torch.random.get_rng_state()
    transform(x, torch.Generator().manual_seed(2))
    assert torch.equal(state, torch.random.get_rng_state()), "the global RNG must not be used"


def test_crop_pad_matches_hand_computation():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    out = RandomCropPad(1).apply(x, {"shift": torch.tensor([[0, 2]])})
    # shift (0, 2): one zero row on top, then columns 1..3 of the original plus one zero column.
    expected = torch.tensor([[0, 0, 0, 0], [1, 2, 3, 0], [5, 6, 7, 0], [9, 10, 11, 0.0]])
    assert torch.equal(out[0, 0], expected)


def test_flip_flips_only_selected():
    x = torch.rand(2, 1, 4, 4)
    out = RandomHorizontalFlip().apply(x, {"flip": torch.tensor([True, False])})
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1])


def test_cutmix_lambda_is_kept_area():
    x = torch.zeros(4, 1, 10, 10)
    x[1] = 1.0
    cutmix = build_mix("cutmix")
    params = cutmix.sample(x.shape, torch.Generator().manual_seed(0))
    out = cutmix.apply(x, params)
    y0, y1, x0, x1 = params["box"].tolist()
    assert float(params["lam"]) == pytest.approx(1 - (y1 - y0) * (x1 - x0) / 100)
    pasted = (out != x).flatten(1).any(1)
    assert pasted.sum() <= 4


def test_beta_sampler_moments():
    g = torch.Generator().manual_seed(0)
    draws = torch.tensor([float(_beta(0.8, g)) for _ in range(3000)])
    assert abs(draws.mean() - 0.5) < 0.03
    assert abs(draws.var() - 0.8 * 0.8 / (1.6**2 * 2.6)) < 0.01


# -- DSA ----------------------------------------------------------------------------------------
from ddkit.augment import DSA, RandomRotate, RandomScale, take_rows  # noqa: E402


def _one_group(dsa: DSA, name: str, params):
    """`params` with every row forced to group `name`."""
    params = dict(params)
    params["group"] = torch.full_like(params["group"], dsa.groups.index(name))
    return params


def test_dsa_siamese_rows_see_the_same_view():
    """Row i of the real and the synthetic batch of one unit get identical parameters: the same image
    put in both batches comes out identical, whichever group was drawn."""
    dsa = DSA()
    g = torch.Generator().manual_seed(0)
    real, syn = torch.rand(8, 1, 12, 12), torch.rand(3, 1, 12, 12)
    syn[1] = real[1]
    for name in dsa.groups:
        params = _one_group(dsa, name, dsa.sample((8, 1, 12, 12), g))
        a = dsa.apply(real, params)
        b = dsa.apply(syn, take_rows(params, torch.arange(3)))
        assert torch.allclose(a[1], b[1]), name


def test_dsa_units_draw_one_group_each_and_mixed_groups_apply_per_row():
    dsa = DSA()
    params = dsa.sample((12, 1, 8, 8), torch.Generator().manual_seed(3), units=4)
    group = params["group"].view(4, 3)
    assert (group == group[:, :1]).all()
    x = torch.rand(12, 1, 8, 8)
    mixed = dsa.apply(x, params)
    for row in range(12):  # each row equals applying its own group alone
        alone = _one_group(dsa, dsa.groups[int(params["group"][row])], take_rows(params, torch.tensor([row])))
        assert torch.allclose(mixed[row], dsa.apply(x[row:row + 1], alone)[0], atol=1e-6)


def test_dsa_ops_are_differentiable_wrt_pixels():
    dsa = DSA()
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    params = dsa.sample(x.shape, torch.Generator().manual_seed(0))
    for name in dsa.groups:
        x.grad = None
        dsa.apply(x, _one_group(dsa, name, params)).square().sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0, name


def test_dsa_strengths_match_the_published_ranges():
    dsa = DSA()
    p = dsa.sample((4000, 1, 28, 28), torch.Generator().manual_seed(0))
    assert 1 / 1.2 - 1e-6 <= float(p["scale"]["sx"].min()) and float(p["scale"]["sx"].max()) <= 1.2 + 1e-6
    assert float(p["rotate"]["angle"].abs().max()) <= 15.0
    assert abs(float(p["flip"]["flip"].float().mean()) - 0.5) < 0.03
    assert int(p["crop"]["shift"].max()) == 2 * 4  # translation up to int(0.125 * 28 + 0.5) = 4 pixels
    assert 0.0 <= float(p["color"]["saturation"].min()) and float(p["color"]["saturation"].max()) <= 2.0
    assert len(p["group"].unique()) == 1  # one unit: one group for the whole batch (DSA evaluation)


def test_rotate_and_scale_hand_cases():
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 4] = 1.0  # right of centre
    quarter = RandomRotate().apply(x, {"angle": torch.tensor([90.0])})
    assert torch.allclose(quarter, torch.rot90(x, 1, (2, 3)), atol=1e-5)  # anti-clockwise, as torch.rot90
    same = RandomScale().apply(x, {"sx": torch.tensor([1.0]), "sy": torch.tensor([1.0])})
    assert torch.allclose(same, x, atol=1e-6)
    shrunk = RandomScale().apply(x, {"sx": torch.tensor([2.0]), "sy": torch.tensor([2.0])})
    assert float(shrunk[0, 0, 2, 3]) == pytest.approx(1.0, abs=1e-5)  # a sampling grid ×2 halves distances


def test_dsa_rejects_unknown_groups():
    with pytest.raises(ValueError, match="unknown group"):
        DSA("color_warp")


def test_imagenet_crop_flip_at_224_samples_torchvision_ranges():
    """The ImageNet training view on 224-px images: same-size views, crop boxes inside the image with
    area 8–100% and aspect 3/4–4/3 (torchvision's RandomResizedCrop defaults), replayable."""
    view = build_augmentation("imagenet-crop-flip")
    x = torch.rand(64, 3, 224, 224)
    params = view.sample(x.shape, torch.Generator().manual_seed(0))
    box = params["steps"][0]["box"]
    w, h = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    assert (box[:, :2] >= 0).all() and (box[:, 2] <= 224).all() and (box[:, 3] <= 224).all()
    assert (w * h / 224**2).min() >= 0.08 - 1e-4 and (w * h / 224**2).max() <= 1 + 1e-4 and (w * h / 224**2).min() < 0.3
    assert ((w / h) >= 3 / 4 - 1e-4).all() and ((w / h) <= 4 / 3 + 1e-4).all()
    out = view.apply(x, params)
    assert out.shape == x.shape and torch.equal(out, view.apply(x, params))
