"""Linear CKA (Kornblith et al., 2019) between two representations of the same samples."""

from __future__ import annotations

import torch


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear centred kernel alignment.

    Args:
        x: (N, C1) and y: (N, C2): N samples (e.g. feature locations pooled over images) in two representations.
    Returns:
        ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F) in [0, 1] (columns centred); 1 for identical
        representations, invariant to orthogonal transforms and isotropic scaling of either.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same samples: {x.shape[0]} vs {y.shape[0]} rows")
    x = x.double() - x.double().mean(0, keepdim=True)
    y = y.double() - y.double().mean(0, keepdim=True)
    # Gram-free form: cost O(N C^2) instead of O(N^2)
    num = torch.linalg.matrix_norm(y.T @ x) ** 2
    den = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    return float(num / den.clamp_min(1e-300))


def feature_map_samples(maps: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) feature maps -> (B * h * w, C) samples for :func:`linear_cka`."""
    return maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1])
