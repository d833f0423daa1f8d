"""An optional correspondence term for LiFT training (``--match_weight``): upsampled features must find themselves
again in a warped copy of the image.

The paper's objective makes LiFT imitate the backbone's features of the 2x input. That target is more *precise*
than bilinear upsampling (its cells are half as wide) but less *robust*: at coarse thresholds it makes more gross
matching errors than bilinear (pretrained/README.md), and LiFT inherits that ceiling. This term trains what dense
matching needs directly, self-supervised, with no annotation:

1. the source view is the training input at S/2 (``img_half``, whose LiFT output the reconstruction term already
   computes); the target view is a random sub-box of it (side ``f`` in [``min_scale``, 1] of the image, aspect ratio
   log-uniform in [3/4, 4/3], uniform position), resized back to S/2, mirrored with probability 1/2 and
   colour-jittered (:func:`random_warps`, :func:`render_warps`); the frozen backbone gives its features;
2. LiFT upsamples both; for a G x G stratified set of points of the target view (one per sub-block, each mapped
   exactly into the source by the affine warp), the source feature read bilinearly at the point is matched by
   softmax over *every* cell of the target's LiFT map (cosine / ``temperature``), and the loss is the cross-entropy
   of the cell that contains the true point (:func:`matching_loss`): InfoNCE over 4hw candidates per point.

Coordinates are ``align_corners=False`` normalised coordinates in [-1, 1] throughout (a pixel's centre is at
``(2 i + 1) / W - 1``); the warp of sample b maps target coordinates ``u`` to source coordinates
``A_b u + t_b`` with ``A_b = diag(sx_b, sy_b)`` (``sx_b < 0`` when mirrored), exactly what
``F.affine_grid(theta, align_corners=False)`` samples, so the point map and the rendered pixels agree.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

_JITTER = 0.3  # brightness / contrast / saturation factors in [1 - j, 1 + j], as the warp probe


def random_warps(batch: int, gen: torch.Generator, min_scale: float = 0.5) -> torch.Tensor:
    """(B, 2, 3) affine matrices (target -> source, normalised coordinates): a random sub-box of side f in
    [min_scale, 1] with aspect jitter, at a uniform position, mirrored with probability 1/2."""
    u = torch.rand(batch, 5, generator=gen, dtype=torch.float64)
    f = min_scale + (1.0 - min_scale) * u[:, 0]
    ratio = torch.exp((2 * u[:, 1] - 1) * math.log(4 / 3))
    sx, sy = (f * ratio.sqrt()).clamp(max=1.0), (f / ratio.sqrt()).clamp(max=1.0)
    tx, ty = (2 * u[:, 2] - 1) * (1 - sx), (2 * u[:, 3] - 1) * (1 - sy)
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0).to(torch.float64)
    theta = torch.zeros(batch, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 2] = sx * flip, tx
    theta[:, 1, 1], theta[:, 1, 2] = sy, ty
    return theta.float()


def render_warps(images: torch.Tensor, theta: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                 gen: torch.Generator, jitter: float = _JITTER) -> torch.Tensor:
    """The target views: (B, 3, H, W) normalised images warped by ``theta`` (bilinear, border-clamped) and
    colour-jittered (brightness, contrast, saturation per image, in pixel space), renormalised; same shape."""
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if jitter == 0:
        return out
    m, s = mean.view(1, 3, 1, 1).to(images), std.view(1, 3, 1, 1).to(images)
    b, c, sat = (1 + jitter * (2 * torch.rand(3, images.shape[0], generator=gen) - 1)).to(images).view(3, -1, 1, 1, 1)
    px = (out * s + m) * b
    mean_grey = _grey(px).mean(dim=(2, 3), keepdim=True)
    px = (px - mean_grey) * c + mean_grey
    g = _grey(px)
    px = ((px - g) * sat + g).clamp(0, 1)
    return (px - m) / s


def _grey(px: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 1, H, W) luma (ITU-R 601 weights)."""
    return 0.299 * px[:, :1] + 0.587 * px[:, 1:2] + 0.114 * px[:, 2:3]


def query_points(theta: torch.Tensor, grid: int, gen: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """G x G stratified points of every target view and their exact source positions.

    Returns:
        (target points, source points), each (B, G*G, 2) normalised (x, y) coordinates in (-1, 1).
    """
    batch = theta.shape[0]
    k = torch.arange(grid, dtype=torch.float32)
    ty, tx = torch.meshgrid(k, k, indexing="ij")
    u = torch.rand(batch, 2, grid, grid, generator=gen)
    pts = torch.stack([(tx + u[:, 0]) / grid, (ty + u[:, 1]) / grid], dim=-1).reshape(batch, -1, 2) * 2 - 1
    src = pts @ theta[:, :, :2].transpose(1, 2) + theta[:, None, :, 2]
    return pts, src


def matching_loss(src_feats: torch.Tensor, trg_feats: torch.Tensor, theta: torch.Tensor, grid: int,
                  temperature: float, gen: torch.Generator) -> torch.Tensor:
    """InfoNCE of the true cell (see the module docstring).

    Args:
        src_feats: (B, C, h, w) LiFT output of the source views; trg_feats: (B, C, h', w') of the target views.
        theta: (B, 2, 3) from :func:`random_warps`.
    Returns:
        scalar: mean over points of -log softmax probability of the cell holding the true point.
    """
    trg_pts, src_pts = query_points(theta, grid, gen)
    src = F.normalize(src_feats.float(), dim=1)
    trg = F.normalize(trg_feats.float(), dim=1)
    q = F.grid_sample(src, src_pts.to(src).unsqueeze(1), mode="bilinear", padding_mode="border",
                      align_corners=False)[:, :, 0].transpose(1, 2)  # B, K, C
    q = F.normalize(q, dim=2)
    _, _, h, w = trg.shape
    logits = torch.einsum("bkc,bcn->bkn", q, trg.flatten(2)) / temperature  # B, K, h*w
    p = trg_pts.to(src)
    col = ((p[..., 0] + 1) / 2 * w).floor().clamp(0, w - 1).long()
    row = ((p[..., 1] + 1) / 2 * h).floor().clamp(0, h - 1).long()
    return F.cross_entropy(logits.flatten(0, 1), (row * w + col).flatten())


def add_views(targets: Dict[str, torch.Tensor], ext, cfg, step: int, rank: int,
              autocast: Callable = contextlib.nullcontext) -> Optional[Dict[str, object]]:
    """None when the term is off (``cfg.match_weight`` 0). Otherwise add one training step's warped views to ``targets``: ``warp_theta`` (B, 2, 3), ``img_warp`` (B, 3, S/2, S/2)
    and the frozen backbone's ``feat_warp`` (B, C, S/2p, S/2p); return the settings :func:`pair_losses
    <liftkit.train.objective.pair_losses>` takes. The warps depend on (``cfg.seed``, ``step``, ``rank``) only, so a
    resumed run draws the same ones.

    ``ext``: the frozen extractor (``extract_descriptors``, ``spec.mean``/``std``); ``cfg``: a TrainConfig.
    """
    if not cfg.match_weight > 0:
        return None
    seed = int(np.random.default_rng([cfg.seed, step, rank, 5]).integers(0, 2**62))
    gen = torch.Generator().manual_seed(seed)
    img = targets["img_half"]
    theta = random_warps(img.shape[0], gen, cfg.match_scale_min)
    targets["warp_theta"] = theta.to(img.device)
    targets["img_warp"] = render_warps(img, theta, torch.tensor(ext.spec.mean), torch.tensor(ext.spec.std), gen)
    with torch.no_grad(), autocast():
        targets["feat_warp"] = ext.extract_descriptors(targets["img_warp"]).float()
    return {"weight": cfg.match_weight, "temperature": cfg.match_temp, "grid": cfg.match_grid, "generator": gen}
