"""Label propagation: parity with the official dense formulation, and a synthetic video with a known answer."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from liftkit.eval.label_propagation import (
    PropagationConfig,
    mask_to_onehot,
    norm_mask,
    propagate_labels,
    propagate_step,
    soft_to_labels,
)


def official_step(target, sources, source_labels, radius, topk, temperature):
    """Direct transcription of DINO's label_propagation (dense (hw)^2 mask built with Python loops)."""
    c, h, w = target.shape
    n = sources.shape[0]
    feat_tar = F.normalize(target.reshape(c, -1).T, dim=1)  # (hw, C)
    feat_src = F.normalize(sources.reshape(n, c, -1), dim=1)  # (N, C, hw)
    aff = torch.exp(torch.bmm(feat_tar.unsqueeze(0).repeat(n, 1, 1), feat_src) / temperature)  # (N, tar, src)
    if radius is not None:
        mask = torch.zeros(h, w, h, w)
        for i in range(h):
            for j in range(w):
                for p in range(2 * radius + 1):
                    for q in range(2 * radius + 1):
                        ii, jj = i - radius + p, j - radius + q
                        if 0 <= ii < h and 0 <= jj < w:
                            mask[i, j, ii, jj] = 1
        aff = aff * mask.reshape(h * w, h * w)[None]
    aff = aff.transpose(2, 1).reshape(-1, h * w)  # (N * src, tar)
    tk_min = torch.topk(aff, dim=0, k=topk).values.min(dim=0).values
    aff[aff < tk_min] = 0
    aff = aff / aff.sum(dim=0, keepdim=True)
    segs = source_labels.reshape(n, source_labels.shape[1], -1).transpose(2, 1).reshape(-1, source_labels.shape[1]).T
    return (segs @ aff).reshape(-1, h, w)


@pytest.mark.parametrize("radius,budget,tile", [(2, 1 << 24, 8), (2, 1 << 24, 3), (3, 1 << 24, 1), (1, 600, 4),
                                                (None, 1 << 24, 8), (None, 500, 8)])
def test_propagate_step_matches_official_dense_formulation(radius, budget, tile):
    g = torch.Generator().manual_seed(0)
    c, h, w, n, n_labels = 6, 7, 9, 3, 4
    target = F.normalize(torch.randn(c, h, w, generator=g), dim=0)
    sources = F.normalize(torch.randn(n, c, h, w, generator=g), dim=0 + 1)
    labels = torch.rand(n, n_labels, h, w, generator=g)
    # tiles of 1, 3, 4 and 8 cells (partial tiles at the edges) and small budgets (smaller tiles / one-row bands)
    ours = propagate_step(target, sources, labels, radius, topk=5, temperature=0.1, max_chunk_elements=budget,
                          tile=tile)
    ref = official_step(target, sources, labels, radius, topk=5, temperature=0.1)
    assert ours.shape == (n_labels, h, w)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("radius", [2, None])
def test_propagate_step_keeps_ties_like_official(radius):
    # features from 3 discrete directions: many exactly equal affinities, so ties at the k-th value are common and
    # every tied source must be kept (the official rule), not just k of them
    g = torch.Generator().manual_seed(1)
    h, w, n = 6, 7, 2
    dirs = torch.eye(4)[:3]
    pick = lambda *shape: dirs[torch.randint(0, 3, shape, generator=g)]  # noqa: E731
    target = pick(h, w).permute(2, 0, 1)
    sources = pick(n, h, w).permute(0, 3, 1, 2)
    labels = torch.rand(n, 3, h, w, generator=g)
    ours = propagate_step(target, sources, labels, radius, topk=5, temperature=0.1)
    ref = official_step(target, sources, labels, radius, topk=5, temperature=0.1)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_propagate_step_restricts_to_window():
    # target cell (0, 0) has a perfect match at (5, 5) in the source, outside a radius-2 window: it must not be used
    c, h, w = 3, 6, 6
    src = torch.zeros(1, c, h, w)
    src[0, 1] = 1.0  # every source cell is "channel 1"
    src[0, :, 5, 5] = torch.tensor([1.0, 0.0, 0.0])
    tgt = torch.zeros(c, h, w)
    tgt[1] = 1.0
    tgt[:, 0, 0] = torch.tensor([1.0, 0.0, 0.0])
    labels = torch.zeros(1, 2, h, w)
    labels[0, 0] = 1.0
    labels[0, :, 5, 5] = torch.tensor([0.0, 1.0])
    out_window = propagate_step(tgt, src, labels, radius=2, topk=1, temperature=0.1)
    out_global = propagate_step(tgt, src, labels, radius=None, topk=1, temperature=0.1)
    assert out_window[:, 0, 0].tolist() == [1.0, 0.0]
    assert out_global[:, 0, 0].tolist() == [0.0, 1.0]


def test_mask_to_onehot_nearest_downsampling():
    labels = np.zeros((8, 8), np.uint8)
    labels[:4, :4] = 2
    onehot = mask_to_onehot(labels, (2, 2))
    assert onehot.shape == (3, 2, 2)
    assert onehot[2].tolist() == [[1.0, 0.0], [0.0, 0.0]]
    assert onehot[1].sum() == 0 and onehot.sum(0).eq(1).all()


def test_norm_mask_and_upsampling():
    soft = torch.tensor([[[0.2, 0.4]], [[0.0, 0.0]]])  # (L=2, 1, 2)
    normed = norm_mask(soft.clone())
    assert normed[0].tolist() == [[0.0, 1.0]] and normed[1].tolist() == [[0.0, 0.0]]
    labels = soft_to_labels(torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]]), (2, 4), output_hw=(4, 8))
    assert labels.dtype == np.uint8 and labels.shape == (4, 8)
    assert (labels[:, :4] == 0).all() and (labels[:, 4:] == 1).all()


def _iou(a, b):
    return np.sum(a & b) / np.sum(a | b)


def _moving_squares_video(n_frames=6, size=48, p=4):
    """Two 4x4-cell squares (labels 1 and 2) moving one cell per frame; features = noisy one-hot of the true label."""
    masks, feats = [], []
    for t in range(n_frames):
        m = np.zeros((size, size), np.uint8)
        m[4 + 4 * (t // 2): 20 + 4 * (t // 2), 4 * t: 16 + 4 * t] = 1  # right, and down every other frame
        m[28:44, 28 - 4 * t: 44 - 4 * t] = 2  # left
        masks.append(m)
        cell = torch.from_numpy(m[p // 2::p, p // 2::p].astype(np.int64))  # label at each patch centre
        f = F.one_hot(cell, 3).permute(2, 0, 1).float()
        feats.append(f + 0.05 * torch.randn(f.shape, generator=torch.Generator().manual_seed(t)))
    return masks, feats


def test_synthetic_video_recovers_moving_squares():
    masks, feats = _moving_squares_video()
    out = propagate_labels(feats, masks[0], config=PropagationConfig(size_mask_neighborhood=3))
    assert len(out) == len(masks)
    assert (out[0] == masks[0]).all()
    for t in range(1, len(masks)):
        assert out[t].shape == masks[t].shape and out[t].dtype == np.uint8
        for label in (1, 2):
            # bilinear upsampling of a 4x4-cell square only rounds its corners: IoU 0.984+;
            # copying frame 0 instead would score 0.6 at t=1 and 0 from t=4
            assert _iou(out[t] == label, masks[t] == label) > 0.97, (t, label)
    # a callable feature source ((1, C, h, w) per frame) gives the same maps
    out_fn = propagate_labels(lambda t: feats[t][None], masks[0], n_frames=len(feats),
                              config=PropagationConfig(size_mask_neighborhood=3))
    assert all((a == b).all() for a, b in zip(out, out_fn))
    # network input at half resolution, output at full: same maps up to the coarser upsampling
    out_small = propagate_labels(feats, masks[0], frame_hw=(24, 24), config=PropagationConfig(size_mask_neighborhood=3))
    assert out_small[3].shape == (48, 48) and _iou(out_small[3] == 1, masks[3] == 1) > 0.97


def test_small_window_loses_fast_object():
    # the object jumps 6 cells between frames; a 1-cell window cannot follow it, an unrestricted one can
    size, p = 40, 4
    masks, feats = [], []
    for t in range(2):
        m = np.zeros((size, size), np.uint8)
        m[8:16, 24 * t: 8 + 24 * t] = 1
        masks.append(m)
        cell = torch.from_numpy(m[p // 2::p, p // 2::p].astype(np.int64))
        feats.append(F.one_hot(cell, 2).permute(2, 0, 1).float())
    near = propagate_labels(feats, masks[0], config=PropagationConfig(size_mask_neighborhood=1, topk=1))
    full = propagate_labels(feats, masks[0], config=PropagationConfig(size_mask_neighborhood=0, topk=1))
    assert _iou(full[1] == 1, masks[1] == 1) > 0.85
    assert _iou(near[1] == 1, masks[1] == 1) == 0.0


def test_neighborhood_scale():
    assert PropagationConfig().radius == 12
    assert PropagationConfig(neighborhood_scale=2).radius == 24
    assert PropagationConfig(size_mask_neighborhood=0).radius is None
    with pytest.raises(ValueError):
        PropagationConfig(topk=0)
