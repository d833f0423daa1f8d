"""Self-similarity maps: the cosine similarity of one location's feature to every location, vectorised."""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F


def point_to_cell(point_xy: Tuple[float, float], image_hw: Tuple[int, int], grid_hw: Tuple[int, int]) -> Tuple[int, int]:
    """The (row, col) of the grid cell that contains pixel ``point_xy`` = (x, y) of an (H, W) image."""
    x, y = point_xy
    hh, ww = image_hw
    h, w = grid_hw
    row = min(h - 1, max(0, int(y * h / hh)))
    col = min(w - 1, max(0, int(x * w / ww)))
    return row, col


def similarity_map(features: torch.Tensor, cell: Tuple[int, int]) -> torch.Tensor:
    """Cosine similarity of ``features[:, row, col]`` to every location.

    Args:
        features: (C, h, w).
        cell: (row, col).
    Returns:
        (h, w) in [-1, 1]; the chosen cell is 1 (its maximum).
    """
    f = F.normalize(features.float(), dim=0)
    q = f[:, cell[0], cell[1]]
    return torch.einsum("c,chw->hw", q, f)


def similarity_maps(maps: Sequence[torch.Tensor], point_xy, image_hw) -> list:
    """:func:`similarity_map` of the same image point in several (C, h, w) maps of possibly different grids."""
    return [similarity_map(m, point_to_cell(point_xy, image_hw, tuple(m.shape[-2:]))) for m in maps]
