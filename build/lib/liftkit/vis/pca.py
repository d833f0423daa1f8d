"""PCA-to-RGB pictures of dense features, with one basis shared by several maps so colours are comparable."""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import torch


def fit_pca(maps: Sequence[torch.Tensor], n_components: int = 3) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fit one PCA basis on the pooled locations of several (C, h, w) maps.

    Returns:
        (mean (C,), components (C, k), lo (k,), hi (k,)): the projection of location x is (x - mean) @ components,
        and lo/hi are the 1st/99th percentiles of the projections used to scale them to [0, 1].
    """
    x = torch.cat([m.float().flatten(1).T for m in maps], dim=0)  # N, C
    mean = x.mean(0)
    xc = x - mean
    _, _, v = torch.linalg.svd(xc, full_matrices=False)
    comps = v[:n_components].T  # C, k
    proj = xc @ comps
    # sign convention: make the largest-magnitude projection positive, so results are deterministic
    signs = torch.sign(proj.gather(0, proj.abs().argmax(0, keepdim=True))).squeeze(0)
    signs[signs == 0] = 1
    comps = comps * signs
    proj = proj * signs
    lo = torch.quantile(proj, 0.01, dim=0)
    hi = torch.quantile(proj, 0.99, dim=0)
    return mean, comps, lo, hi


def pca_rgb(feature_map: torch.Tensor, basis: Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]) -> np.ndarray:
    """Project a (C, h, w) map on a basis from :func:`fit_pca`: (h, w, 3) float array in [0, 1]."""
    mean, comps, lo, hi = basis
    c, h, w = feature_map.shape
    proj = (feature_map.float().flatten(1).T - mean) @ comps
    proj = (proj - lo) / (hi - lo).clamp_min(1e-8)
    return proj.clamp(0, 1).reshape(h, w, -1).numpy()


def pca_pictures(maps: Sequence[torch.Tensor]) -> List[np.ndarray]:
    """PCA-to-RGB pictures of several (C, h, w) maps sharing one basis."""
    basis = fit_pca(maps)
    return [pca_rgb(m, basis) for m in maps]
