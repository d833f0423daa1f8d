"""TokenCut's affinity threshold tau per backbone and facet (``--tau auto``), and how it is measured.

TokenCut builds a graph over the feature cells with an edge wherever the cosine of two cells exceeds tau. The paper's
tau (0.2 on VOC, 0.3 on COCO20k) was chosen for DINO v1 keys; other backbones distribute their cosines differently.
The last-layer keys of the offline ``dinov2_vits14_imgfocus``, for example, have *every* within-image cosine above
0.65, so at tau 0.2 the graph is complete, has no cut, and every image fails.

``--tau auto`` therefore looks tau up in :data:`TAU_TABLE`:

* DINO v1 backbones, last-layer ``key`` facet: the paper's values, 0.2 for VOC (and plain folders) and 0.3 for
  COCO / COCO20k.
* every other entry: a value **measured on training images** (the ImageNet sample LiFT is trained on, never the
  VOC / COCO images TokenCut is evaluated on) by the rule of :func:`tau_for_density`: the tau at which the graph's
  mean edge density over those images equals :data:`TARGET_DENSITY`. One value serves every data set.

The rule, and why: a graph with density 1 (or 0) has no normalised cut; the cut is best posed when the graph is far
from both. The density the paper's tau gives DINO v1 keys could not be measured here (no DINO v1 weights offline), so
the target is the neutral 0.5: tau is the median within-image cosine of the training images. ``bench/calibrate_tau.py``
measures it for any backbone and facet (it also prints the density at the paper's 0.2 / 0.3, so the target can be
revisited once DINO v1's density is measured); the command and values are in ``docs/tokencut.md``.
An explicit ``--tau x`` is always used as given (the paper's behaviour).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
import torch

from liftkit.errors import ConfigError

TARGET_DENSITY = 0.5
PAPER_TAU = {"voc": 0.2, "coco": 0.3}
DATASET_FAMILY = {"voc07": "voc", "voc12": "voc", "folder": "voc", "coco": "coco", "coco20k": "coco"}
HIST_BINS = 4000  # cosine histogram over [-1, 1]: tau resolution 0.0005


@dataclass(frozen=True)
class TauEntry:
    """tau for one (backbone, facet) at the last layer.

    Attributes:
        voc, coco: tau on VOC-like data (VOC07, VOC12, folders) and on COCO / COCO20k.
        source: where the value comes from (the paper, or the measuring command and its sample).
    """

    voc: float
    coco: float
    source: str


_PAPER = TauEntry(0.2, 0.3, "TokenCut paper (DINO v1 keys): 0.2 VOC, 0.3 COCO20k")
_MEASURED = ("measured: bench/calibrate_tau.py, mean edge density {d} on {n} ImageNet-sample training images "
             "(short side 364 px), docs/tokencut.md")

# (backbone, facet) -> TauEntry, last layer only (TokenCut uses the last layer's keys)
TAU_TABLE: Dict[Tuple[str, str], TauEntry] = {
    **{(b, "key"): _PAPER for b in ("dino_vits16", "dino_vits8", "dino_vitb16", "dino_vitb8")},
    ("dinov2_vits14_imgfocus", "key"): TauEntry(0.89, 0.89, _MEASURED.format(d=TARGET_DENSITY, n=100)),
    ("dinov2_vits14_imgfocus", "token"): TauEntry(0.85, 0.85, _MEASURED.format(d=TARGET_DENSITY, n=100)),
    ("dinov2_vits14_imgfocus", "value"): TauEntry(0.42, 0.42, _MEASURED.format(d=TARGET_DENSITY, n=100)),
    ("dinov2_vits14_imgfocus", "query"): TauEntry(0.52, 0.52, _MEASURED.format(d=TARGET_DENSITY, n=100)),
}


def parse_tau(text: str) -> Optional[float]:
    """``--tau`` value: ``"auto"`` -> None; a number in (-1, 1) -> that float; anything else: ConfigError."""
    if str(text).strip().lower() == "auto":
        return None
    try:
        tau = float(text)
    except ValueError:
        raise ConfigError(f"--tau '{text}' is neither 'auto' nor a number; give e.g. --tau 0.2 or --tau auto") \
            from None
    if not -1.0 < tau < 1.0:
        raise ConfigError(f"--tau {tau:g} must be in (-1, 1) (a cosine threshold)")
    return tau


def auto_tau(backbone: str, facet: str, layer: int, depth: int, dataset: str) -> Tuple[float, str]:
    """The table's tau for a backbone, facet, layer (0-based, resolved) and ``--dataset``.

    Returns:
        (tau, source text).
    Raises:
        ConfigError: no entry (another layer, or a backbone/facet never measured): says how to measure it.
    """
    entry = TAU_TABLE.get((backbone, facet))
    if entry is None or layer != depth - 1:
        where = f"{backbone} {facet} facet" + ("" if layer == depth - 1 else f" at layer {layer}")
        raise ConfigError(
            f"--tau auto: no tau is recorded for the {where}; pass --tau explicitly or measure one on training "
            f"images with bench/calibrate_tau.py --model_type {backbone} --facets {facet} --layer {layer}")
    family = DATASET_FAMILY.get(dataset, "voc")
    return (entry.coco if family == "coco" else entry.voc), entry.source


# --------------------------------------------------------------------------------------------- measuring
def cosine_histogram(feats: torch.Tensor, bins: int = HIST_BINS) -> np.ndarray:
    """Histogram of the cosines of all pairs i != j of one image's cells.

    Args:
        feats: (C, h, w).
    Returns:
        (bins,) int64 counts over ``[-1, 1]`` (each unordered pair counted twice, like TokenCut's N x N matrix).
    """
    c = feats.shape[0]
    flat = torch.nn.functional.normalize(feats.reshape(c, -1).t().float(), dim=1)
    cos = (flat @ flat.t()).clamp(-1.0, 1.0)
    n = cos.shape[0]
    off = cos[~torch.eye(n, dtype=torch.bool)]
    return torch.histc(off, bins=bins, min=-1.0, max=1.0).to(torch.int64).numpy()


def densities(hists: Sequence[np.ndarray], taus: Iterable[float]) -> np.ndarray:
    """Per image and tau: the fraction of pairs with cosine above tau (to the histogram's bin width).

    Returns:
        (images, len(taus)) float64.
    """
    h = np.stack([np.asarray(x, np.float64) for x in hists])
    bins = h.shape[1]
    above = np.cumsum(h[:, ::-1], axis=1)[:, ::-1] / h.sum(1, keepdims=True)  # [:, b] = share in bins >= b
    out = []
    for tau in taus:
        b = int(np.clip(np.floor((tau + 1.0) / 2.0 * bins + 1e-9), 0, bins))
        out.append(above[:, b] if b < bins else np.zeros(len(h)))
    return np.stack(out, axis=1)


def tau_for_density(hists: Sequence[np.ndarray], target: float = TARGET_DENSITY, decimals: int = 2) -> float:
    """The tau (rounded to ``decimals``) whose mean density over the images is closest to ``target``.

    Mean density is non-increasing in tau; the candidates are the multiples of ``10^-decimals`` in (-1, 1).
    """
    if not 0.0 < target < 1.0:
        raise ConfigError(f"--target_density {target:g} must be in (0, 1)")
    step = 10.0 ** -decimals
    taus = np.round(np.arange(-1.0 + step, 1.0, step), decimals)
    mean = densities(hists, taus).mean(0)
    return float(taus[int(np.argmin(np.abs(mean - target)))])
