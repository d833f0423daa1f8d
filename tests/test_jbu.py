"""Joint bilateral upsampling: keeps a step that bilinear upsampling blurs, equals Gaussian upsampling on a flat
guide, any scale factor."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from liftkit.lift.jbu import jbu


def _step(h=4, w=6, edge=3):
    """Features 0 left of column ``edge`` and 1 from it on; the guide image has the same step at the same place."""
    f = torch.zeros(1, 1, h, w)
    f[..., edge:] = 1.0
    guide = torch.zeros(1, 3, 8 * h, 8 * w)
    guide[..., 8 * edge:] = 1.0
    return f, guide


def test_step_is_kept_where_bilinear_blurs_it():
    f, guide = _step()
    out = jbu(f, guide, (8, 12), sigma_spatial=1.0, sigma_range=0.1)
    bil = F.interpolate(f, size=(8, 12), mode="bilinear", align_corners=False)
    # output columns 5 and 6 straddle the edge (low-res column 3 starts at output column 6)
    assert bil[0, 0, 0, 5].item() == pytest.approx(0.25) and bil[0, 0, 0, 6].item() == pytest.approx(0.75)
    # the colour difference is 1 per channel, so a neighbour across the edge weighs exp(-3 / 0.02) ~ 1e-65: exact
    assert out[0, 0, :, :6].abs().max().item() < 1e-30  # (the anti-aliased guide leaks a hair at the edge)
    assert out[0, 0, :, 6:].min().item() == 1.0


def test_flat_guide_equals_gaussian_weighted_upsampling():
    torch.manual_seed(0)
    f = torch.randn(2, 3, 5, 4)
    guide = torch.full((2, 3, 40, 32), 0.5)
    out = jbu(f, guide, (10, 8), sigma_spatial=0.8, sigma_range=0.1, radius=2)
    # reference: explicit Gaussian weights of the 4 x 4 neighbourhood with clamped borders, output cell (3, 6)
    uy, ux = (3 + 0.5) * 5 / 10 - 0.5, (6 + 0.5) * 4 / 8 - 0.5
    num, den = torch.zeros(2, 3), 0.0
    for qy in range(math.floor(uy) - 1, math.floor(uy) + 3):
        for qx in range(math.floor(ux) - 1, math.floor(ux) + 3):
            wgt = math.exp(-((uy - qy) ** 2 + (ux - qx) ** 2) / (2 * 0.8 ** 2))
            num += wgt * f[:, :, min(max(qy, 0), 4), min(max(qx, 0), 3)]
            den += wgt
    assert torch.allclose(out[:, :, 3, 6], num / den, atol=1e-6)
    # and equal to the purely spatial variant everywhere
    assert torch.allclose(out, jbu(f, guide, (10, 8), 0.8, float("inf"), radius=2), atol=1e-6)


def test_any_scale_and_bad_sigmas():
    f, guide = torch.randn(1, 4, 3, 5), torch.rand(1, 3, 42, 70)
    assert jbu(f, guide, (7, 11)).shape == (1, 4, 7, 11)
    assert jbu(f, guide, (12, 20)).shape == (1, 4, 12, 20)
    with pytest.raises(ValueError, match="positive"):
        jbu(f, guide, (6, 10), sigma_spatial=0)
