"""The LiFT paper's FLOP convention reproduces its three figures for DINO ViT-S/16 on random weights (the count
depends on shapes only): 4.34 G at 224 px, 5.30 G with LiFT, 17.28 G at 448 px; true FLOPs stay separate."""

from __future__ import annotations

import pytest
import torch

from extractor import ViTExtractor
from liftkit.eval.flops import count_flops, facet_qkv_macs, paper_flops
from liftkit.lift.model import LiFT

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dino_s16():
    return ViTExtractor("dino_vits16", random_init=True, lift_path=None)


def _backbone(ext, size):
    x = torch.randn(1, 3, size, size)
    macs = paper_flops(lambda: ext.model.forward_final(x), (ext.model,))
    tokens = (size // 16) ** 2 + 1
    return macs + facet_qkv_macs(tokens, 384, "key")


def test_paper_figures_for_dino_vits16(dino_s16):
    low, big = _backbone(dino_s16, 224), _backbone(dino_s16, 448)
    lift = LiFT(384, 16).eval()
    lift_macs = paper_flops(lambda: lift(torch.randn(1, 384, 14, 14), torch.randn(1, 3, 224, 224)), (lift,))
    assert round(low / 1e9, 2) == 4.34
    assert round((low + lift_macs) / 1e9, 2) == 5.30
    assert round(big / 1e9, 2) == 17.28
    # exact integers of this convention (shapes only), so that any change of the counter shows
    assert (low, lift_macs, big) == (4_335_621_120, 960_161_664, 17_277_341_184)


def test_paper_convention_is_not_true_flops():
    lin = torch.nn.Linear(8, 4)
    x = torch.randn(3, 8)
    assert paper_flops(lambda: lin(x), (lin,)) == 3 * 8 * 4  # multiply-accumulates, bias not counted
    assert count_flops(lambda: lin(x))[0] == 2 * 3 * 8 * 4  # true FLOPs: 2 per multiply-add
    up = torch.nn.ConvTranspose2d(6, 2, kernel_size=2, stride=2)
    y = torch.randn(1, 6, 5, 5)
    assert paper_flops(lambda: up(y), (up,)) == (2 * 10 * 10) * 6 * 4 + 2 * 10 * 10  # on the output size, + bias
    assert facet_qkv_macs(197, 384, "token") == 0 and facet_qkv_macs(197, 384, "key") == 197 * 384 * 1152
