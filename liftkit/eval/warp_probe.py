"""Dense correspondence without keypoint annotations: an image against a warped copy of itself, scored by PCK.

Geometry. Points are ``(x, y)`` in **continuous pixel coordinates**: pixel ``(i, j)`` (column, row) covers
``[i, i + 1) x [j, j + 1)`` and its centre is ``(i + 0.5, j + 0.5)``. A :class:`View` is an axis-aligned crop box of
the original image resized to ``out_wh`` (and optionally mirrored left-right): the affine map
``x' = (x - x0) * out_w / (x1 - x0)`` (then ``x' = out_w - x'`` if flipped), ``y' = (y - y0) * out_h / (y1 - y0)``.
PIL's ``resize(..., box=...)`` samples exactly this map, so :meth:`View.forward` / :meth:`View.inverse` are the
exact point maps of :meth:`View.render`.

The pair (:func:`random_pair`, seeded): the *source* is the centred square crop of the image (side = the short
side) at S x S; the *target* is a random sub-box of that square — side ``f`` times the square's (``f`` uniform in
``[min_scale, 1]``), aspect ratio log-uniform in ``[3/4, 4/3]``, uniform position — resized to S x S (a zoom of
1/f), mirrored with probability 1/2, and colour-jittered (brightness, contrast, saturation factors and a hue shift;
pixels only, the geometry is untouched). Both are rendered from the original image, so zooming in does not blur.

Query points: one point drawn uniformly (seeded) in each of the G x G sub-blocks of the target box (stratified, so
the points do not sit on a lattice aligned with any feature grid), mapped into the source; each has its true match
inside the target. A source point's feature is read by bilinear interpolation of the L2-normalised
source map at its exact position; its match is the most similar (cosine) target location:

* ``cell`` (default): the best target **feature cell**; the prediction is that cell's centre. A method's precision
  is then its grid's: on a 2x denser grid a cell is half as wide, so a 2x grid can show its precision (a 14-px
  backbone cell caps PCK at thresholds below ~7 px).
* ``pixel``: the similarity map is bilinearly upsampled to the target's pixels and the best pixel is the prediction
  (the SPair protocol of :mod:`liftkit.eval.correspondence`): interpolation gives every grid sub-cell positions.

PCK@alpha: share of points whose error is below ``alpha * max(target width, height)`` (strictly), over all points
and split by whether the target was mirrored (mirroring is what the features must be invariant to; a flipped pair is
harder for features that encode position).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

DEFAULT_ALPHAS = (0.01, 0.02, 0.03, 0.05, 0.1)
MATCH_MODES = ("cell", "pixel")
GROUPS = ("all", "no_flip", "flip")


@dataclass(frozen=True)
class View:
    """A crop box of the original image, resized to ``out_wh``, optionally mirrored; plus a colour jitter.

    Attributes:
        box: ``(x0, y0, x1, y1)`` in the original image's continuous coordinates.
        out_wh: (width, height) of the rendered view.
        flip: mirrored left-right after resizing.
        jitter: (brightness, contrast, saturation, hue); (1, 1, 1, 0) is none.
    """

    box: Tuple[float, float, float, float]
    out_wh: Tuple[int, int]
    flip: bool = False
    jitter: Tuple[float, float, float, float] = (1.0, 1.0, 1.0, 0.0)

    @property
    def scale_xy(self) -> Tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return self.out_wh[0] / (x1 - x0), self.out_wh[1] / (y1 - y0)

    def forward(self, points: np.ndarray) -> np.ndarray:
        """(K, 2) original-image points -> (K, 2) points of the view (float64)."""
        p = np.asarray(points, np.float64).reshape(-1, 2)
        sx, sy = self.scale_xy
        x = (p[:, 0] - self.box[0]) * sx
        y = (p[:, 1] - self.box[1]) * sy
        if self.flip:
            x = self.out_wh[0] - x
        return np.stack([x, y], axis=1)

    def inverse(self, points: np.ndarray) -> np.ndarray:
        """(K, 2) points of the view -> (K, 2) original-image points (float64)."""
        p = np.asarray(points, np.float64).reshape(-1, 2)
        sx, sy = self.scale_xy
        x = self.out_wh[0] - p[:, 0] if self.flip else p[:, 0]
        return np.stack([x / sx + self.box[0], p[:, 1] / sy + self.box[1]], axis=1)

    def render(self, image: Image.Image) -> Image.Image:
        """The view of an RGB image: crop + resize (bicubic) exactly as :meth:`forward`, mirror, colour jitter."""
        out = image.convert("RGB").resize(tuple(self.out_wh), Image.Resampling.BICUBIC, box=tuple(self.box))
        if self.flip:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        b, c, s, h = self.jitter
        if (b, c, s, h) != (1.0, 1.0, 1.0, 0.0):
            from torchvision.transforms import functional as TF

            out = TF.adjust_hue(TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(out, b), c), s), h)
        return out


def centre_square(width: int, height: int, size: int) -> View:
    """The centred square crop (side = the short side) of a ``width x height`` image, at ``size x size``."""
    side = float(min(width, height))
    x0, y0 = (width - side) / 2.0, (height - side) / 2.0
    return View((x0, y0, x0 + side, y0 + side), (size, size))


def random_pair(width: int, height: int, size: int, rng: np.random.Generator, min_scale: float = 0.5,
                jitter: float = 0.3, hue: float = 0.05) -> Tuple[View, View]:
    """(source, target) views of one image (see the module docstring); all randomness from ``rng``."""
    src = centre_square(width, height, size)
    x0, y0, x1, _ = src.box
    side = x1 - x0
    f = rng.uniform(min_scale, 1.0)
    ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    bw, bh = min(side, side * f * math.sqrt(ratio)), min(side, side * f / math.sqrt(ratio))
    bx, by = x0 + rng.uniform(0, side - bw), y0 + rng.uniform(0, side - bh)
    flip = bool(rng.uniform() < 0.5)
    jit = (float(rng.uniform(1 - jitter, 1 + jitter)), float(rng.uniform(1 - jitter, 1 + jitter)),
           float(rng.uniform(1 - jitter, 1 + jitter)), float(rng.uniform(-hue, hue)))
    return src, View((bx, by, bx + bw, by + bh), (size, size), flip, jit)


def query_points(src: View, trg: View, grid: int, rng: Optional[np.random.Generator] = None
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """G x G query points, one per sub-block of the target box: (source points, their true target points), each
    (G*G, 2) float64.

    With ``rng`` each point is drawn uniformly inside its sub-block (stratified), so the points are not on a lattice
    that lines up with a feature grid's cell centres (which would quantise the errors); without, the block centres.
    """
    x0, y0, x1, y1 = trg.box
    k = np.arange(grid)
    tx, ty = np.meshgrid(k, k)
    u = rng.uniform(size=(2, grid, grid)) if rng is not None else np.full((2, grid, grid), 0.5)
    fx, fy = (tx + u[0]) / grid, (ty + u[1]) / grid
    orig = np.stack([(x0 + fx * (x1 - x0)).ravel(), (y0 + fy * (y1 - y0)).ravel()], axis=1)
    return src.forward(orig), trg.forward(orig)


# --------------------------------------------------------------------------------------------- matching
def sample_features(feats: torch.Tensor, points: np.ndarray, image_hw: Tuple[int, int]) -> torch.Tensor:
    """Bilinear read of (C, h, w) features at continuous pixel points of an (H, W) image -> (K, C).

    The map covers the image exactly (cell ``(r, c)`` spans ``[c W/w, (c+1) W/w)``); borders are clamped.
    """
    h_img, w_img = image_hw
    p = torch.as_tensor(np.asarray(points, np.float64), dtype=torch.float32, device=feats.device).reshape(-1, 2)
    grid = torch.stack([2.0 * p[:, 0] / w_img - 1.0, 2.0 * p[:, 1] / h_img - 1.0], dim=1).view(1, 1, -1, 2)
    out = F.grid_sample(feats[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, 0].t()


def match_points(src_feats: torch.Tensor, trg_feats: torch.Tensor, src_points: np.ndarray,
                 src_hw: Tuple[int, int], trg_hw: Tuple[int, int], mode: str = "cell") -> np.ndarray:
    """Nearest-neighbour (cosine) matches of source points in the target (see the module docstring).

    Args:
        src_feats: (C, hs, ws); trg_feats: (C, ht, wt); src_points: (K, 2) continuous source pixels.
        src_hw, trg_hw: (H, W) of the source and target images.
        mode: ``cell`` or ``pixel``.
    Returns:
        (K, 2) float64 predicted target points (continuous coordinates; cell or pixel centres).
    """
    if mode not in MATCH_MODES:
        raise ValueError(f"unknown match mode '{mode}'; choose one of {MATCH_MODES}")
    src = F.normalize(src_feats.float(), dim=0)
    trg = F.normalize(trg_feats.float(), dim=0)
    q = F.normalize(sample_features(src, src_points, src_hw), dim=1)  # K, C
    _, ht, wt = trg.shape
    sim = torch.einsum("kc,chw->khw", q, trg)
    if mode == "pixel":
        sim = F.interpolate(sim[None], size=tuple(trg_hw), mode="bilinear", align_corners=False)[0]
        ht, wt = trg_hw
    idx = sim.reshape(sim.shape[0], -1).argmax(dim=1).cpu().numpy()  # first maximum on ties
    rows, cols = idx // wt, idx % wt
    return np.stack([(cols + 0.5) * trg_hw[1] / wt, (rows + 0.5) * trg_hw[0] / ht], axis=1)


# --------------------------------------------------------------------------------------------- PCK
@dataclass
class WarpPCK:
    """Point errors of one method, split by mirrored / not mirrored pairs.

    Attributes:
        alphas: PCK thresholds as fractions of the target image's larger side.
        errors: group -> list of (K,) error arrays divided by that side (``all``, ``no_flip``, ``flip``).
    """

    alphas: Tuple[float, ...] = DEFAULT_ALPHAS
    errors: Dict[str, List[np.ndarray]] = field(default_factory=lambda: {g: [] for g in GROUPS})

    def add(self, pred: np.ndarray, gt: np.ndarray, ref_len: float, flipped: bool) -> None:
        """One pair: (K, 2) predictions and ground truth, the reference length (pixels), whether mirrored."""
        err = np.linalg.norm(np.asarray(pred, np.float64) - np.asarray(gt, np.float64), axis=1) / float(ref_len)
        self.errors["all"].append(err)
        self.errors["flip" if flipped else "no_flip"].append(err)

    def summary(self) -> Dict[str, dict]:
        """group -> {"pairs", "points", "pck": {"pck@a": fraction}, "median_error": fraction of the side}."""
        out = {}
        for g in GROUPS:
            errs = np.concatenate(self.errors[g]) if self.errors[g] else np.zeros(0)
            out[g] = {
                "pairs": len(self.errors[g]), "points": int(errs.size),
                "pck": {f"pck@{a:g}": (float(np.mean(errs < a)) if errs.size else None) for a in self.alphas},
                "median_error": float(np.median(errs)) if errs.size else None,
            }
        return out


def score_pair(feats_src: Dict[str, torch.Tensor], feats_trg: Dict[str, torch.Tensor], src: View, trg: View,
               grid: int, acc: Dict[str, WarpPCK], mode: str = "cell",
               rng: Optional[np.random.Generator] = None) -> None:
    """Match one pair with every method's features (label -> (C, h, w)) and add the errors to ``acc``.

    ``rng``: draws the query points (see :func:`query_points`); None = sub-block centres.
    """
    src_pts, gt = query_points(src, trg, grid, rng)
    src_hw, trg_hw = (src.out_wh[1], src.out_wh[0]), (trg.out_wh[1], trg.out_wh[0])
    for label, f_src in feats_src.items():
        pred = match_points(f_src, feats_trg[label], src_pts, src_hw, trg_hw, mode)
        acc[label].add(pred, gt, max(trg.out_wh), trg.flip)


def probe_image(image: Image.Image, size: int, rng: np.random.Generator,
                features: Callable[[Image.Image], Dict[str, torch.Tensor]], grid: int, acc: Dict[str, WarpPCK],
                mode: str = "cell", min_scale: float = 0.5) -> Dict[str, torch.Tensor]:
    """One image of the probe: draw its (source, target) pair from ``rng``, render both at ``size`` x ``size``, get
    every method's features of each (``features``: rendered view -> label -> (C, h, w)) and add the errors to
    ``acc``. Returns the source view's features (e.g. for their grid sizes)."""
    src, trg = random_pair(image.size[0], image.size[1], size, rng, min_scale)
    fs, ft = features(src.render(image)), features(trg.render(image))
    score_pair(fs, ft, src, trg, grid, acc, mode, rng)
    return fs


def pair_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of image ``index``'s warp: independent of the methods, the order and ``--limit``."""
    return np.random.default_rng([int(seed), int(index), 0x3A7])
