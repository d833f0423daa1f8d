"""The warp probe: exact point maps of the views (round trip, and where a rendered blob really lands), and the
matching + PCK on synthetic feature maps with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from liftkit.eval.warp_probe import (
    View, WarpPCK, centre_square, match_points, pair_rng, query_points, random_pair, score_pair,
)


def test_forward_inverse_round_trip_and_composition():
    for i in range(20):
        src, trg = random_pair(640, 427, 224, pair_rng(0, i))
        pts = np.random.default_rng(i).uniform([0, 0], [640, 427], size=(50, 2))
        for v in (src, trg):
            np.testing.assert_allclose(v.inverse(v.forward(pts)), pts, atol=1e-9)
        # the target box lies inside the source square, and the query points' matches inside the target image
        s_pts, t_pts = query_points(src, trg, 6)
        assert s_pts.shape == t_pts.shape == (36, 2)
        assert (s_pts >= 0).all() and (s_pts <= 224).all() and (t_pts > 0).all() and (t_pts < 224).all()
        np.testing.assert_allclose(trg.forward(src.inverse(s_pts)), t_pts, atol=1e-9)
        # stratified random points: one per sub-block of the target, not on the block centres
        j_pts, jt_pts = query_points(src, trg, 6, np.random.default_rng(i))
        cell = 224 / 6
        np.testing.assert_array_equal(np.floor(jt_pts / cell), np.floor(t_pts / cell))
        assert np.abs(jt_pts - t_pts).max() > 1.0
        np.testing.assert_allclose(trg.forward(src.inverse(j_pts)), jt_pts, atol=1e-9)
    # the same seed and index give the same warp; another index another one
    assert random_pair(640, 427, 224, pair_rng(0, 3)) == random_pair(640, 427, 224, pair_rng(0, 3))
    assert random_pair(640, 427, 224, pair_rng(0, 3)) != random_pair(640, 427, 224, pair_rng(0, 4))


def test_hand_made_view_maps_points_exactly():
    v = View((10.0, 20.0, 110.0, 70.0), (200, 100), flip=True)  # 2x zoom, mirrored
    np.testing.assert_allclose(v.forward([[10, 20], [110, 70], [60, 45]]), [[200, 0], [0, 100], [100, 50]])
    sq = centre_square(300, 200, 100)
    assert sq.box == (50.0, 0.0, 250.0, 200.0)
    np.testing.assert_allclose(sq.forward([[150, 100]]), [[50, 50]])


def _blob(w, h, cx, cy, sigma=3.0):
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    g = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma ** 2))
    return Image.fromarray(np.repeat((255 * g)[..., None], 3, axis=2).round().astype(np.uint8))


def _centroid(img):
    a = np.asarray(img, np.float64)[..., 0]
    a = np.where(a > 0.2 * a.max(), a, 0)
    yy, xx = np.mgrid[0:a.shape[0], 0:a.shape[1]] + 0.5
    return np.array([(a * xx).sum() / a.sum(), (a * yy).sum() / a.sum()])


@pytest.mark.parametrize("flip", [False, True])
def test_rendered_view_puts_a_blob_where_forward_says(flip):
    img = _blob(300, 200, 140.3, 95.7)
    v = View((100.0, 60.0, 180.0, 140.0), (160, 160), flip=flip, jitter=(1.2, 0.9, 1.1, 0.0))
    expected = v.forward([[140.3, 95.7]])[0]  # 2x zoom: (80.6, 71.4), mirrored x 79.4
    np.testing.assert_allclose(_centroid(v.render(img)), expected, atol=0.25)


def _onehot_grid(h, w):
    """(h*w, h, w): cell (r, c) has the one-hot code r*w + c."""
    return torch.eye(h * w).reshape(h * w, h, w)


def test_synthetic_pair_gives_the_known_pck():
    # 8 x 8 px images, 4 x 4 grid (2-px cells), one-hot codes; the target is the source mirrored
    src_f = _onehot_grid(4, 4)
    trg_f = src_f.flip(-1).clone()
    src = View((0.0, 0.0, 8.0, 8.0), (8, 8))
    trg = View((0.0, 0.0, 8.0, 8.0), (8, 8), flip=True)
    # query points at the 16 cell centres: every match exact
    s_pts, gt = query_points(src, trg, 4)
    np.testing.assert_allclose(match_points(src_f, trg_f, s_pts, (8, 8), (8, 8)), gt)
    # swap the codes of two target cells, (0, 0) and (3, 3): those two points land 6*sqrt(2) = 8.49 px off
    trg_bad = trg_f.clone()
    trg_bad[:, 0, 0], trg_bad[:, 3, 3] = trg_f[:, 3, 3], trg_f[:, 0, 0]
    acc = {"m": WarpPCK(alphas=(0.05, 1.0, 1.1))}
    score_pair({"m": src_f}, {"m": trg_bad}, src, trg, 4, acc)
    s = acc["m"].summary()
    assert s["all"]["points"] == 16 and s["flip"]["pairs"] == 1 and s["no_flip"]["points"] == 0
    # thresholds alpha * 8 px: 0.4 px -> 14/16 exact; 8 px -> still 14/16 (8.49 > 8); 8.8 px -> all 16
    assert s["all"]["pck"] == {"pck@0.05": 14 / 16, "pck@1": 14 / 16, "pck@1.1": 1.0}
    assert s["flip"]["pck"] == s["all"]["pck"] and s["no_flip"]["pck"]["pck@0.05"] is None


def test_cell_and_pixel_matching_precision():
    f = _onehot_grid(4, 4)
    # a point off the cell centre: cell mode predicts the centre of its cell (1, 1) -> error sqrt(0.5)
    pred = match_points(f, f, np.array([[0.5, 0.5]]), (8, 8), (8, 8), "cell")
    np.testing.assert_allclose(pred, [[1.0, 1.0]])
    # a 2x denser grid halves the cell: the centre of its cell is the point itself
    f2 = _onehot_grid(8, 8)
    np.testing.assert_allclose(match_points(f2, f2, np.array([[0.5, 0.5]]), (8, 8), (8, 8), "cell"), [[0.5, 0.5]])
    # pixel mode on a 16 x 16 px image (4-px cells): the one-hot similarity of cell (1, 1) upsampled bilinearly
    # peaks (0.875^2) on the four pixels around its centre (6, 6); tie -> the first in raster order, pixel (5, 5)
    pred = match_points(f, f, np.array([[6.0, 6.0]]), (16, 16), (16, 16), "pixel")
    np.testing.assert_allclose(pred, [[5.5, 5.5]])
    acc = WarpPCK(alphas=(0.05, 0.1))
    acc.add(np.array([[1.0, 1.0]]), np.array([[0.5, 0.5]]), 8, flipped=False)  # error 0.707 px of 8
    assert acc.summary()["all"]["pck"] == {"pck@0.05": 0.0, "pck@0.1": 1.0}
