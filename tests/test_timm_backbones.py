"""The backbone table against timm's own architectures, ``timm:<name>`` specs and refusals, weight resolution and
conversion for the new backbones (official DINOv2 with registers and SwiGLU, timm-hosted copies)."""

from __future__ import annotations

import pytest
import torch

from liftkit.backbones.factory import build_vit, create_backbone
from liftkit.backbones.specs import BACKBONES, get_spec
from liftkit.errors import CheckpointError, ConfigError, WeightsNotFoundError
from liftkit.weights.convert import state_dict_digest
from liftkit.weights.resolve import candidate_paths, resolve_weights

TINY = dict(embed_dim=48, depth=2, num_heads=4)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_table_matches_timm_architecture(name):
    """Every named backbone's p, C, depth, heads and prefix tokens are those of its timm architecture."""
    spec = get_spec(name)
    with torch.device("meta"):
        vit = build_vit(spec)
    assert tuple(vit.patch_embed.patch_size) == (spec.patch_size, spec.patch_size)
    assert (vit.embed_dim, len(vit.blocks), vit.blocks[0].attn.num_heads) == (spec.embed_dim, spec.depth,
                                                                               spec.num_heads)
    assert vit.num_prefix_tokens == spec.num_prefix_tokens


def test_new_named_backbones():
    expect = {
        "dinov2_vitl14": (14, 1024, 1, "dinov2_vitl14_pretrain.pth"),
        "dinov2_vitg14": (14, 1536, 1, "dinov2_vitg14_pretrain.pth"),
        "dinov2_vits14_reg": (14, 384, 5, "dinov2_vits14_reg4_pretrain.pth"),
        "dinov2_vitb14_reg": (14, 768, 5, "dinov2_vitb14_reg4_pretrain.pth"),
        "dinov2_vitl14_reg": (14, 1024, 5, "dinov2_vitl14_reg4_pretrain.pth"),
        "dinov2_vitg14_reg": (14, 1536, 5, "dinov2_vitg14_reg4_pretrain.pth"),
        "dinov3_vits16": (16, 384, 5, "model.safetensors"),
        "dinov3_vitb16": (16, 768, 5, "model.safetensors"),
        "dinov3_vitl16": (16, 1024, 5, "model.safetensors"),
    }
    for name, (p, c, prefix, file) in expect.items():
        s = get_spec(name)
        assert (s.patch_size, s.embed_dim, s.num_prefix_tokens, s.filename) == (p, c, prefix, file), name
    assert get_spec("dinov2_vitg14_reg").url == \
        "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitg14/dinov2_vitg14_reg4_pretrain.pth"
    assert get_spec("dinov2_vits14_reg").pos_interp == "size_antialias"  # official hub: antialias, no offset
    assert get_spec("dinov2_vitl14").pos_interp == "offset" and get_spec("dino_vits16").pos_interp == "offset"
    assert get_spec("dinov3_vitb16").hf_hub_id == "timm/vit_base_patch16_dinov3.lvd1689m"


def test_timm_spec_comes_from_the_model_config():
    s = get_spec("timm:vit_base_patch16_siglip_224")
    assert (s.name, s.patch_size, s.embed_dim, s.depth, s.num_heads, s.num_prefix_tokens) == (
        "timm:vit_base_patch16_siglip_224", 16, 768, 12, 12, 0)
    assert s.mean == (0.5, 0.5, 0.5) and s.input_size == (224, 224) and s.pos_interp == "timm"
    assert s.hf_hub_id == "timm/vit_base_patch16_siglip_224.v2_webli"
    e = get_spec("timm:eva02_base_patch14_224.mim_in22k")
    assert (e.patch_size, e.embed_dim, e.num_prefix_tokens, e.hf_hub_id) == (
        14, 768, 1, "timm/eva02_base_patch14_224.mim_in22k")
    assert e.mean[0] == pytest.approx(0.48145466)
    r = get_spec("timm:vit_base_patch16_radio_v3")
    assert (r.num_prefix_tokens, r.input_size) == (8, (512, 512))
    tiny = get_spec("timm:vit_small_patch16_dinov3", TINY)
    assert (tiny.embed_dim, tiny.depth, tiny.num_heads) == (48, 2, 4)


@pytest.mark.parametrize("name,why", [
    ("timm:vit_base_patch16_siglp_224", r"has no model 'vit_base_patch16_siglp_224'; did you mean "
                                        r"timm:vit_base_patch16_siglip_224"),
    ("timm:beit_base_patch16_224", "has no dynamic_img_size"),
    ("timm:resnet18", "has no dynamic_img_size"),
    ("timm:naflexvit_base_patch16_siglip", "has no dynamic_img_size"),
    ("timm:vit_base_patch16_xp_224", "block 0 has no attn.qkv projection"),
    ("dinov2_vits14_reg4", "unknown --model_type 'dinov2_vits14_reg4'.*timm:<timm model name>"),
])
def test_unservable_models_are_refused_in_one_line(name, why):
    with pytest.raises(ConfigError, match=why) as err:
        create_backbone(name, random_init=True)
    assert "\n" not in str(err.value) and name.split(":")[-1] in str(err.value)


def test_timm_weights_resolution_offline(caches):
    """timm:<name>: --backbone_weights, then pretrained/<arch>.*, the torch hub cache, the HF cache; never random."""
    name = "timm:vit_small_patch16_dinov3"
    spec = get_spec(name, TINY)
    pre = caches / "pretrained"
    with pytest.raises(WeightsNotFoundError) as err:
        create_backbone(name, offline=True, pretrained_dir=pre, model_kwargs=TINY)
    msg = str(err.value)
    assert "\n" not in msg and "--offline" in msg
    for place in candidate_paths(spec, pre):
        assert str(place) in msg
    assert str(caches / "hf" / "models--timm--vit_small_patch16_dinov3.lvd1689m") in msg
    assert str(pre / "vit_small_patch16_dinov3.safetensors") in msg

    from safetensors.torch import save_file

    torch.manual_seed(3)
    sd = build_vit(spec, **TINY).state_dict()
    hf = caches / "hf" / "models--timm--vit_small_patch16_dinov3.lvd1689m" / "snapshots" / "abc" / "model.safetensors"
    hf.parent.mkdir(parents=True)
    save_file(sd, str(hf))
    model, info = create_backbone(name, offline=True, pretrained_dir=pre, model_kwargs=TINY)
    assert (info.origin, info.weights_path) == ("hf_cache", str(hf))
    assert info.weights_sha256 == state_dict_digest(sd)
    for k, v in model.vit.state_dict().items():
        assert torch.equal(v, sd[k]), k
    torch.save(sd, pre / "vit_small_patch16_dinov3.pth")
    assert resolve_weights(spec, pretrained_dir=pre).origin == "pretrained"
    # a partial file is refused, naming the key
    del sd["blocks.1.attn.qkv.weight"]
    torch.save(sd, caches / "partial.pth")
    with pytest.raises(CheckpointError, match=r"missing: blocks\.1\.attn\.qkv\.weight"):
        create_backbone(name, weights=caches / "partial.pth", model_kwargs=TINY)


def _official_dinov2(timm_sd, reg: bool, swiglu: bool):
    """The official DINOv2 layout of a timm state dict: mask_token, register_tokens, CLS position in pos_embed,
    SwiGLU as w12/w3."""
    sd = {k: v.clone() for k, v in timm_sd.items()}
    sd["mask_token"] = torch.zeros(1, sd["cls_token"].shape[-1])
    if reg:
        cls_pos = torch.randn_like(sd["cls_token"])
        sd["register_tokens"] = sd.pop("reg_token")
        sd["cls_token"] = sd["cls_token"] - cls_pos
        sd["pos_embed"] = torch.cat([cls_pos, sd["pos_embed"]], dim=1)
    if swiglu:
        sd = {k.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3"): v for k, v in sd.items()}
    return sd


@pytest.mark.parametrize("name,swiglu", [("dinov2_vits14_reg", False), ("dinov2_vitg14", True),
                                         ("dinov2_vitg14_reg", True)])
def test_official_dinov2_files_convert_strictly(caches, name, swiglu):
    """Registers (CLS position folded into cls_token), SwiGLU w12/w3: the loaded model equals the timm model the
    official file was made from, and timm's own copy (timm layout) gives the same digest."""
    spec = get_spec(name)
    torch.manual_seed(0)
    timm_sd = {k: v + 0.1 * torch.randn_like(v) for k, v in build_vit(spec, **TINY).state_dict().items()}
    reg = name.endswith("_reg")
    official = _official_dinov2(timm_sd, reg, swiglu)
    assert ("blocks.0.mlp.w12.weight" in official) == swiglu
    torch.save(official, caches / "pretrained" / spec.filename)
    model, info = create_backbone(name, pretrained_dir=caches / "pretrained", model_kwargs=TINY)
    assert info.origin == "pretrained"
    for k, v in model.vit.state_dict().items():
        torch.testing.assert_close(v, timm_sd[k], rtol=0, atol=1e-6)
    (caches / "pretrained" / spec.filename).unlink()
    from safetensors.torch import save_file

    hf = caches / "hf" / f"models--timm--{spec.timm_arch}.lvd142m" / "snapshots" / "r" / "model.safetensors"
    hf.parent.mkdir(parents=True)
    save_file(timm_sd, str(hf))
    _, info_hf = create_backbone(name, pretrained_dir=caches / "pretrained", model_kwargs=TINY)
    assert info_hf.origin == "hf_cache"
    if not reg:  # with registers the CLS fold adds in float32: equal to 1e-6, not bit for bit
        assert info_hf.weights_sha256 == info.weights_sha256
