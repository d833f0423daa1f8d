"""The boundary probe on hand-made masks and features with known answers; the mask loaders on the real subsets."""

from __future__ import annotations

import numpy as np
import torch

from liftkit.data.masks import davis_first_frames, voc_object_masks
from liftkit.eval.boundary import boundary_scores, fill_void, kmeans, oracle_foreground, to_pixels


def _codes(h, w, fg_cols):
    """(2, h, w) features: code (1, 0) in the first ``fg_cols`` grid columns, (0, 1) elsewhere."""
    f = torch.zeros(2, h, w)
    f[0, :, :fg_cols] = 1
    f[1, :, fg_cols:] = 1
    return f


def test_boundary_score_on_a_hand_made_mask():
    gt = np.zeros((16, 16), bool)
    gt[:, :6] = True  # object = the 6 left columns: its boundary is column 5
    # a 2 x 2 grid (8-px cells) can only cut at x = 8: the oracle calls the left cell (6/8 object) foreground,
    # the predicted boundary is column 7, 2 px from the true one; IoU 6/8
    coarse = boundary_scores(_codes(2, 2, 1), gt, ks=(2,), bound_th=1)
    assert coarse["f"] == {2: 0.0} and coarse["j"] == {2: 0.75}
    assert boundary_scores(_codes(2, 2, 1), gt, ks=(2,), bound_th=2)["f"] == {2: 1.0}  # 2 px tolerance: matched
    # an 8 x 8 grid (2-px cells) cuts at x = 6: exact
    fine = boundary_scores(_codes(8, 8, 3), gt, ks=(2, 4), bound_th=1)
    assert fine["f"] == {2: 1.0, 4: 1.0} and fine["j_mean"] == 1.0 and fine["f_mean"] == 1.0


def test_void_band_goes_to_the_nearest_side_and_is_ignored_by_the_oracle():
    fg = np.zeros((4, 10), bool)
    fg[:, :4] = True
    void = np.zeros_like(fg)
    void[:, 3:7] = True  # a 4-px band over the edge: columns 3, 4 nearer the object, 5, 6 nearer the background
    filled = fill_void(fg & ~void, void)
    np.testing.assert_array_equal(filled[0], [1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    seg = np.zeros((4, 10), np.int64)
    seg[:, 5:] = 1  # cluster 0 = columns 0-4: of its valid pixels (0-2) all object -> foreground
    np.testing.assert_array_equal(oracle_foreground(seg, fg & ~void, ~void)[0], [1] * 5 + [0] * 5)


def test_to_pixels_and_kmeans():
    np.testing.assert_array_equal(to_pixels(np.array([[0, 1], [2, 3]]), (3, 5)),
                                  [[0, 0, 0, 1, 1], [0, 0, 0, 1, 1], [2, 2, 2, 3, 3]])
    x = torch.tensor([[0.0, 0], [0.1, 0], [5, 5], [5.1, 5], [0, 0.1]])
    lab = kmeans(x, 2, seed=0)
    assert lab[0] == lab[1] == lab[4] and lab[2] == lab[3] and lab[0] != lab[2]
    assert kmeans(x, 9).max() <= 4  # k above N: at most N clusters


def test_mask_loaders_on_the_real_subsets(shared_data):
    davis = davis_first_frames(shared_data / "DAVIS")
    assert [m.name for m in davis][:2] == ["davis/blackswan", "davis/car-roundabout"] and len(davis) == 7
    assert davis[0].foreground.shape == (480, 854) and 0.01 < davis[0].foreground.mean() < 0.5
    voc = voc_object_masks(shared_data / "VOC2007/VOCdevkit/VOC2007", "voc07")
    assert [m.name for m in voc] == ["voc07/000032", "voc07/000033", "voc07/000039"]
    assert voc[0].void.any() and not (voc[0].void & voc[0].foreground).any()
