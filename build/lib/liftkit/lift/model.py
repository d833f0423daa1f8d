"""The LiFT module: a ~1.2 M-parameter CNN that doubles the density of ViT patch features.

Architecture and parameter names are exactly the official release's (``up1``, ``outc``, ``image_convs_1``,
``image_convs_2``), so official ``lift_*.pth`` files load strictly and unchanged: 1,187,280 parameters for C=384 and
4,417,296 for C=768.

Shapes: features (B, C, h, w) and the image (B, 3, H, W) it came from -> (B, C, 2h, 2w).

Generalisation over the official code: the official module maps the stride-4 image branch to the 2h x 2w grid with
``Identity`` (p=8) or ``MaxPool2d(2)`` (p=16) and crashes for patch 14 or when H is not exactly h * p (e.g. 56 px with
p=16). Here that step is ``adaptive_max_pool2d`` to (2h, 2w), which equals ``Identity`` / ``MaxPool2d(2)`` exactly when
the stride-4 map is 2h x 2w / 4h x 4w (pinned by a test), and works for any p and image size.

Architectures (``arch``): ``lift`` (the paper's); ``lift_noimage`` (the paper's ablation without the image input:
no image branch, ``up1`` sees the features only); ``resize_conv`` (the paper's resize-conv baseline: bilinear 2x
upsampling, then two 3x3 conv-BN-ReLU layers of C/2 channels; about LiFT's parameter count: 1,070,208 vs 1,187,280
for C=384). Each ends in ``outc`` and any head.

Output heads (``head``; the body is the same in all three, official parameter names throughout):

* ``plain`` (the paper's): ``outc`` predicts the C output channels.
* ``residual``: ``outc`` predicts a correction added to the bilinear 2x upsampling of the input features; ``outc``
  starts at zero, so an untrained residual LiFT is bilinear upsampling.
* ``attend``: ``outc`` predicts, for every output cell, k*k logits over the k x k neighbourhood of its parent cell
  in the input grid; the output is the softmax-weighted sum of those input features. It cannot leave the convex hull
  of nearby backbone features, and can only sharpen where the image says so. The logits are ``outc(...) + log
  prior``; with the ``bilinear`` prior (default) and ``outc`` at zero an untrained attend LiFT is bilinear
  upsampling (2x bilinear weights all lie in the 3 x 3 neighbourhood); with the ``uniform`` prior it is a k x k box
  filter of the input grid, repeated 2x2. Borders replicate the edge cells (as bilinear upsampling clamps).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class DoubleConv(nn.Module):
    """(3x3 conv -> BN -> ReLU) x 2, no conv bias. (B, in, h, w) -> (B, out, h, w)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class Up(nn.Module):
    """2x transposed conv, concatenate the 32-channel image features (if any), DoubleConv.

    (B, in, h, w), (B, 32, 2h, 2w) or None -> (B, out // 2, 2h, 2w).
    """

    def __init__(self, in_channels: int, out_channels: int, image_channels: int = 32):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.conv_1 = DoubleConv(in_channels // 2 + image_channels, out_channels // 2)

    def forward(self, x: torch.Tensor, imgs_1: Optional[torch.Tensor]) -> torch.Tensor:
        x = self.up(x)
        return self.conv_1(x if imgs_1 is None else torch.cat([x, imgs_1], dim=1))


def _conv_bn_relu(cin: int, cout: int) -> list:
    return [nn.Conv2d(cin, cout, kernel_size=3, padding=1, stride=2), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


ARCHS = ("lift", "lift_noimage", "resize_conv")
HEADS = ("plain", "residual", "attend")
ATTEND_PRIORS = ("bilinear", "uniform")
_PRIOR_FLOOR = 1e-6  # prior weight of neighbours bilinear upsampling does not use (learnable, never exactly 0)


def attend_log_prior(kernel: int, prior: str) -> torch.Tensor:
    """Log prior weights of the attend head: (4, k*k), one row per output sub-position (dy, dx) in {0,1}^2
    (row ``2 * dy + dx``), columns the neighbours in raster order (offsets -k//2 .. k//2).

    ``bilinear``: the weights of ``F.interpolate(scale_factor=2, mode="bilinear", align_corners=False)``
    (0.75/0.25 per axis toward the sub-position's side), floored at 1e-6 elsewhere; ``uniform``: zeros.
    """
    if kernel < 3 or kernel % 2 == 0:
        raise ValueError(f"attend kernel must be odd and >= 3, got {kernel}")
    if prior not in ATTEND_PRIORS:
        raise ValueError(f"unknown attend prior '{prior}'; choose one of: {', '.join(ATTEND_PRIORS)}")
    r = kernel // 2
    out = torch.zeros(4, kernel * kernel, dtype=torch.float64)
    if prior == "uniform":
        return out.float()
    for dy in (0, 1):
        for dx in (0, 1):
            wy = torch.full((kernel,), _PRIOR_FLOOR, dtype=torch.float64)
            wx = torch.full((kernel,), _PRIOR_FLOOR, dtype=torch.float64)
            wy[r], wy[r - 1 if dy == 0 else r + 1] = 0.75, 0.25
            wx[r], wx[r - 1 if dx == 0 else r + 1] = 0.75, 0.25
            out[2 * dy + dx] = torch.outer(wy, wx).flatten().clamp_min(_PRIOR_FLOOR).log()
    return out.float()


def attend_combine(feats: torch.Tensor, logits: torch.Tensor, kernel: int) -> torch.Tensor:
    """The attend head's output: for each output cell, the softmax(logits)-weighted sum of the k x k input features
    around its parent cell.

    Args:
        feats: (B, C, h, w) input features.
        logits: (B, k*k, 2h, 2w), neighbours in raster order.
    Returns:
        (B, C, 2h, 2w).
    """
    h, w = feats.shape[-2:]
    r = kernel // 2
    weights = torch.softmax(logits.float(), dim=1).to(feats.dtype)
    padded = F.pad(feats, (r, r, r, r), mode="replicate")
    out = None
    for j in range(kernel * kernel):
        oy, ox = divmod(j, kernel)
        nb = padded[:, :, oy:oy + h, ox:ox + w]
        nb = nb.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)  # each output cell sees its parent's
        term = weights[:, j:j + 1] * nb
        out = term if out is None else out + term
    return out


class LiFT(nn.Module):
    """LiFT feature upsampler.

    Args:
        in_channels: C, the backbone's channel count (384 for ViT-S, 768 for ViT-B).
        patch_size: p (kept for the record and for callers; any p works).
        head: ``plain`` (the paper's, official files), ``residual`` or ``attend`` (see the module docstring).
            ``residual`` and ``attend`` start as bilinear upsampling (``outc`` initialised to zero).
        residual: legacy spelling of ``head="residual"``.
        kernel: k, the attend head's neighbourhood (odd, >= 3).
        prior: the attend head's prior, ``bilinear`` or ``uniform``.
        arch: ``lift`` (default), ``lift_noimage`` or ``resize_conv`` (see the module docstring).
    """

    def __init__(self, in_channels: int, patch_size: int, residual: bool = False, head: str = "plain",
                 kernel: int = 3, prior: str = "bilinear", arch: str = "lift"):
        super().__init__()
        if residual:
            head = "residual"
        if head not in HEADS:
            raise ValueError(f"unknown LiFT head '{head}'; choose one of: {', '.join(HEADS)}")
        if arch not in ARCHS:
            raise ValueError(f"unknown LiFT arch '{arch}'; choose one of: {', '.join(ARCHS)}")
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.head, self.arch = head, arch
        self.residual = head == "residual"
        self.kernel, self.prior = kernel, prior
        c = in_channels
        if arch == "lift":
            self.up1 = Up(c + 32, c)
            self.image_convs_1 = nn.Sequential(*_conv_bn_relu(3, 32), *_conv_bn_relu(32, 32))
            self.image_convs_2 = nn.Sequential(*_conv_bn_relu(32, 32))
        elif arch == "lift_noimage":
            self.up1 = Up(c, c, image_channels=0)
        else:
            self.convs = DoubleConv(c, c // 2)
        out_channels = kernel * kernel if head == "attend" else c
        self.outc = nn.Conv2d(c // 2, out_channels, kernel_size=1)
        if head == "attend":
            self.register_buffer("log_prior", attend_log_prior(kernel, prior), persistent=False)
        if head != "plain":  # start as exact bilinear upsampling (attend: as its prior); training learns the rest
            nn.init.zeros_(self.outc.weight)
            nn.init.zeros_(self.outc.bias)

    def forward(self, feats: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """One LiFT step.

        Args:
            feats: (B, C, h, w) backbone features.
            images: (B, 3, H, W) the normalised image the features came from (any H, W >= 4).
        Returns:
            (B, C, 2h, 2w).
        """
        h, w = feats.shape[-2:]
        out = self.outc(self._body(feats, images))
        if self.head == "residual":
            out = out + F.interpolate(feats, size=(2 * h, 2 * w), mode="bilinear", align_corners=False)
        elif self.head == "attend":
            prior = self.log_prior.to(out.dtype).view(2, 2, -1).permute(2, 0, 1)  # (k*k, 2, 2): [j, dy, dx]
            out = attend_combine(feats, out + prior.repeat(1, h, w).unsqueeze(0), self.kernel)
        return out

    def _body(self, feats: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w), (B, 3, H, W) -> (B, C/2, 2h, 2w), the input of ``outc``."""
        h, w = feats.shape[-2:]
        if self.arch == "resize_conv":
            return self.convs(F.interpolate(feats, size=(2 * h, 2 * w), mode="bilinear", align_corners=False))
        if self.arch == "lift_noimage":
            return self.up1(feats, None)
        imgs_1 = self.image_convs_1(images)  # B, 32, ~H/4, ~W/4
        if imgs_1.shape[-2:] != (2 * h, 2 * w):
            imgs_1 = F.adaptive_max_pool2d(imgs_1, (2 * h, 2 * w))
        imgs_2 = self.image_convs_2(imgs_1)  # B, 32, h, w
        return self.up1(torch.cat([feats, imgs_2], dim=1), imgs_1)

    def forward_iterative(self, feats: torch.Tensor, images: torch.Tensor, iterations: int = 1) -> torch.Tensor:
        """Apply the same module ``iterations`` times, upsampling the image 2x (bilinear) between steps, as the
        official ``--lift_iter`` does.

        Args:
            feats: (B, C, h, w); images: (B, 3, H, W).
        Returns:
            (B, C, 2^k h, 2^k w) for k = iterations.
        """
        for i in range(iterations):
            if i > 0:
                images = F.interpolate(images, scale_factor=2, mode="bilinear", align_corners=False)
            feats = self(feats, images)
        return feats


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (trainable or not, buffers excluded)."""
    return sum(p.numel() for p in module.parameters())
