"""Every backbone family through timm's own forward (tiny random timm models, offline): grid on odd sizes, the
``token`` facet equals timm's own patch tokens, q/k/v equal a hand-made split of the block's qkv projection,
prefix tokens (CLS, registers) never come out, a LiFT trains one step and runs, and a LiFT is refused elsewhere."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

import liftkit.extractor as extractor_module  # where ViTExtractor lives (extractor.py re-exports it)
from extractor import ViTExtractor
from liftkit.backbones.factory import create_backbone
from liftkit.errors import IncompatibleLiftError
from liftkit.lift.checkpoint import LiftMeta, save_lift
from liftkit.lift.model import LiFT
from liftkit.train.objective import LiftPairs, make_targets, pair_losses

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(embed_dim=48, depth=2, num_heads=4)

# family -> (model_type, prefix tokens, patch size, RoPE, q/k/v layout)
FAMILIES = {
    "dino_v1": ("dino_vits16", 1, 16),
    "supervised_vit": ("vit_small_patch16_224", 1, 16),
    "dinov2": ("dinov2_vits14", 1, 14),
    "dinov2_reg": ("dinov2_vits14_reg", 5, 14),
    "dinov3_rope": ("dinov3_vits16", 5, 16),
    "dinov3_qkv_bias": ("timm:vit_small_patch16_dinov3_qkvb", 5, 16),
    "rope_vit_no_cls": ("timm:vit_betwixt_patch16_rope_reg4_gap_256", 4, 16),
    "siglip": ("timm:vit_base_patch16_siglip_224", 0, 16),
    "eva02": ("timm:eva02_base_patch14_224", 1, 14),
    "radio": ("timm:vit_base_patch16_radio_v3", 8, 16),
}


def _tiny(model_type, seed=0):
    """A tiny random backbone whose every parameter is O(1), so that a wrong position, scale or order shows."""
    model, info = create_backbone(model_type, random_init=True, model_kwargs=TINY)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.vit.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    model_type, prefix, p = FAMILIES[request.param]
    return request.param, model_type, prefix, p, _tiny(model_type)


def _odd_image(p, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 5 * p + 3, 7 * p + p - 1, generator=g)  # not multiples of p: cropped to 5 x 7


def test_grid_shape_on_odd_size_and_prefix_count(family):
    name, model_type, prefix, p, model = family
    assert model.patch_size == p and model.embed_dim == 48
    assert model.num_prefix_tokens == prefix == model.spec.num_prefix_tokens
    x = _odd_image(p)
    with torch.no_grad():
        for facet in ("key", "query", "value", "token"):
            assert model.forward_facet(x, -1, facet).shape == (2, 48, 5, 7)
        tokens = model.forward_intermediates(x, [0], "token")[0]
    assert tokens.shape == (2, prefix + 35, 48)


def test_token_facet_equals_timm_patch_tokens(family):
    """Our token facet at each layer == timm's own forward_intermediates patch tokens (timm splits the prefix)."""
    name, model_type, prefix, p, model = family
    x = _odd_image(p)
    with torch.no_grad():
        ref = model.vit.forward_intermediates(model.crop(x), indices=[0, 1], output_fmt="NCHW",
                                              intermediates_only=True)
        for layer in (0, 1):
            ours = model.forward_facet(x, layer, "token")
            assert ref[layer].shape == ours.shape == (2, 48, 5, 7)
            torch.testing.assert_close(ours, ref[layer], rtol=1e-5, atol=1e-5)
        # and a register / CLS token is not among the outputs: the prefix differs from every patch token
        full = model.forward_intermediates(x, [1], "token")[1]
    if prefix:
        patches = ours.flatten(2).transpose(1, 2)
        dist = torch.cdist(full[:, :prefix], patches)
        assert dist.min() > 1e-3


def _manual_qkv(attn, x):
    """q/k/v of the attention input written out by hand: x @ W^T + b, with EVA's (q_bias, 0, v_bias) if present."""
    if getattr(attn, "qkv", None) is not None:
        w = attn.qkv.weight
        if getattr(attn, "q_bias", None) is not None:
            b = torch.cat([attn.q_bias, torch.zeros_like(attn.q_bias), attn.v_bias])
        else:
            b = attn.qkv.bias if attn.qkv.bias is not None else torch.zeros(w.shape[0])
    else:
        w = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        bs = [m.bias if m.bias is not None else torch.zeros(m.weight.shape[0])
              for m in (attn.q_proj, attn.k_proj, attn.v_proj)]
        b = torch.cat(bs)
    return x @ w.T + b


@pytest.mark.parametrize("layer", [0, 1])
def test_qkv_facets_equal_manual_split_of_the_projection(family, layer):
    name, model_type, prefix, p, model = family
    x = _odd_image(p)
    blk = model.vit.blocks[layer]
    seen = {}
    handle = blk.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    with torch.no_grad():
        model.vit.forward_features(model.crop(x))  # timm's own forward, all blocks
        handle.remove()
        qkv = _manual_qkv(blk.attn, blk.norm1(seen["x"]))  # (B, T, 3C)
        heads, d = 4, 12
        parts = qkv.reshape(2, prefix + 35, 3, heads, d)
        for i, facet in enumerate(("query", "key", "value")):
            ours = model.forward_facet(x, layer, facet)  # dim-major: channel c = dim * heads + head
            ref = parts[:, prefix:, i].permute(0, 3, 2, 1).reshape(2, d * heads, 35)  # B, d, heads, hw
            torch.testing.assert_close(ours.flatten(2), ref, rtol=1e-5, atol=1e-5)
            hm = model.forward_facet(x, layer, facet, "head_major")
            torch.testing.assert_close(hm.flatten(2), parts[:, prefix:, i].reshape(2, 35, 48).transpose(1, 2),
                                       rtol=1e-5, atol=1e-5)


def test_lift_trains_one_step_and_runs(family):
    name, model_type, prefix, p, model = family
    torch.manual_seed(0)
    images = torch.randn(2, 3, 8 * p, 8 * p)
    targets = make_targets(lambda im: model.forward_facet(im, -1, "key"), images)
    assert targets["feat_full"].shape == (2, 48, 8, 8) and targets["feat_quarter"].shape == (2, 48, 2, 2)
    lift = LiFT(48, p)
    pairs = LiftPairs(lift).train()
    opt = torch.optim.Adam(lift.parameters(), lr=1e-3)
    before = [t.detach().clone() for t in lift.parameters()]
    loss, parts = pair_losses(pairs, targets)
    assert torch.isfinite(loss) and 0 < loss.item() < 4
    loss.backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, lift.parameters()))
    lift.eval()
    with torch.no_grad():
        low = model.forward_facet(images[:, :, : 5 * p, : 7 * p])
        out = lift(low, images[:, :, : 5 * p, : 7 * p])
    assert out.shape == (2, 48, 10, 14) and torch.isfinite(out).all()


@pytest.fixture
def tiny_extractors(monkeypatch):
    """ViTExtractor builds tiny timm models (the facade passes model_kwargs through create_backbone)."""
    monkeypatch.setattr(extractor_module, "create_backbone", functools.partial(create_backbone, model_kwargs=TINY))

    def make(model_type, **kw):
        return ViTExtractor(model_type, lift_path=None, **kw)

    return make


def _save_lift_for(ext, path):
    meta = LiftMeta(backbone=ext.spec.name, backbone_weights_sha256=ext.info.weights_sha256, layer=ext.layer,
                    facet=ext.facet, channel_order=ext.channel_order, patch_size=ext.patch_size,
                    channels=ext.embed_dim, mean=ext.spec.mean, std=ext.spec.std)
    return save_lift(path, LiFT(ext.embed_dim, ext.patch_size), meta)


@pytest.mark.parametrize("a,b", [("dinov2_vits14_reg", "dinov2_vits14"), ("timm:vit_base_patch16_siglip_224",
                                  "timm:vit_base_patch16_radio_v3"), ("dinov3_vits16", "timm:eva02_base_patch14_224"),
                                 ("timm:vit_small_patch16_dinov3", "dinov3_vits16")])
def test_lift_for_one_backbone_is_refused_on_another(tiny_extractors, tmp_path, a, b):
    ext_a = tiny_extractors(a, random_init=True)
    path = _save_lift_for(ext_a, tmp_path / "lift_a.safetensors")
    ext_a.load_lift(path)
    assert ext_a.lift_meta.backbone == a
    x = torch.randn(1, 3, 4 * ext_a.patch_size, 3 * ext_a.patch_size)
    assert ext_a.dense_features(x, "lift").shape == (1, 48, 8, 6)
    ext_b = tiny_extractors(b, random_init=True)
    with pytest.raises(IncompatibleLiftError, match=rf"backbone '{a}' but is applied to '{b}'"):
        ext_b.load_lift(path)


def test_timm_lift_is_refused_on_other_weights_of_the_same_backbone(tiny_extractors, tmp_path):
    """The digest of the loaded weights is pinned: the same timm:<name> with other weights is refused."""
    from safetensors.torch import save_file

    files = []
    for seed in (0, 1):
        vit = _tiny("timm:vit_small_patch16_dinov3", seed).vit
        files.append(tmp_path / f"w{seed}.safetensors")
        save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(files[-1]))
    ext0 = tiny_extractors("timm:vit_small_patch16_dinov3", backbone_weights=files[0])
    assert ext0.info.origin == "explicit" and len(ext0.info.weights_sha256) == 64
    # the RoPE buffers timm recomputes after the meta-device load: same features as the model the file came from
    ref = _tiny("timm:vit_small_patch16_dinov3", 0)
    x = torch.randn(1, 3, 48, 80)
    torch.testing.assert_close(ext0.extract_descriptors(x), ref.forward_facet(x), rtol=1e-5, atol=1e-5)
    path = _save_lift_for(ext0, tmp_path / "lift.safetensors")
    ext1 = tiny_extractors("timm:vit_small_patch16_dinov3", backbone_weights=files[1])
    with pytest.raises(IncompatibleLiftError, match="sha256"):
        ext1.load_lift(path)
    assert ext0.describe()["backbone"] == "timm:vit_small_patch16_dinov3"


def test_rope_keys_are_taken_before_rope():
    """DINOv3 has no absolute position embedding, so its layer-0 key is a function of the patch alone: the same patch
    at two grid positions gives the same key facet. RoPE-rotated keys of that patch differ between the positions
    (checked with timm's own rotation), so the facet is the projection before RoPE."""
    from timm.layers import apply_rot_embed_cat

    model = _tiny("dinov3_vits16")
    img = torch.randn(1, 3, 32, 48)
    img[..., 16:32, 32:48] = img[..., 0:16, 0:16]  # patch (1, 2) is a copy of patch (0, 0)
    with torch.no_grad():
        key = model.forward_facet(img, 0, "key")
        hm = model.forward_facet(img, 0, "key", "head_major")  # (1, heads * d, 2, 3)
    torch.testing.assert_close(key[..., 0, 0], key[..., 1, 2], rtol=1e-5, atol=1e-5)
    assert (key[..., 0, 0] - key[..., 0, 1]).abs().max() > 1e-2  # other patches do differ
    k = hm.flatten(2).transpose(1, 2).reshape(1, 6, 4, 12).transpose(1, 2)  # B, heads, N, d
    attn = model.vit.blocks[0].attn
    rotated = apply_rot_embed_cat(k, model.vit.rope.get_embed(shape=(2, 3)), half=attn.rotate_half)
    assert (rotated[:, :, 0] - rotated[:, :, 5]).abs().max() > 1e-2
