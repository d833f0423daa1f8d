"""The LiFT module: official architecture and parameter counts, generalised grids, iteration, checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from liftkit.errors import CheckpointError, IncompatibleLiftError
from liftkit.lift.checkpoint import LiftMeta, check_compatible, load_lift, official_backbone_from_name, save_lift
from liftkit.lift.model import LiFT, count_parameters


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def test_parameter_counts_match_official():
    assert count_parameters(LiFT(384, 16)) == 1_187_280
    assert count_parameters(LiFT(768, 8)) == 4_417_296


def test_parameter_names_are_the_official_ones():
    keys = set(LiFT(384, 16).state_dict())
    expected_prefixes = {"up1.up.", "up1.conv_1.double_conv.0.", "up1.conv_1.double_conv.1.",
                         "up1.conv_1.double_conv.3.", "up1.conv_1.double_conv.4.", "outc.", "image_convs_1.0.",
                         "image_convs_1.1.", "image_convs_1.3.", "image_convs_1.4.", "image_convs_2.0.",
                         "image_convs_2.1."}
    assert {k.rsplit(".", 1)[0] + "." for k in keys} == expected_prefixes
    assert len(keys) == 37  # 7 convs: 12 weights and biases; 5 BatchNorms x 5 entries
    assert tuple(LiFT(384, 16).state_dict()["up1.up.weight"].shape) == (416, 208, 2, 2)


def _official_forward(lift: LiFT, x: torch.Tensor, imgs: torch.Tensor, patch: int) -> torch.Tensor:
    """The official forward: a fixed scale adapter (Identity for p=8, MaxPool2d(2) for p=16)."""
    adapter = nn.Identity() if patch == 8 else nn.MaxPool2d(2, 2)
    imgs_1 = adapter(lift.image_convs_1(imgs))
    imgs_2 = lift.image_convs_2(imgs_1)
    return lift.outc(lift.up1(torch.cat([x, imgs_2], 1), imgs_1))


@pytest.mark.parametrize("patch,size", [(16, 224), (8, 224), (16, 64)])
def test_adaptive_pool_equals_official_scale_adapter(patch, size):
    torch.manual_seed(0)
    lift = _randomize_bn(LiFT(64, patch))
    h = size // patch
    x, imgs = torch.randn(2, 64, h, h), torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.equal(lift(x, imgs), _official_forward(lift, x, imgs, patch))


@pytest.mark.parametrize("patch,size", [(14, 224), (14, 98), (16, 56), (16, 72), (8, 60), (14, (98, 154))])
def test_any_patch_and_inexact_grids(patch, size):
    """The official module crashes at 56 px with p=16 (3x3 grid, 4x4 image branch) and for p=14; ours does not."""
    hh, ww = (size, size) if isinstance(size, int) else size
    h, w = hh // patch, ww // patch
    lift = LiFT(32, patch).eval()
    with torch.no_grad():
        out = lift(torch.randn(1, 32, h, w), torch.randn(1, 3, hh, ww))
    assert out.shape == (1, 32, 2 * h, 2 * w)


def test_iterative_application_matches_manual_steps():
    torch.manual_seed(0)
    lift = _randomize_bn(LiFT(32, 14))
    x, imgs = torch.randn(1, 32, 4, 6), torch.randn(1, 3, 56, 84)
    with torch.no_grad():
        two = lift.forward_iterative(x, imgs, 2)
        manual = lift(lift(x, imgs), F.interpolate(imgs, scale_factor=2, mode="bilinear", align_corners=False))
    assert two.shape == (1, 32, 16, 24)
    assert torch.equal(two, manual)


def _meta(**kw) -> LiftMeta:
    base = dict(backbone="dinov2_vits14_imgfocus", backbone_weights_sha256="ab" * 32, layer=11, facet="key",
                channel_order="dim_major", patch_size=14, channels=32, mean=(0.485, 0.456, 0.406),
                std=(0.229, 0.224, 0.225), train_config={"epochs": 3, "loss": "cosine"})
    base.update(kw)
    return LiftMeta(**base)


def test_safetensors_round_trip(tmp_path):
    torch.manual_seed(0)
    lift = _randomize_bn(LiFT(32, 14))
    path = save_lift(tmp_path / "lift.safetensors", lift, _meta())
    assert not list(tmp_path.glob(".*.tmp"))  # atomic: no temporary left behind
    loaded, meta = load_lift(path)
    assert meta == _meta()
    for k, v in lift.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert not loaded.training


def test_official_pth_with_module_prefix_loads_strictly(tmp_path):
    torch.manual_seed(1)
    lift = _randomize_bn(LiFT(384, 16))
    sd = {"module." + k: v for k, v in lift.state_dict().items()}
    path = tmp_path / "lift_dino_vits16.pth"
    torch.save(sd, path)
    loaded, meta = load_lift(path)
    assert (meta.backbone, meta.layer, meta.facet, meta.channels, meta.patch_size, meta.source) == (
        "dino_vits16", 11, "key", 384, 16, "official")
    x, imgs = torch.randn(1, 384, 14, 14), torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded(x, imgs), lift(x, imgs))


def test_partial_or_foreign_checkpoints_are_errors(tmp_path):
    sd = LiFT(384, 16).state_dict()
    del sd["outc.bias"]
    torch.save(sd, tmp_path / "lift_dino_vits16.pth")
    with pytest.raises(CheckpointError, match="missing: outc.bias"):
        load_lift(tmp_path / "lift_dino_vits16.pth")
    torch.save(LiFT(384, 16).state_dict(), tmp_path / "my_lift.pth")
    with pytest.raises(CheckpointError, match="cannot tell which backbone"):
        load_lift(tmp_path / "my_lift.pth")
    torch.save({"foo": torch.zeros(1)}, tmp_path / "lift_dino_vits8.pth")
    with pytest.raises(CheckpointError, match="not a LiFT state dict"):
        load_lift(tmp_path / "lift_dino_vits8.pth")
    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read LiFT file"):
        load_lift(tmp_path / "garbage.safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_lift(tmp_path / "missing.safetensors")


def test_official_names_map_to_backbones():
    assert official_backbone_from_name("lift_dino_vits16.pth") == "dino_vits16"
    assert official_backbone_from_name("lift_dino_vitb8.pth") == "dino_vitb8"
    assert official_backbone_from_name("checkpoints/dinov2_vits14_imgfocus_lift.pth") == "dinov2_vits14_imgfocus"
    assert official_backbone_from_name("lift_dino_vits160.pth") is None


@pytest.mark.parametrize("field,value,word", [
    ("backbone", "dino_vits16", "backbone"),
    ("layer", 10, "layer"),
    ("facet", "token", "facet"),
    ("channel_order", "head_major", "channel order"),
    ("channels", 768, "channel count"),
])
def test_mismatch_is_refused(field, value, word):
    applied = dict(backbone="dinov2_vits14_imgfocus", weights_sha256="ab" * 32, layer=11, facet="key",
                   channel_order="dim_major", channels=32)
    check_compatible(_meta(), **applied)  # its own setting passes
    key = {"channels": "channels"}.get(field, field)
    applied[key] = value
    with pytest.raises(IncompatibleLiftError, match=f"trained for {word}"):
        check_compatible(_meta(), **applied)


def test_other_backbone_weights_are_refused():
    with pytest.raises(IncompatibleLiftError, match="sha256"):
        check_compatible(_meta(), "dinov2_vits14_imgfocus", "cd" * 32, 11, "key", "dim_major", 32)
    # official files cannot pin the weights: anything of the right backbone passes
    check_compatible(_meta(backbone_weights_sha256="unknown"), "dinov2_vits14_imgfocus", "cd" * 32, 11, "key",
                     "dim_major", 32)


def test_residual_variant_adds_bilinear_and_round_trips(tmp_path):
    torch.manual_seed(0)
    plain = _randomize_bn(LiFT(32, 14))
    res = LiFT(32, 14, residual=True)
    res.load_state_dict(plain.state_dict())  # same parameters and names
    res.eval()
    x, imgs = torch.randn(1, 32, 4, 5), torch.randn(1, 3, 56, 70)
    with torch.no_grad():
        expected = plain(x, imgs) + F.interpolate(x, size=(8, 10), mode="bilinear", align_corners=False)
        assert torch.allclose(res(x, imgs), expected, atol=1e-6)
    path = save_lift(tmp_path / "res.safetensors", res, _meta(residual=True))
    loaded, meta = load_lift(path)
    assert meta.residual is True and loaded.residual is True
    with torch.no_grad():
        assert torch.equal(loaded(x, imgs), res(x, imgs))
    assert load_lift(save_lift(tmp_path / "plain.safetensors", plain, _meta()))[1].residual is False
