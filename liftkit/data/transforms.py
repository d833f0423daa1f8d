"""The size policy and the image -> tensor transform.

Size policy (never crops, so no pixel of the image is lost and features cover the whole picture):
  * ``resize_mode="short"`` (default): scale so the short side is ``load_size`` (aspect ratio kept), then round each
    side to the nearest multiple of the patch size p (at least p);
  * ``resize_mode="square"``: resize to ``load_size x load_size`` (the official LiFT protocol), rounded likewise;
  * ``load_size=None``: keep the image's size, rounded likewise.
The grid is then (h, w) = (H // p, W // p) exactly.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from liftkit.errors import ConfigError

RESIZE_MODES = ("short", "square")


def round_to_multiple(x: float, p: int) -> int:
    """Nearest multiple of p, at least p."""
    return max(p, int(round(x / p)) * p)


def target_size(
    image_wh: Tuple[int, int], patch_size: int, load_size: Optional[int] = None, resize_mode: str = "short"
) -> Tuple[int, int]:
    """(H, W) the image is resized to, both multiples of ``patch_size``.

    Args:
        image_wh: (width, height) of the original image (PIL order).
    """
    w, h = image_wh
    if resize_mode not in RESIZE_MODES:
        raise ConfigError(f"unknown --resize_mode '{resize_mode}'; choose one of: {', '.join(RESIZE_MODES)}")
    if load_size is not None and load_size < patch_size:
        raise ConfigError(f"--load_size {load_size} is smaller than the {patch_size}-px patch; use at least {patch_size}")
    if load_size is None:
        th, tw = float(h), float(w)
    elif resize_mode == "square":
        th = tw = float(load_size)
    else:
        s = load_size / min(h, w)
        th, tw = h * s, w * s
    return round_to_multiple(th, patch_size), round_to_multiple(tw, patch_size)


def to_tensor(
    image: Image.Image, size_hw: Sequence[int], mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """Resize (bicubic, anti-aliased) an RGB PIL image to ``size_hw`` and normalise it.

    Returns:
        (1, 3, H, W) float32.
    """
    hh, ww = int(size_hw[0]), int(size_hw[1])
    if image.size != (ww, hh):
        image = image.resize((ww, hh), Image.BICUBIC)
    arr = np.asarray(image, dtype=np.float32) / 255.0
    x = torch.from_numpy(arr).permute(2, 0, 1)
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return ((x - m) / s).unsqueeze(0).contiguous()


def denormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Invert :func:`to_tensor`'s normalisation: (B, 3, H, W) -> (B, 3, H, W) in [0, 1]."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device)[:, None, None]
    s = torch.tensor(std, dtype=x.dtype, device=x.device)[:, None, None]
    return (x * s + m).clamp(0, 1)


def official_normalisation(model_type: str) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """(mean, std) as the official LiFT extractor picks them: ImageNet's for ``dino*`` names, else 0.5."""
    if "dino" in model_type:
        return (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def official_to_tensor(image: Image.Image, load_size: Optional[int], mean: Sequence[float], std: Sequence[float],
                       patch_size: int) -> torch.Tensor:
    """The official LiFT / dino-vit-features preprocessing (``--protocol official``), bit for bit: torchvision's
    ``Resize(load_size, LANCZOS)`` (short side to load_size, long side ``int(load_size * long / short)``), ``ToTensor``,
    ``Normalize``; then the right/bottom remainder that the patch embedding's strided convolution ignores is cropped.

    Returns:
        (1, 3, H, W) float32, H and W multiples of ``patch_size``.
    """
    w, h = image.size
    if load_size:
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(load_size * long / short)
        size = (load_size, new_long) if w <= h else (new_long, load_size)
        if size != (w, h):
            image = image.resize(size, Image.LANCZOS)
    x = torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1).float().div(255)
    x = x.sub(torch.tensor(mean).view(3, 1, 1)).div(torch.tensor(std).view(3, 1, 1))
    hh, ww = x.shape[1] // patch_size * patch_size, x.shape[2] // patch_size * patch_size
    return x[None, :, :hh, :ww].contiguous()
