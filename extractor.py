"""extractor.py: the one module that loads ViT backbones and their dense facets, with or without LiFT.

The class lives in the package (:mod:`liftkit.extractor`; ``from liftkit import ViTExtractor`` once installed); this
file re-exports it so that ``from extractor import ViTExtractor`` keeps working from a checkout. Every script goes
through :class:`ViTExtractor`; it is the only place that builds backbones (DINO v1, supervised timm
ViTs, DINOv2, and the offline ``dinov2_vits14_imgfocus``) and applies LiFT.

Shape notation (used in every docstring of the toolkit):
    B   batch size
    T   tokens, prefix included: T = P + h * w, P = CLS + registers (from the model: 0 SigLIP, 1 DINO, 5 DINOv2-reg)
    C   channels of a facet (384 for ViT-S, 768 for ViT-B)
    p   patch size in pixels (8, 14 or 16)
    H, W  input image height and width in pixels, multiples of p
    h, w  patch grid: h = H // p, w = W // p
LiFT maps (B, C, h, w) to (B, C, 2h, 2w); k iterations give (B, C, 2^k h, 2^k w).

Facets: ``key``, ``query``, ``value`` (q/k/v of ``attn.qkv(norm1(x))`` at the chosen block, channels in the
dino-vit-features / official-LiFT **dim-major, head-minor** order by default) and ``token`` (the block's output).
Layers count from 0; -1 is the last block.

Size policy: see :mod:`liftkit.data.transforms` (resize the short side to ``load_size``, round both sides to
multiples of p; never crop).

Example::

    ext = ViTExtractor()                         # dinov2_vits14_imgfocus, last layer, key facet, shipped LiFT
    x = ext.preprocess(Image.open("assets/sample.jpg").convert("RGB"), load_size=224)   # (1, 3, 224, 336)
    low = ext.extract_descriptors(x)             # (1, 384, 16, 24)
    dense = ext.dense_features(x, "lift")        # (1, 384, 32, 48)
    feats = ext.features(x, "low,bilinear,lift,lift2")   # all four from one backbone pass
    feats["lift2"].shape                         # (1, 384, 64, 96)
"""

from liftkit.extractor import (  # noqa: F401
    DTYPES, METHODS, Method, ViTExtractor, available_backbones, parse_method, parse_methods, shipped_lift_path,
)
