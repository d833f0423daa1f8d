"""Any timm ViT by name: ``--model_type timm:<timm model name>`` (e.g. ``timm:vit_base_patch16_siglip_224``).

The spec is read from the model itself: the architecture is built on the meta device (no memory, no weights, no
network) and its patch size, channels, depth, heads and prefix tokens (CLS + registers) are taken from the modules;
input normalisation, default input size and the weight source (``hf_hub_id``, file name) from its timm
``pretrained_cfg``. A name may carry a timm tag (``timm:vit_base_patch16_siglip_224.webli``); without one, timm's
default tag decides which Hugging Face repository the weights are looked for in.

Served: every timm model that is built with ``dynamic_img_size`` (any H, W multiple of p, timm resamples its own
position embedding / RoPE), has square patches and 3 input channels, and whose ``blocks`` each have an ``attn`` with
a fused ``qkv`` projection (with or without EVA's separate ``q_bias`` / ``v_bias``) or separate ``q_proj`` /
``k_proj`` / ``v_proj``, as wide as the tokens. In timm 1.0.x that is ``VisionTransformer`` (ViT, DeiT, DINO,
DINOv2 and its registers, CLIP, SigLIP, RADIO, ...) and ``Eva`` (EVA-02, DINOv3, the RoPE ViTs). Anything else is
refused with one line saying why (e.g. BEiT: no ``dynamic_img_size``; NaFlexViT: takes patch dictionaries;
Swin, ConvNeXt: no ``blocks[i].attn.qkv``).
"""

from __future__ import annotations

import difflib
from typing import Any, Dict, Optional

import torch
from torch import nn

from liftkit.backbones.specs import IMAGENET_MEAN, IMAGENET_STD, TIMM_PREFIX, BackboneSpec
from liftkit.errors import ConfigError

_HF = "https://huggingface.co"


def build_timm_model(arch: str, label: Optional[str] = None, **kwargs: Any) -> nn.Module:
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
        raise ConfigError(f"--model_type {label}: timm cannot build it ({str(exc).splitlines()[0]})") from None
    except RuntimeError as exc:
        raise ConfigError(f"--model_type {label}: timm cannot build it ({str(exc).splitlines()[0]})") from None


def attn_projection_kind(attn: nn.Module) -> Optional[str]:
    """``"fused"`` (``attn.qkv``), ``"separate"`` (``attn.q_proj/k_proj/v_proj``) or None (not servable)."""
    if isinstance(getattr(attn, "qkv", None), nn.Linear):
        return "fused"
    if all(isinstance(getattr(attn, f"{c}_proj", None), nn.Linear) for c in "qkv"):
        return "separate"
    return None


def check_servable(model: nn.Module, label: str) -> None:
    """Refuse (one-line ConfigError naming ``label`` and why) a timm model liftkit cannot take facets from."""

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
