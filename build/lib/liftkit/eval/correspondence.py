"""Keypoint correspondence by nearest neighbours of dense features, and PCK.

Protocol (the LiFT paper's SPair-71k evaluation, which these functions implement by default):

1. :func:`pad_to_square`: resize the image so its long side is S (Lanczos), paste it centred on a black S x S
   canvas; :class:`PadGeometry` moves keypoints and boxes the same way (``x' = x * s + ox``, ``s = S / max(W, H)``).
2. Features (C, h, w) of both images are L2-normalised over channels and upsampled (bilinear, ``align_corners``
   False) to S x S.
3. :func:`match_keypoints`: each source keypoint takes the feature at its pixel (``int(x), int(y)``) and the target
   pixel of highest cosine similarity is its match, among **all** S x S target pixels (first maximum on ties).
4. :func:`pck_correct`: a match is correct when its distance to the target keypoint is **below** (strictly, as in
   the official script) ``alpha * max(box height, box width)`` of the target box in the padded frame.
   :class:`PCKAccumulator` gives PCK per category, averaged over categories (the paper's number) and over
   keypoints.

Nothing of size (S*S) x (S*S) is built. Bilinear upsampling is linear, so the similarity of a source vector q with the
upsampled target map equals the bilinear upsampling of q's similarity with the low-resolution target map: the
default path computes (K, h, w) similarities and upsamples those to (K, S, S). The source vector at an S x S pixel
is sampled directly from the low-resolution map with ``grid_sample`` at that pixel's centre, which equals indexing the
upsampled map (same weights, borders clamped).

Two fixes of official quirks, off by default:
``renorm_after_upsample`` re-normalises the upsampled vectors (bilinear mixing of unit vectors shortens them, so
the official score is not exactly a cosine); then the target map is upsampled explicitly (C x S x S).
``subpixel`` samples the source feature at the exact keypoint position instead of truncating it to an integer pixel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

DEFAULT_ALPHAS = (0.05, 0.1, 0.15)


# ------------------------------------------------------------------------------------------ padding geometry
@dataclass(frozen=True)
class PadGeometry:
    """How an image of ``(width, height)`` is placed in the S x S padded square.

    Attributes:
        width, height: the original size in pixels.
        size: S, the side of the square.
        scale: s = S / max(width, height).
        new_width, new_height: the resized image (the long side is S, the short side ``round(S * short / long)``).
        offset_x, offset_y: where its top-left corner sits on the canvas (``int((S - new) / 2)`` on the short axis).
    """

    width: int
    height: int
    size: int
    scale: float
    new_width: int
    new_height: int
    offset_x: int
    offset_y: int

    def apply(self, points: np.ndarray) -> np.ndarray:
        """(K, 2) ``(x, y)`` in the original image -> (K, 2) in the padded square (float64)."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        return p * self.scale + np.array([self.offset_x, self.offset_y], dtype=np.float64)

    def invert(self, points: np.ndarray) -> np.ndarray:
        """(K, 2) in the padded square -> (K, 2) in the original image (float64)."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        return (p - np.array([self.offset_x, self.offset_y], dtype=np.float64)) / self.scale

    def apply_box(self, box: Sequence[float]) -> np.ndarray:
        """``(x1, y1, x2, y2)`` in the original image -> the same box in the padded square, (4,) float64."""
        return self.apply(np.asarray(box, dtype=np.float64).reshape(2, 2)).reshape(4)


def pad_geometry(width: int, height: int, size: int) -> PadGeometry:
    """The placement of a ``width x height`` image in an S x S square (official LiFT / SD-DINO rounding)."""
    if width <= 0 or height <= 0 or size <= 0:
        raise ValueError(f"sizes must be positive, got {width}x{height} -> {size}")
    scale = size / max(width, height)
    if height < width:
        nw, nh = size, int(np.around(size * height / width))
    elif width < height:
        nw, nh = int(np.around(size * width / height)), size
    else:
        nw = nh = size
    return PadGeometry(width, height, size, scale, nw, nh, int((size - nw) / 2), int((size - nh) / 2))


def pad_to_square(image: Image.Image, size: int) -> Tuple[Image.Image, PadGeometry]:
    """Resize the long side of an RGB image to S (Lanczos) and centre it on a black S x S canvas.

    Returns:
        (the S x S RGB image, its :class:`PadGeometry`).
    """
    geo = pad_geometry(image.size[0], image.size[1], size)
    resized = image.convert("RGB").resize((geo.new_width, geo.new_height), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (size, size), (0, 0, 0))
    canvas.paste(resized, (geo.offset_x, geo.offset_y))
    return canvas, geo


# ------------------------------------------------------------------------------------------ matching
def _pixel_grid(points: torch.Tensor, size: int) -> torch.Tensor:
    """(K, 2) pixel ``(x, y)`` of an S x S image -> (1, 1, K, 2) grid_sample coordinates of those pixels' centres."""
    return ((2.0 * points + 1.0) / size - 1.0).view(1, 1, -1, 2)


def query_points(points: np.ndarray, size: int, subpixel: bool = False) -> torch.Tensor:
    """Source keypoints -> the positions features are read at, (K, 2) float32 ``(x, y)`` in ``[0, S-1]``.

    Default (official): truncate to the integer pixel (``int(x)``, ``floor(y)``: equal for x, y >= 0).
    ``subpixel``: keep the exact position.
    """
    p = torch.as_tensor(np.asarray(points, dtype=np.float64).reshape(-1, 2), dtype=torch.float64)
    if not subpixel:
        p = p.floor()
    return p.clamp(0, size - 1).float()


def sample_at_pixels(feats: torch.Tensor, points: torch.Tensor, size: int) -> torch.Tensor:
    """The vectors of ``F.interpolate(feats, (S, S), mode="bilinear")`` at (possibly fractional) pixels, without
    building the upsampled map.

    Args:
        feats: (C, h, w).
        points: (K, 2) ``(x, y)`` pixel coordinates of the S x S image.
    Returns:
        (K, C).
    """
    grid = _pixel_grid(points.to(feats.device, feats.dtype), size)
    out = F.grid_sample(feats[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, 0].t()


def similarity_maps(
    src_feats: torch.Tensor,
    trg_feats: torch.Tensor,
    src_points: np.ndarray,
    size: int,
    renorm_after_upsample: bool = False,
    subpixel: bool = False,
) -> torch.Tensor:
    """Similarity of each source keypoint's feature with every target pixel.

    Args:
        src_feats: (C, hs, ws) source features (any scale; normalised here).
        trg_feats: (C, ht, wt) target features.
        src_points: (K, 2) source keypoints ``(x, y)`` in the S x S padded frame.
        size: S.
    Returns:
        (K, S, S) float32 similarities (cosine when ``renorm_after_upsample``).
    """
    src = F.normalize(src_feats.float(), dim=0)
    trg = F.normalize(trg_feats.float(), dim=0)
    q = sample_at_pixels(src, query_points(src_points, size, subpixel), size)  # K, C
    if renorm_after_upsample:
        q = F.normalize(q, dim=1)
        up = F.interpolate(trg[None], size=(size, size), mode="bilinear", align_corners=False)[0]
        up = F.normalize(up, dim=0)
        return torch.einsum("kc,chw->khw", q, up)
    low = torch.einsum("kc,chw->khw", q, trg)
    return F.interpolate(low[None], size=(size, size), mode="bilinear", align_corners=False)[0]


def argmax_pixels(sim: torch.Tensor) -> torch.Tensor:
    """(K, H, W) scores -> (K, 2) long ``(x, y)`` of each map's maximum (the first one in raster order on ties)."""
    k, h, w = sim.shape
    idx = sim.reshape(k, h * w).argmax(dim=1)
    return torch.stack([idx % w, idx // w], dim=1)


def match_keypoints(
    src_feats: torch.Tensor,
    trg_feats: torch.Tensor,
    src_points: np.ndarray,
    size: int,
    renorm_after_upsample: bool = False,
    subpixel: bool = False,
) -> np.ndarray:
    """Nearest-neighbour transfer of source keypoints to the target image (see the module docstring).

    Args:
        src_feats: (C, hs, ws); trg_feats: (C, ht, wt); src_points: (K, 2) in the S x S frame; size: S.
    Returns:
        (K, 2) int64 predicted target pixels ``(x, y)``.
    """
    sim = similarity_maps(src_feats, trg_feats, src_points, size, renorm_after_upsample, subpixel)
    return argmax_pixels(sim).cpu().numpy().astype(np.int64)


# ------------------------------------------------------------------------------------------ PCK
def bbox_threshold(box: Sequence[float]) -> float:
    """``max(height, width)`` of an ``(x1, y1, x2, y2)`` box (the SPair PCK reference length)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return max(y2 - y1, x2 - x1)


def pck_correct(
    pred: np.ndarray, gt: np.ndarray, threshold: float, alphas: Sequence[float] = DEFAULT_ALPHAS
) -> np.ndarray:
    """Which predictions are within ``alpha * threshold`` of the ground truth (strictly).

    Args:
        pred, gt: (K, 2) ``(x, y)``.
        threshold: the reference length (see :func:`bbox_threshold`).
    Returns:
        (len(alphas), K) bool.
    """
    err = np.linalg.norm(np.asarray(pred, np.float64).reshape(-1, 2) - np.asarray(gt, np.float64).reshape(-1, 2),
                         axis=1)
    return err[None, :] < np.asarray(alphas, np.float64)[:, None] * float(threshold)


def alpha_key(alpha: float) -> str:
    """``0.1`` -> ``"pck@0.1"`` (the JSON / table key)."""
    return f"pck@{alpha:g}"


@dataclass
class PCKAccumulator:
    """Counts correct keypoints per category.

    Attributes:
        alphas: the PCK thresholds.
        correct: category -> (len(alphas),) int64 counts of correct keypoints.
        total: category -> number of keypoints.
        pairs: category -> number of pairs.
    """

    alphas: Tuple[float, ...] = DEFAULT_ALPHAS
    correct: Dict[str, np.ndarray] = field(default_factory=dict)
    total: Dict[str, int] = field(default_factory=dict)
    pairs: Dict[str, int] = field(default_factory=dict)

    def add(self, category: str, correct: np.ndarray) -> None:
        """Record one pair: ``correct`` is (len(alphas), K) bool from :func:`pck_correct`."""
        c = np.asarray(correct, dtype=bool)
        if c.ndim != 2 or c.shape[0] != len(self.alphas):
            raise ValueError(f"expected ({len(self.alphas)}, K) booleans, got shape {c.shape}")
        self.correct[category] = self.correct.get(category, np.zeros(len(self.alphas), np.int64)) + c.sum(1)
        self.total[category] = self.total.get(category, 0) + c.shape[1]
        self.pairs[category] = self.pairs.get(category, 0) + 1

    def categories(self) -> List[str]:
        return sorted(self.total)

    def per_category(self) -> Dict[str, Dict[str, float]]:
        """category -> {``pck@alpha``: fraction of its keypoints that are correct}."""
        return {
            cat: {alpha_key(a): float(self.correct[cat][i] / self.total[cat]) if self.total[cat] else float("nan")
                  for i, a in enumerate(self.alphas)}
            for cat in self.categories()
        }

    def mean_over_categories(self) -> Dict[str, float]:
        """{``pck@alpha``: mean of the per-category PCKs} (the paper's number)."""
        per = self.per_category()
        return {alpha_key(a): float(np.mean([per[c][alpha_key(a)] for c in per])) if per else float("nan")
                for a in self.alphas}

    def over_keypoints(self) -> Dict[str, float]:
        """{``pck@alpha``: correct keypoints / all keypoints, all categories pooled}."""
        n = sum(self.total.values())
        return {alpha_key(a): float(sum(int(self.correct[c][i]) for c in self.total) / n) if n else float("nan")
                for i, a in enumerate(self.alphas)}

    def summary(self) -> dict:
        """Everything as plain JSON-able values."""
        return {
            "mean_over_categories": self.mean_over_categories(),
            "over_keypoints": self.over_keypoints(),
            "per_category": self.per_category(),
            "keypoints": {c: self.total[c] for c in self.categories()},
            "pairs": {c: self.pairs[c] for c in self.categories()},
        }

