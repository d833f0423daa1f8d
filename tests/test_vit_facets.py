"""Facets, channel order, layers, grids and position embeddings of DenseViT (tiny random ViTs)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from liftkit.backbones.vit import resize_pos_embed
from liftkit.data.transforms import target_size
from liftkit.errors import ConfigError
from tests.conftest import tiny_vit


def _official_facet(model, images, layer, facet):
    """dino-vit-features' recipe, on timm's own forward: a hook on blocks[layer].attn recomputes qkv from the
    attention input and orders channels as permute(0, 2, 3, 1).flatten(-2, -1) of (B, heads, T, d)."""
    got = {}
    idx = {"query": 0, "key": 1, "value": 2}[facet]

    def hook(module, inputs, output):
        x = inputs[0]
        b, n, c = x.shape
        qkv = module.qkv(x).reshape(b, n, 3, module.num_heads, c // module.num_heads).permute(2, 0, 3, 1, 4)
        got["x"] = qkv[idx].permute(0, 2, 3, 1).flatten(start_dim=-2, end_dim=-1)  # B, T, d*heads

    handle = model.vit.blocks[layer].attn.register_forward_hook(hook)
    with torch.no_grad():
        model.vit.forward_features(images)
    handle.remove()
    return got["x"]


@pytest.mark.parametrize("facet", ["key", "query", "value"])
@pytest.mark.parametrize("layer", [0, 1])
def test_qkv_facets_match_dino_vit_features_recipe(facet, layer):
    model = tiny_vit(patch_size=16, img_size=64, depth=2)
    images = torch.randn(2, 3, 64, 64)
    ref = _official_facet(model, images, layer, facet)
    with torch.no_grad():
        ours = model.forward_intermediates(images, [layer], facet)[layer]
    assert ours.shape == (2, 1 + 16, 48)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_token_facet_is_block_output():
    model = tiny_vit(depth=2)
    images = torch.randn(1, 3, 64, 64)
    got = {}
    handle = model.vit.blocks[0].register_forward_hook(lambda m, i, o: got.setdefault("x", o))
    with torch.no_grad():
        model.vit.forward_features(images)
        ours = model.forward_intermediates(images, [0], "token")[0]
    handle.remove()
    torch.testing.assert_close(ours, got["x"], rtol=1e-5, atol=1e-5)


def test_channel_order_is_dim_major_head_minor():
    """Channel c of the key facet is head dimension c // heads of head c % heads (official LiFT order)."""
    model = tiny_vit(embed_dim=48, num_heads=4)
    heads, d = 4, 12
    # a qkv tensor whose entry encodes (which, head, dim) as which*1000 + head*100 + dim
    which = torch.arange(3).view(3, 1, 1) * 1000
    head = torch.arange(heads).view(1, heads, 1) * 100
    dim = torch.arange(d).view(1, 1, d)
    qkv = (which + head + dim).float().reshape(1, 1, 3 * heads * d)
    key = model.split_qkv(qkv, "key", "dim_major")[0, 0]
    expected = torch.tensor([1000 + (c % heads) * 100 + c // heads for c in range(48)]).float()
    assert torch.equal(key, expected)
    key_hm = model.split_qkv(qkv, "key", "head_major")[0, 0]
    assert torch.equal(key_hm, torch.tensor([1000 + (c // d) * 100 + c % d for c in range(48)]).float())


def test_layer_resolution_and_errors():
    model = tiny_vit(depth=2)
    assert model.resolve_layer(-1) == 1 and model.resolve_layer(0) == 0 and model.resolve_layer(-2) == 0
    with pytest.raises(ConfigError, match="--layer 2 is out of range"):
        model.resolve_layer(2)
    with pytest.raises(ConfigError, match="unknown --facet"):
        model.forward_intermediates(torch.randn(1, 3, 64, 64), [0], "attn")


def test_key_facet_stops_before_rest_of_block():
    """A key facet at layer L needs blocks 0..L-1 and one qkv projection only: block L's MLP never runs."""
    model = tiny_vit(depth=2)
    calls = []
    model.vit.blocks[1].mlp.register_forward_hook(lambda *a: calls.append("mlp1"))
    model.vit.blocks[1].attn.qkv.register_forward_hook(lambda *a: calls.append("qkv1"))
    with torch.no_grad():
        model.forward_facet(torch.randn(1, 3, 64, 64), -1, "key")
    assert calls == ["qkv1"]


@pytest.mark.parametrize("p", [8, 14, 16])
@pytest.mark.parametrize("hw", [(64, 64), (70, 98), (113, 57)])
def test_grid_shapes_any_patch_and_odd_sizes(p, hw):
    model = tiny_vit(patch_size=p, img_size=4 * p)
    with torch.no_grad():
        out = model.forward_facet(torch.randn(1, 3, *hw))
    assert out.shape == (1, 48, hw[0] // p, hw[1] // p)


@pytest.mark.parametrize("wh,p,load,mode,expected", [
    ((451, 300), 14, 224, "short", (224, 336)),   # 300 -> 224, 451 -> 336.7 -> 336 (24 patches)
    ((451, 300), 16, 224, "short", (224, 336)),
    ((300, 451), 8, 224, "short", (336, 224)),
    ((451, 300), 14, 224, "square", (224, 224)),
    ((451, 300), 16, None, "short", (304, 448)),  # keep size: 300 -> 304 (19x16), 451 -> 448 (28x16)
    ((5, 3), 14, None, "short", (14, 14)),        # at least one patch
])
def test_size_policy(wh, p, load, mode, expected):
    assert target_size(wh, p, load, mode) == expected


def test_size_policy_rejects_bad_values():
    with pytest.raises(ConfigError, match="--load_size 8 is smaller"):
        target_size((100, 100), 14, 8)
    with pytest.raises(ConfigError, match="--resize_mode"):
        target_size((100, 100), 14, 224, "crop")


def test_pos_embed_offset_mode_matches_dino_formula():
    torch.manual_seed(0)
    m, c = 14, 8
    pos = torch.randn(1, m * m, c)
    h, w = 10, 20
    ours = resize_pos_embed(pos, (h, w), "offset")
    grid = pos.reshape(1, m, m, c).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, scale_factor=((h + 0.1) / math.sqrt(m * m), (w + 0.1) / math.sqrt(m * m)),
                        mode="bicubic", align_corners=False)
    assert ref.shape[-2:] == (h, w)
    torch.testing.assert_close(ours, ref.permute(0, 2, 3, 1).reshape(1, h * w, c))
    assert torch.equal(resize_pos_embed(pos, (m, m), "offset"), pos)  # same grid: untouched
    # the three modes differ from each other when downsampling
    a = resize_pos_embed(pos, (7, 7), "size")
    b = resize_pos_embed(pos, (7, 7), "size_antialias")
    assert (a - b).abs().max() > 1e-3
