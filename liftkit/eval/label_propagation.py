"""Semi-supervised video label propagation with dense features (the DINO ``eval_video_segmentation`` protocol).

Frame 0's mask is turned into one-hot label maps on the feature grid (nearest-neighbour resize, one channel per
label 0..L-1). Each later frame t gets soft labels from *context* frames: frame 0 and the ``n_last_frames``
previous frames (their soft labels, as propagated). For every target cell the cosine affinities (features are
L2-normalised over channels) to all context cells inside a ``(2r+1) x (2r+1)`` window centred on it are computed,
the ``topk`` largest over *all* context frames together are kept (ties with the k-th value kept too, as the official
code does), weighted by ``exp(affinity / temperature)`` normalised to sum 1, and used to average the context labels.
The soft labels are upsampled bilinearly to the network-input frame size, each label channel is min-max normalised
(DINO's ``norm_mask``), the argmax is taken, and the map is resized (nearest) to the output size.

Vectorised window: the official code loops in Python over ``h * w * (2r+1)^2`` cells to build a dense
``(hw) x (hw)`` mask (about 70 M entries per context frame for a LiFT 68 x 122 grid) and compares every cell with
every cell. Here the target grid is cut into ``tile x tile`` tiles; a tile only needs the source box within ``r``
cells of it ((tile + 2r)^2 cells), the window test ``|dy| <= r and |dx| <= r`` is one broadcast comparison on
that box, and one batched matmul gives the affinities to all context frames. Memory per tile is bounded by
``max_chunk_elements``; results equal the official dense computation (a test checks it).

Neighbourhood scaling: ``size_mask_neighborhood`` counts *feature cells*. The official DINO / LiFT evaluations
keep r = 12 cells whatever the grid, so on a grid upsampled 2x (``bilinear``, ``highres``, ``lift``) the window
covers half the pixels it covers on the backbone grid. ``neighborhood_scale`` multiplies it:
``radius = round(size_mask_neighborhood * neighborhood_scale)``; passing the grid's upsampling factor
(2 for ``lift``, 4 for ``lift2``) keeps the window's extent in pixels equal to that of the backbone grid.
``size_mask_neighborhood = 0`` disables the restriction (all cells are candidates).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

FeatureSource = Union[Callable[[int], torch.Tensor], Sequence[torch.Tensor]]


@dataclass(frozen=True)
class PropagationConfig:
    """Label-propagation hyper-parameters (defaults: DINO's DAVIS settings).

    Attributes:
        n_last_frames: how many preceding frames are context, besides frame 0.
        size_mask_neighborhood: window radius r in feature cells (0 = unrestricted).
        neighborhood_scale: multiplies r (see the module docstring); e.g. 2 for a 2x feature grid.
        topk: affinities kept per target cell, over all context frames together.
        temperature: softmax temperature of the kept affinities.
        max_chunk_elements: bound on the affinity block computed at once (context frames x target cells x source
            cells); only memory and speed depend on it.
        tile: side, in cells, of the target tiles processed together (speed only).
        label_upsample: None: the soft labels are upsampled to the network-input frame size before the argmax
            (ours); an integer s: upsampled by the factor s whatever the grid (the official DINO / LiFT code, with s =
            the patch size: on a LiFT 2x grid the argmax is taken at twice the frame size, then resized to the output).
    """

    n_last_frames: int = 7
    size_mask_neighborhood: int = 12
    neighborhood_scale: float = 1.0
    topk: int = 5
    temperature: float = 0.1
    max_chunk_elements: int = 1 << 24
    tile: int = 16
    label_upsample: Optional[int] = None

    def __post_init__(self):
        if self.n_last_frames < 0:
            raise ValueError("n_last_frames must be >= 0")
        if self.size_mask_neighborhood < 0:
            raise ValueError("size_mask_neighborhood must be >= 0")
        if self.neighborhood_scale <= 0:
            raise ValueError("neighborhood_scale must be > 0")
        if self.topk < 1:
            raise ValueError("topk must be >= 1")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")
        if self.tile < 1:
            raise ValueError("tile must be >= 1")
        if self.label_upsample is not None and self.label_upsample < 1:
            raise ValueError("label_upsample must be >= 1 (or None)")

    @property
    def radius(self) -> Optional[int]:
        """Window radius in cells of the feature grid actually used; None = unrestricted."""
        if self.size_mask_neighborhood == 0:
            return None
        return max(1, int(round(self.size_mask_neighborhood * self.neighborhood_scale)))


def mask_to_onehot(labels: np.ndarray, grid_hw: Tuple[int, int], num_labels: Optional[int] = None) -> torch.Tensor:
    """Frame-0 label map -> one-hot on the feature grid.

    Args:
        labels: (H0, W0) integer label ids (0 = background).
        grid_hw: (h, w) of the feature grid; the map is resized to it with nearest-neighbour (PIL), as in DINO.
        num_labels: L (default max label + 1).
    Returns:
        (L, h, w) float32 one-hot.
    """
    labels = np.asarray(labels)
    if num_labels is None:
        num_labels = int(labels.max()) + 1
    h, w = grid_hw
    small = np.array(Image.fromarray(labels.astype(np.uint8)).resize((w, h), Image.NEAREST), dtype=np.int64)
    return F.one_hot(torch.from_numpy(small), num_labels).permute(2, 0, 1).float().contiguous()


def _tiles(h: int, w: int, n_ctx: int, radius: Optional[int], tile: int, budget: int):
    """Target tiles and the source boxes they need: yields (r0, r1, c0, c1, br0, br1, bc0, bc1).

    Windowed: ``tile x tile`` target cells, source box = tile grown by ``radius`` (clipped to the grid), so each
    target cell is compared with ``(tile + 2r)^2`` cells instead of ``h * w``. Unrestricted: bands of full rows
    against every cell, as many rows as fit ``budget`` (n_ctx * targets * sources elements).
    """
    if radius is None:
        rows = max(1, min(h, budget // max(1, n_ctx * w * h * w)))
        for r0 in range(0, h, rows):
            yield r0, min(h, r0 + rows), 0, w, 0, h, 0, w
        return
    while tile > 1 and n_ctx * tile * tile * (tile + 2 * radius) ** 2 > budget:
        tile -= 1
    for r0 in range(0, h, tile):
        r1 = min(h, r0 + tile)
        for c0 in range(0, w, tile):
            c1 = min(w, c0 + tile)
            yield r0, r1, c0, c1, max(0, r0 - radius), min(h, r1 + radius), max(0, c0 - radius), min(w, c1 + radius)


def propagate_step(
    target: torch.Tensor,
    sources: torch.Tensor,
    source_labels: torch.Tensor,
    radius: Optional[int] = 12,
    topk: int = 5,
    temperature: float = 0.1,
    max_chunk_elements: int = 1 << 24,
    tile: int = 16,
) -> torch.Tensor:
    """Soft labels of one target frame from its context frames.

    Args:
        target: (C, h, w) target features, L2-normalised over C.
        sources: (N, C, h, w) context features, L2-normalised over C.
        source_labels: (N, L, h, w) context soft labels.
        radius: window radius in cells (None = every cell of every context frame is a candidate).
        topk: affinities kept per target cell over the N context frames together (ties kept).
        temperature: weights are exp(affinity / temperature), normalised over the kept ones.
        max_chunk_elements: memory bound of one affinity block (N x tile cells x source-box cells).
        tile: target tile side in cells (speed only: each tile is one batched matmul against its source box).
    Returns:
        (L, h, w) soft labels (each cell a convex combination of context labels).
    """
    c, h, w = target.shape
    n = sources.shape[0]
    n_labels = source_labels.shape[1]
    if sources.shape[1:] != target.shape or source_labels.shape[0] != n or source_labels.shape[2:] != (h, w):
        raise ValueError(
            f"shape mismatch: target {tuple(target.shape)}, sources {tuple(sources.shape)}, "
            f"labels {tuple(source_labels.shape)}"
        )
    dev = target.device
    out = torch.empty(n_labels, h, w, dtype=source_labels.dtype, device=dev)
    for r0, r1, c0, c1, br0, br1, bc0, bc1 in _tiles(h, w, n, radius, tile, max_chunk_elements):
        q = target[:, r0:r1, c0:c1].reshape(c, -1).T  # (Q, C)
        n_q, n_b = q.shape[0], (br1 - br0) * (bc1 - bc0)
        box = sources[:, :, br0:br1, bc0:bc1].permute(1, 0, 2, 3).reshape(c, n * n_b)  # (C, N * B), context-major
        sim = q @ box  # (Q, N * B)
        if radius is not None:
            qi = torch.arange(r0, r1, device=dev)[:, None].expand(r1 - r0, c1 - c0).reshape(-1)
            qj = torch.arange(c0, c1, device=dev)[None, :].expand(r1 - r0, c1 - c0).reshape(-1)
            si = torch.arange(br0, br1, device=dev)[:, None].expand(br1 - br0, bc1 - bc0).reshape(-1)
            sj = torch.arange(bc0, bc1, device=dev)[None, :].expand(br1 - br0, bc1 - bc0).reshape(-1)
            outside = ((qi[:, None] - si[None, :]).abs() > radius) | ((qj[:, None] - sj[None, :]).abs() > radius)
            sim.view(n_q, n, n_b).masked_fill_(outside[:, None, :], float("-inf"))
        box_labels = source_labels[:, :, br0:br1, bc0:bc1].permute(0, 2, 3, 1).reshape(n * n_b, n_labels)
        out[:, r0:r1, c0:c1] = _aggregate(sim, box_labels, topk, temperature).T.reshape(n_labels, r1 - r0, c1 - c0)
    return out


def _aggregate(sim: torch.Tensor, labels: torch.Tensor, topk: int, temperature: float) -> torch.Tensor:
    """Weighted label average over each row's top-k affinities.

    Args:
        sim: (Q, S) affinities, -inf where excluded. labels: (S, L).
    Returns:
        (Q, L). Every entry >= the k-th largest is kept (official tie rule); a fast path uses the top-k indices
        when no row has a tie at the k-th value.
    """
    n_src = sim.shape[1]
    if n_src > topk:
        vals, idx = torch.topk(sim, topk + 1, dim=1)
        if not bool((vals[:, topk] == vals[:, topk - 1]).any()):  # exactly k kept per row
            vals, idx = vals[:, :topk], idx[:, :topk]
            weights = torch.exp((vals - vals[:, :1]) / temperature)  # exp(-inf) = 0 for excluded cells
            weights = weights / weights.sum(dim=1, keepdim=True)
            return torch.einsum("qk,qkl->ql", weights, labels[idx])
    k = min(topk, n_src)
    kth = torch.topk(sim, k, dim=1).values[:, -1:]
    rowmax = sim.max(dim=1, keepdim=True).values
    keep = (sim >= kth) & torch.isfinite(sim)
    weights = torch.where(keep, torch.exp((sim - rowmax) / temperature), torch.zeros_like(sim))
    weights = weights / weights.sum(dim=1, keepdim=True)
    return weights @ labels


def norm_mask(soft: torch.Tensor) -> torch.Tensor:
    """DINO's per-label min-max normalisation: (L, H, W) -> (L, H, W); channels whose max is 0 are left as they are,
    constant positive channels become 1 (where the official code divides 0 by 0)."""
    lo = soft.amin(dim=(1, 2), keepdim=True)
    hi = soft.amax(dim=(1, 2), keepdim=True)
    span = hi - lo
    normed = torch.where(span > 0, (soft - lo) / span.clamp_min(1e-30), torch.ones_like(soft))
    return torch.where(hi > 0, normed, soft)


def soft_to_labels(
    soft: torch.Tensor, frame_hw: Tuple[int, int], output_hw: Optional[Tuple[int, int]] = None,
    scale_factor: Optional[int] = None,
) -> np.ndarray:
    """Soft labels on the grid -> label map.

    Args:
        soft: (L, h, w) soft labels.
        frame_hw: (H, W) network-input frame size; the soft labels are upsampled bilinearly to it.
        output_hw: (H0, W0) size of the returned map (nearest-neighbour resize, as DINO); default ``frame_hw``.
        scale_factor: upsample by this factor instead of to ``frame_hw`` (the official code: the patch size).
    Returns:
        (H0, W0) uint8 label ids.
    """
    if scale_factor is not None:  # exactly the official call
        up = F.interpolate(soft[None].float(), scale_factor=scale_factor, mode="bilinear", align_corners=False,
                           recompute_scale_factor=False)[0]
    else:
        up = F.interpolate(soft[None].float(), size=tuple(frame_hw), mode="bilinear", align_corners=False)[0]
    labels = norm_mask(up).argmax(dim=0).to(torch.uint8).cpu().numpy()
    if output_hw is not None and tuple(output_hw) != labels.shape:
        labels = np.array(Image.fromarray(labels).resize((output_hw[1], output_hw[0]), Image.NEAREST))
    return labels


def _frame_features(features: FeatureSource, t: int) -> torch.Tensor:
    feat = features(t) if callable(features) else features[t]
    feat = torch.as_tensor(feat)
    if feat.dim() == 4:
        if feat.shape[0] != 1:
            raise ValueError(f"frame {t}: expected one frame's features (1, C, h, w), got {tuple(feat.shape)}")
        feat = feat[0]
    if feat.dim() != 3:
        raise ValueError(f"frame {t}: expected features (C, h, w), got {tuple(feat.shape)}")
    return F.normalize(feat.float(), dim=0, p=2)


def iter_propagate_labels(
    features: FeatureSource,
    first_mask: np.ndarray,
    n_frames: Optional[int] = None,
    frame_hw: Optional[Tuple[int, int]] = None,
    output_hw: Optional[Tuple[int, int]] = None,
    config: PropagationConfig = PropagationConfig(),
) -> Iterator[np.ndarray]:
    """Propagate frame 0's labels through a video, yielding one label map per frame as soon as it is ready.

    Args:
        features: per-frame features, (C, h, w) or (1, C, h, w): a sequence of tensors, or a callable
            ``t -> tensor`` (called once per frame, in order; e.g. a backbone on frame t).
        first_mask: (H0, W0) label ids of frame 0 (0 = background, void already removed).
        n_frames: number of frames (required for a callable; default ``len(features)``).
        frame_hw: (H, W) network-input frame size the soft labels are upsampled to; default ``output_hw``.
        output_hw: (H0, W0) size of the yielded maps; default ``first_mask.shape``.
        config: :class:`PropagationConfig`.
    Yields:
        (H0, W0) uint8 label maps for frames 0..n_frames-1 (frame 0 is ``first_mask`` itself).
    """
    first_mask = np.asarray(first_mask)
    if n_frames is None:
        if callable(features):
            raise ValueError("n_frames is required when features is a callable")
        n_frames = len(features)
    output_hw = tuple(output_hw) if output_hw is not None else first_mask.shape
    frame_hw = tuple(frame_hw) if frame_hw is not None else output_hw
    if n_frames < 1:
        return
    feat0 = _frame_features(features, 0)
    grid = tuple(feat0.shape[1:])
    seg0 = mask_to_onehot(first_mask, grid).to(feat0.device)
    first = first_mask.astype(np.uint8)
    if first.shape != tuple(output_hw):
        first = np.array(Image.fromarray(first).resize((output_hw[1], output_hw[0]), Image.NEAREST))
    yield first
    recent: List[Tuple[torch.Tensor, torch.Tensor]] = []  # (features, soft labels) of the last frames
    for t in range(1, n_frames):
        feat = _frame_features(features, t)
        if tuple(feat.shape) != tuple(feat0.shape):
            raise ValueError(f"frame {t}: features {tuple(feat.shape)} differ from frame 0's {tuple(feat0.shape)}")
        sources = torch.stack([feat0] + [f for f, _ in recent])
        labels = torch.stack([seg0] + [s for _, s in recent])
        soft = propagate_step(feat, sources, labels, config.radius, config.topk, config.temperature,
                              config.max_chunk_elements, config.tile)
        if config.n_last_frames > 0:
            recent.append((feat, soft))
            if len(recent) > config.n_last_frames:
                recent.pop(0)
        yield soft_to_labels(soft, frame_hw, output_hw, config.label_upsample)


def propagate_labels(
    features: FeatureSource,
    first_mask: np.ndarray,
    n_frames: Optional[int] = None,
    frame_hw: Optional[Tuple[int, int]] = None,
    output_hw: Optional[Tuple[int, int]] = None,
    config: PropagationConfig = PropagationConfig(),
) -> List[np.ndarray]:
    """All label maps of :func:`iter_propagate_labels` as a list of (H0, W0) uint8 arrays."""
    return list(iter_propagate_labels(features, first_mask, n_frames, frame_hw, output_hw, config))
