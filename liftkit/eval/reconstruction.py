"""Reconstruction probe: how close is an upsampled low-resolution feature map to the backbone's own map of the
larger input — LiFT's training objective, measured on images it never saw.

For an S x S image x (normalised), the pyramid x_{S/2}, x_{S/4} is made by the training's own anti-aliased
downsampling (``liftkit.train.data.make_pyramid``) and the backbone gives F_S, F_{S/2}, F_{S/4}. A method of scale 2
is scored on the pairs ``S/2->S`` (its output from F_{S/2}, x_{S/2} against F_S) and ``S/4->S/2``; a method of scale
4 (``lift2``) on ``S/4->S``. Per image: the mean over locations of

* **raw cosine** between prediction and target, and
* **centred cosine**: the same after subtracting, from both, the mean target feature of the target's level
  (``S`` or ``S/2``) **over the evaluated images** (all their locations) — not a training statistic, so every
  method and every LiFT file is centred alike. Raw cosine is dominated by the component all ViT keys share; centred
  cosine measures the part that distinguishes locations.

Numbers are means over images (each image weighs the same); the sample size is the number of images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F

from liftkit.train.data import make_pyramid

LEVELS = ("S", "S/2", "S/4")
# pair -> (input level, target level)
PAIRS: Dict[str, Tuple[str, str]] = {"S/2->S": ("S/2", "S"), "S/4->S/2": ("S/4", "S/2"), "S/4->S": ("S/4", "S")}


def pairs_for_scale(scale: int) -> List[str]:
    """The pairs a method of this output scale is scored on (none for scale 1)."""
    return {2: ["S/2->S", "S/4->S/2"], 4: ["S/4->S"]}.get(int(scale), [])


@torch.no_grad()
def pyramid_features(extract: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                     downsample: str = "antialias") -> Dict[str, torch.Tensor]:
    """The backbone's maps and images of one (1, 3, S, S) image at S, S/2, S/4.

    Returns:
        {"S", "S/2", "S/4": (1, C, ., .) features on the CPU; "img:S/2", "img:S/4": the (1, 3, ., .) images}.
    """
    half, quarter = make_pyramid(x, downsample)
    out = {"img:S/2": half.cpu(), "img:S/4": quarter.cpu()}
    for level, img in zip(LEVELS, (x, half, quarter)):
        out[level] = extract(img).float().cpu()
    return out


def level_means(items: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """Mean feature (1, C, 1, 1) of each level over every location of every image (all images have one size)."""
    return {lv: torch.cat([it[lv] for it in items]).mean(dim=(0, 2, 3), keepdim=True) for lv in ("S", "S/2")}


def cosines(pred: torch.Tensor, target: torch.Tensor, centre: torch.Tensor) -> Tuple[float, float]:
    """(mean raw cosine, mean centred cosine) over the locations of (1, C, h, w) maps."""
    pred, target = pred.float().cpu(), target.float().cpu()
    raw = F.cosine_similarity(pred, target, dim=1, eps=1e-8).mean()
    cen = F.cosine_similarity(pred - centre, target - centre, dim=1, eps=1e-8).mean()
    return float(raw), float(cen)


@dataclass
class ReconAccumulator:
    """Per (method, pair): the per-image raw and centred cosines."""

    values: Dict[Tuple[str, str], List[Tuple[float, float]]] = field(default_factory=dict)

    def add(self, method: str, pair: str, raw: float, centred: float) -> None:
        self.values.setdefault((method, pair), []).append((raw, centred))

    def summary(self) -> Dict[str, Dict[str, dict]]:
        """method -> pair -> {"raw", "centred", "images"}."""
        out: Dict[str, Dict[str, dict]] = {}
        for (m, p), v in self.values.items():
            t = torch.tensor(v, dtype=torch.float64)
            out.setdefault(m, {})[p] = {"raw": float(t[:, 0].mean()), "centred": float(t[:, 1].mean()),
                                        "images": len(v)}
        return out


def score_item(item: Dict[str, torch.Tensor], means: Dict[str, torch.Tensor],
               predict: Callable[[torch.Tensor, torch.Tensor, int], Dict[str, torch.Tensor]],
               scales: Dict[str, int], acc: ReconAccumulator) -> None:
    """Score every method on one image's pyramid.

    Args:
        item: from :func:`pyramid_features`.
        means: from :func:`level_means`.
        predict: (low features, low image, scale) -> {method: prediction} for the methods of that scale.
        scales: method -> output scale.
    """
    for scale in sorted(set(scales.values())):
        for pair in pairs_for_scale(scale):
            src, trg = PAIRS[pair]
            preds = predict(item[src], item[f"img:{src}"], scale)
            for m, p in preds.items():
                acc.add(m, pair, *cosines(p, item[trg], means[trg]))
