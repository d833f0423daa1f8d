"""DenseViT: a timm VisionTransformer run for its dense facets.

Shape notation (used across the toolkit):
    B: batch size; H, W: image height and width in pixels (multiples of p); p: patch size;
    h = H // p, w = W // p: the patch grid; T = 1 + h * w: tokens including CLS; C: channels (embed dim).

Facets (as in dino-vit-features, on which the official LiFT release builds):
    ``key``, ``query``, ``value``: the block's ``attn.qkv(norm1(x))`` projection, split into q, k, v, with channels
        in **dim-major, head-minor** order: channel ``c = d * num_heads + head`` for head dimension ``d``. This is
        dino-vit-features' order (it permutes ``B x heads x T x d`` to ``B x T x d x heads`` and flattens); LiFT
        checkpoints trained on it give wrong features on any other order. ``head_major`` (``c = head * d_h + d``,
        timm's natural layout) is available for models trained on it.
    ``token``: the block's output tokens (before the final norm).

The position embedding is resized to the input's grid according to the spec's ``pos_interp``.
"""

from __future__ import annotations

import math
from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from liftkit.specs import BackboneSpec
from liftkit.errors import ConfigError

FACETS = ("key", "query", "value", "token")
CHANNEL_ORDERS = ("dim_major", "head_major")
_QKV_INDEX = {"query": 0, "key": 1, "value": 2}


def resize_pos_embed(patch_pos: torch.Tensor, grid: Sequence[int], mode: str) -> torch.Tensor:
    """Resize a square patch position embedding to another grid.

    Args:
        patch_pos: (1, N, C) position embedding of the patch tokens (no CLS), N = M * M.
        grid: (h, w) target grid.
        mode: ``"offset"``, ``"size"`` or ``"size_antialias"`` (see :class:`BackboneSpec`).
    Returns:
        (1, h * w, C).
    """
    n, c = patch_pos.shape[1], patch_pos.shape[2]
    m = int(round(math.sqrt(n)))
    h, w = int(grid[0]), int(grid[1])
    if (h, w) == (m, m):
        return patch_pos
    x = patch_pos.reshape(1, m, m, c).permute(0, 3, 1, 2).float()
    if mode == "offset":
        x = F.interpolate(x, scale_factor=((h + 0.1) / m, (w + 0.1) / m), mode="bicubic", align_corners=False)
    elif mode == "size":
        x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=False)
    elif mode == "size_antialias":
        x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
    else:
        raise ConfigError(f"unknown position-embedding interpolation '{mode}'")
    assert x.shape[-2:] == (h, w), (x.shape, h, w)
    return x.permute(0, 2, 3, 1).reshape(1, h * w, c).to(patch_pos.dtype)


class DenseViT(nn.Module):
    """A frozen ViT that returns dense facet maps.

    Wraps a timm ``VisionTransformer`` (``self.vit``) whose state dict is the one the weights load into, and runs its
    blocks itself so that any image size works (the position embedding is resized to the grid) and a ``key`` /
    ``query`` / ``value`` facet at layer L costs blocks 0..L-1 plus one qkv projection: qkv is never recomputed.
    """

    def __init__(self, spec: BackboneSpec, vit: nn.Module):
        super().__init__()
        self.spec = spec
        self.vit = vit
        self.patch_size = spec.patch_size
        self.embed_dim = spec.embed_dim
        self.num_heads = spec.num_heads
        self.depth = len(vit.blocks)

    # ------------------------------------------------------------------ helpers
    def resolve_layer(self, layer: int) -> int:
        """Map a layer index (negative counts from the end, -1 = last) to 0..depth-1, or raise ConfigError."""
        idx = layer + self.depth if layer < 0 else layer
        if not 0 <= idx < self.depth:
            raise ConfigError(f"--layer {layer} is out of range for {self.spec.name} (layers 0..{self.depth - 1} or -1)")
        return idx

    def grid_size(self, height: int, width: int) -> tuple:
        """(h, w) patch grid of an (H, W) image: H // p, W // p."""
        return height // self.patch_size, width // self.patch_size

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch-embed and add position embeddings.

        Args:
            images: (B, 3, H, W) normalised images; H and W are cropped down to multiples of p.
        Returns:
            (B, T, C) tokens, T = 1 + h * w.
        """
        p = self.patch_size
        b, _, hh, ww = images.shape
        h, w = hh // p, ww // p
        if h < 1 or w < 1:
            raise ConfigError(f"image of {hh}x{ww} px is smaller than one {p}-px patch")
        images = images[:, :, : h * p, : w * p]
        x = self.vit.patch_embed.proj(images).flatten(2).transpose(1, 2)  # B, hw, C
        pos = self.vit.pos_embed
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        patch_pos = resize_pos_embed(patch_pos, (h, w), self.spec.pos_interp)
        cls = self.vit.cls_token.expand(b, -1, -1) + cls_pos
        x = torch.cat([cls, x + patch_pos.to(x.dtype)], dim=1)
        return self.vit.norm_pre(x)

    def split_qkv(self, qkv: torch.Tensor, facet: str, channel_order: str = "dim_major") -> torch.Tensor:
        """Pick one of q, k, v from a qkv projection.

        Args:
            qkv: (B, T, 3C), laid out as (3, heads, d) along the last axis (timm / official layout).
            facet: ``query``, ``key`` or ``value``.
            channel_order: ``dim_major`` (dino-vit-features, official LiFT) or ``head_major``.
        Returns:
            (B, T, C).
        """
        b, t, _ = qkv.shape
        d = self.embed_dim // self.num_heads
        x = qkv.reshape(b, t, 3, self.num_heads, d)[:, :, _QKV_INDEX[facet]]  # B, T, heads, d
        if channel_order == "dim_major":
            x = x.transpose(2, 3)  # B, T, d, heads
        elif channel_order != "head_major":
            raise ConfigError(f"unknown channel order '{channel_order}'; choose one of {CHANNEL_ORDERS}")
        return x.reshape(b, t, self.embed_dim)

    # ------------------------------------------------------------------ API
    def forward_intermediates(
        self,
        images: torch.Tensor,
        layers: Sequence[int] = (-1,),
        facet: str = "key",
        channel_order: str = "dim_major",
    ) -> Dict[int, torch.Tensor]:
        """Facet tokens at several layers from one pass.

        Args:
            images: (B, 3, H, W) normalised images.
            layers: layer indices (negative from the end).
            facet: one of :data:`FACETS`.
            channel_order: q/k/v channel order (ignored for ``token``).
        Returns:
            {layer_index: (B, T, C)} with CLS first; keys are the resolved (non-negative) indices.
        """
        if facet not in FACETS:
            raise ConfigError(f"unknown --facet '{facet}'; choose one of: {', '.join(FACETS)}")
        wanted = sorted({self.resolve_layer(int(l)) for l in layers})
        last = wanted[-1]
        out: Dict[int, torch.Tensor] = {}
        x = self.embed(images)
        for i, blk in enumerate(self.vit.blocks[: last + 1]):
            if i in wanted and facet != "token":
                qkv = blk.attn.qkv(blk.norm1(x))
                out[i] = self.split_qkv(qkv, facet, channel_order)
                if i == last:
                    break  # the rest of the last block is not needed
            x = blk(x)
            if i in wanted and facet == "token":
                out[i] = x
        return out

    def forward_facet(
        self, images: torch.Tensor, layer: int = -1, facet: str = "key", channel_order: str = "dim_major"
    ) -> torch.Tensor:
        """Dense facet map at one layer, CLS dropped.

        Args:
            images: (B, 3, H, W) normalised images.
        Returns:
            (B, C, h, w) with h = H // p, w = W // p.
        """
        idx = self.resolve_layer(layer)
        tokens = self.forward_intermediates(images, [idx], facet, channel_order)[idx]
        h, w = self.grid_size(images.shape[-2], images.shape[-1])
        return tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], self.embed_dim, h, w)

    def forward_final(self, images: torch.Tensor) -> torch.Tensor:
        """All blocks then the final norm (the model's ``last_hidden_state``).

        Args:
            images: (B, 3, H, W) normalised images.
        Returns:
            (B, T, C).
        """
        x = self.embed(images)
        for blk in self.vit.blocks:
            x = blk(x)
        return self.vit.norm(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # noqa: D401 - nn.Module entry point
        """Same as :meth:`forward_facet` with the defaults (last layer, key facet): (B, 3, H, W) -> (B, C, h, w)."""
        return self.forward_facet(images)

