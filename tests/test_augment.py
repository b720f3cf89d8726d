"""Augmentation: parameters come only from the given generator and replay the exact same view."""

import pytest
import torch

from ddkit.augment import AUGMENTATIONS, MIXES, RandomCropPad, RandomHorizontalFlip, _beta, build_augmentation

ALL = [build_augmentation(n) for n in AUGMENTATIONS] + [f() for f in MIXES.values() if f]


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
    cutmix = MIXES["cutmix"]()
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
