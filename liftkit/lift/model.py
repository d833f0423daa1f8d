"""The LiFT module: a ~1.2 M-parameter CNN that doubles the density of ViT patch features.

Architecture and parameter names are exactly the official release's (``up1``, ``outc``, ``image_convs_1``,
``image_convs_2``), so official ``lift_*.pth`` files load strictly and unchanged: 1,187,280 parameters for C=384 and
4,417,296 for C=768.

Shapes: features (B, C, h, w) and the image (B, 3, H, W) it came from -> (B, C, 2h, 2w).

Generalisation over the official code: the official module maps the stride-4 image branch to the 2h x 2w grid with
``Identity`` (p=8) or ``MaxPool2d(2)`` (p=16) and crashes for patch 14 or when H is not exactly h * p (e.g. 56 px with
p=16). Here that step is ``adaptive_max_pool2d`` to (2h, 2w), which equals ``Identity`` / ``MaxPool2d(2)`` exactly when
the stride-4 map is 2h x 2w / 4h x 4w (pinned by a test), and works for any p and image size.
"""

from __future__ import annotations

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
    """2x transposed conv, concatenate the 32-channel image features, DoubleConv.

    (B, in, h, w), (B, 32, 2h, 2w) -> (B, out // 2, 2h, 2w).
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.conv_1 = DoubleConv(in_channels // 2 + 32, out_channels // 2)

    def forward(self, x: torch.Tensor, imgs_1: torch.Tensor) -> torch.Tensor:
        return self.conv_1(torch.cat([self.up(x), imgs_1], dim=1))


def _conv_bn_relu(cin: int, cout: int) -> list:
    return [nn.Conv2d(cin, cout, kernel_size=3, padding=1, stride=2), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class LiFT(nn.Module):
    """LiFT feature upsampler.

    Args:
        in_channels: C, the backbone's channel count (384 for ViT-S, 768 for ViT-B).
        patch_size: p (kept for the record and for callers; any p works).
        residual: predict a correction to bilinear upsampling: ``out = bilinear_2x(feats) + net(feats, images)``.
            Same parameters and names as the official module (official files use ``residual=False``); the output
            convolution starts at zero, so an untrained residual LiFT is exactly bilinear upsampling. See
            ``pretrained/README.md`` for why our shipped LiFT uses it.
    """

    def __init__(self, in_channels: int, patch_size: int, residual: bool = False):
        super().__init__()
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.residual = residual
        self.up1 = Up(in_channels + 32, in_channels)
        self.outc = nn.Conv2d(in_channels // 2, in_channels, kernel_size=1)
        self.image_convs_1 = nn.Sequential(*_conv_bn_relu(3, 32), *_conv_bn_relu(32, 32))
        self.image_convs_2 = nn.Sequential(*_conv_bn_relu(32, 32))
        if residual:  # start as exact bilinear upsampling; training learns the correction
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
        imgs_1 = self.image_convs_1(images)  # B, 32, ~H/4, ~W/4
        if imgs_1.shape[-2:] != (2 * h, 2 * w):
            imgs_1 = F.adaptive_max_pool2d(imgs_1, (2 * h, 2 * w))
        imgs_2 = self.image_convs_2(imgs_1)  # B, 32, h, w
        x = torch.cat([feats, imgs_2], dim=1)
        out = self.outc(self.up1(x, imgs_1))
        if self.residual:
            out = out + F.interpolate(feats, size=(2 * h, 2 * w), mode="bilinear", align_corners=False)
        return out

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
