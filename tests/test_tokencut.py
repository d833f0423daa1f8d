"""TokenCut on synthetic grids with known answers, and parity between the dense and the matrix-free eigensolver."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from liftkit.errors import ConfigError
from liftkit.eval import tokencut as tc


def two_cluster_grid(h: int = 8, w: int = 10, block=(2, 5, 5, 9), c: int = 16, noise: float = 0.02, seed: int = 0):
    """(C, h, w) features: cells in rows block[0]:block[1], cols block[2]:block[3] near e0, all others near e1."""
    g = torch.Generator().manual_seed(seed)
    f = noise * torch.randn(c, h, w, generator=g)
    f[1] += 1.0
    r0, r1, c0, c1 = block
    f[1, r0:r1, c0:c1] -= 1.0
    f[0, r0:r1, c0:c1] += 1.0
    return f


def smooth_field(h: int, w: int, c: int = 32, seed: int = 0, bias: float = 0.0) -> torch.Tensor:
    """(C, h, w) low-pass random features (a few blobs), plus ``bias`` in every channel to raise all affinities."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, c, 4, 5, generator=g)
    f = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[0]
    return f + 0.05 * torch.randn(c, h, w, generator=g) + bias


@pytest.mark.parametrize("solver", ["dense", "sparse"])
def test_two_clusters_are_split(solver):
    f = two_cluster_grid()
    r = tc.tokencut(f, image_hw=(160, 200), tau=0.2, solver=solver)
    expected = np.zeros((8, 10), dtype=bool)
    expected[2:5, 5:9] = True
    # the small cluster is the foreground (largest |v|), found exactly, and its box scaled by 20 px per cell
    assert np.array_equal(r.mask, expected)
    assert np.array_equal(r.bipartition, expected)
    assert r.box_grid == (5, 2, 9, 5)
    assert r.box == (100.0, 40.0, 180.0, 100.0)
    assert expected[r.seed]
    assert r.solver == solver
    assert r.eigenvector[r.seed] > 0
    # two nearly disconnected clusters: the Ncut eigenvalue is ~0 (only eps edges cross), density known exactly
    assert 0 <= r.eigenvalue < 1e-3
    assert r.density == pytest.approx((12 ** 2 + 68 ** 2) / 80 ** 2)


def test_batch_of_one_and_numpy_inputs_are_accepted():
    f = two_cluster_grid()
    a = tc.tokencut(f[None], (160, 200), solver="dense")
    b = tc.tokencut(f.numpy(), (160, 200), solver="dense")
    assert a.box == b.box == (100.0, 40.0, 180.0, 100.0)
    with pytest.raises(ConfigError, match="batch of 2"):
        tc.tokencut(torch.stack([f, f]), (160, 200))
    with pytest.raises(ConfigError, match=r"\(C, h, w\)"):
        tc.tokencut(f[0], (160, 200))


@pytest.mark.parametrize("bias", [0.0, 0.8])
def test_implicit_affinity_matches_dense_matrix(bias):
    f = smooth_field(12, 14, bias=bias)
    flat = tc.flatten_normalized(f)
    eps = 1e-5
    b = tc.binary_affinity(flat, 0.2)
    a = np.where(b, 1.0, eps)
    aff = tc.implicit_affinity(flat, 0.2, eps)
    # bias 0.8 makes B more than half full (0.91), so the complement is stored instead
    assert aff.complement == (b.mean() > 0.5)
    assert aff.complement == (bias > 0)
    x = np.random.default_rng(1).standard_normal((flat.shape[0], 3))
    np.testing.assert_allclose(aff.matvec(x), a @ x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(aff.matvec(x[:, 0]), a @ x[:, 0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(aff.degrees(), a.sum(1), rtol=1e-12)
    stored = aff.s.nnz
    assert stored == (b.size - b.sum() if aff.complement else b.sum())


@pytest.mark.parametrize("hw,bias,tau", [((16, 16), 0.0, 0.2), ((20, 24), 0.8, 0.2), ((20, 20), 0.0, 0.3)])
def test_dense_and_sparse_solvers_agree(hw, bias, tau):
    f = smooth_field(*hw, bias=bias, seed=hw[0])
    dense = tc.tokencut(f, (hw[0] * 16, hw[1] * 16), tau=tau, solver="dense")
    sparse = tc.tokencut(f, (hw[0] * 16, hw[1] * 16), tau=tau, solver="sparse")
    a, b = dense.eigenvector.ravel(), sparse.eigenvector.ravel()
    assert abs(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.99
    assert dense.eigenvalue == pytest.approx(sparse.eigenvalue, abs=1e-8)
    assert dense.box == sparse.box
    assert np.array_equal(dense.mask, sparse.mask)
    assert dense.seed == sparse.seed
    assert dense.density == pytest.approx(sparse.density)


def test_sparse_eigenvector_solves_the_generalised_problem():
    f = smooth_field(14, 16, seed=3)
    flat = tc.flatten_normalized(f)
    b = tc.binary_affinity(flat, 0.2)
    a = np.where(b, 1.0, 1e-5)
    d = np.diag(a.sum(1))
    v, lam = tc.sparse_second_eigenvector(tc.implicit_affinity(flat, 0.2, 1e-5))
    np.testing.assert_allclose((d - a) @ v, lam * d @ v, atol=1e-7)
    assert abs(v @ d @ np.ones(len(v))) < 1e-8  # D-orthogonal to the trivial eigenvector
    assert v @ d @ v == pytest.approx(1.0)
    # and it is the second-smallest: the full reference spectrum has exactly one eigenvalue below it
    all_vals = scipy.linalg.eigh(d - a, d, eigvals_only=True)
    assert lam == pytest.approx(all_vals[1], abs=1e-8)
    dv, dlam = tc.dense_second_eigenvector(b, 1e-5)
    assert dlam == pytest.approx(all_vals[1], abs=1e-10)


def test_bipartition_is_sign_invariant_and_seed_is_foreground():
    v = np.array([0.1, 0.2, -0.9, 0.3, 0.25, 0.05])
    for s in (1, -1):
        fg, signed, seed = tc.bipartition(s * v, (2, 3))
        assert seed == (0, 2)  # argmax |v| is index 2
        assert fg[seed] and signed[seed] > 0
        # mean of v is 0: fg = {v < 0} after orienting by the seed
        assert np.array_equal(fg, np.array([[False, False, True], [False, False, False]]))


def test_seed_component_is_4_connected():
    fg = np.zeros((5, 5), dtype=bool)
    fg[0:2, 0:2] = True
    fg[2, 2] = True  # touches the first blob only diagonally
    fg[4, 0:5] = True
    comp = tc.seed_component(fg, (0, 0))
    expected = np.zeros_like(fg)
    expected[0:2, 0:2] = True
    assert np.array_equal(comp, expected)
    assert tc.mask_box(comp) == (0, 0, 2, 2)
    assert tc.mask_box(tc.seed_component(fg, (4, 3))) == (0, 4, 5, 5)


def test_grid_box_scaled_with_the_grids_own_scale():
    # patch 8 at 224: grid 28, 8 px per cell; a 2x LiFT grid of the same image: 4 px per cell
    assert tc.grid_box_to_image((3, 4, 10, 12), (28, 28), (224, 224)) == (24.0, 32.0, 80.0, 96.0)
    assert tc.grid_box_to_image((6, 8, 20, 24), (56, 56), (224, 224)) == (24.0, 32.0, 80.0, 96.0)
    # a 353x500 image fed at 350x504 to a /14 backbone: grid 36x25, scale 500/36 by 353/25
    box = tc.grid_box_to_image((0, 0, 25, 36), (36, 25), (500, 353))
    assert box == (0.0, 0.0, 353.0, 500.0)
    x1, y1, x2, y2 = tc.grid_box_to_image((5, 9, 10, 18), (36, 25), (500, 353))
    assert (x1, y1, x2, y2) == pytest.approx((5 * 353 / 25, 9 * 500 / 36, 10 * 353 / 25, 18 * 500 / 36))


def test_no_cut_and_bad_options_are_clear_errors():
    f = torch.ones(8, 6, 6) + 0.01 * torch.randn(8, 6, 6, generator=torch.Generator().manual_seed(0))
    for solver in ("dense", "sparse"):
        with pytest.raises(ConfigError, match="raise --tau"):
            tc.tokencut(f, (96, 96), tau=0.2, solver=solver)
        with pytest.raises(ConfigError, match="lower --tau"):
            tc.tokencut(two_cluster_grid(), (96, 96), tau=1.5, solver=solver)
    with pytest.raises(ConfigError, match="--solver"):
        tc.tokencut(two_cluster_grid(), (96, 96), solver="arpack")
    with pytest.raises(ConfigError, match="at least 3 cells"):
        tc.tokencut(torch.randn(4, 1, 2), (14, 28))


def test_auto_solver_by_grid_size():
    assert tc.resolve_solver("auto", tc.AUTO_DENSE_MAX_NODES) == "dense"
    assert tc.resolve_solver("auto", tc.AUTO_DENSE_MAX_NODES + 1) == "sparse"
    assert tc.tokencut(two_cluster_grid(), (160, 200)).solver == "dense"
    big = two_cluster_grid(24, 30, block=(5, 12, 14, 25))
    r = tc.tokencut(big, (240, 300))
    assert r.solver == "sparse"
    assert r.box_grid == (14, 5, 25, 12)
