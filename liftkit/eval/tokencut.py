"""TokenCut (Wang et al., CVPR 2022) single-object discovery on a dense feature grid.

Given dense features ``f`` of shape (C, h, w) (a backbone patch grid without its CLS token, or a LiFT grid):

1. flatten to N = h * w nodes and L2-normalise each node's C-vector;
2. affinity ``A = f f^T`` binarised at ``tau``: ``A_ij = 1`` if ``f_i . f_j > tau`` else ``eps`` (1e-5), so
   ``A = (1 - eps) B + eps 1 1^T`` with ``B`` the 0/1 matrix ``[f_i . f_j > tau]``; degrees ``D = diag(A 1)``;
3. the Normalised-Cut relaxation: the second-smallest generalised eigenvector ``v`` of ``(D - A) v = lambda D v``;
4. bipartition at the mean of ``v``; the seed is ``argmax |v|``; flip so that the seed is foreground;
5. the 4-connected foreground component holding the seed; its bounding box in grid cells, scaled to the image.

Step 5 uses the image-to-grid scale of *this* grid, ``(H_img / h, W_img / w)``, so the same code serves backbone
grids of any patch size, LiFT grids (2h, 2w) and images resized by any factor (the official code multiplies by the
patch size of the backbone, which is only right for the grid of an unresized, padded image).

Eigensolvers (both give the same vector up to sign and D-normalisation):
  * ``dense``: ``scipy.linalg.eigh(D - A, D, subset_by_index=[1, 1])`` on the materialised N x N matrices, the
    reference (O(N^3) time, O(N^2) float64 memory);
  * ``sparse``: matrix-free Lanczos (``scipy.sparse.linalg.eigsh``) on ``M = D^-1/2 A D^-1/2`` whose second-largest
    eigenvector ``y`` gives ``v = D^-1/2 y`` (eigenvalue ``lambda = 1 - mu``). ``A`` is applied as
    ``c_s S + c_1 1 1^T`` where ``S`` is a scipy sparse 0/1 matrix, either ``B`` (``c_s = 1 - eps, c_1 = eps``) or,
    when ``B`` is more than half full, its complement ``1 1^T - B`` (``c_s = -(1 - eps), c_1 = 1``), so neither the
    dense ``A`` nor a dense ``B`` is ever built. The known top eigenvector of ``M`` (``D^1/2 1``, eigenvalue 1) is
    deflated to -2, so the wanted one is the largest.
  * ``auto``: dense up to :data:`AUTO_DENSE_MAX_NODES` nodes, sparse above.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Tuple, Union

import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg
import torch
from scipy import ndimage

from liftkit.errors import ConfigError

SOLVERS = ("dense", "sparse", "auto")
AUTO_DENSE_MAX_NODES = 400
# Largest grid accepted: the implicit affinity stores at most N^2 / 2 pairs (about 1.6 GB at this size).
MAX_NODES = 128 * 128
DEFAULT_EPS = 1e-5
_BLOCK_ROWS = 1024


@dataclass
class TokenCutResult:
    """The object TokenCut found in one image.

    Attributes:
        box: ``(x1, y1, x2, y2)`` in pixels of the image whose size was given (continuous coordinates).
        box_grid: ``(x1, y1, x2, y2)`` in grid cells, x2/y2 exclusive.
        mask: (h, w) bool, the seed's 4-connected foreground component.
        bipartition: (h, w) bool, the whole foreground side of the cut.
        eigenvector: (h, w) float64, the second generalised eigenvector, signed so that the seed is positive.
        eigenvalue: its generalised eigenvalue lambda.
        seed: ``(row, col)`` of ``argmax |v|``.
        solver: ``dense`` or ``sparse`` (what ``auto`` resolved to).
        grid_hw: (h, w).
        density: fraction of node pairs with affinity above tau (1 = complete graph, no cut).
    """

    box: Tuple[float, float, float, float]
    box_grid: Tuple[int, int, int, int]
    mask: np.ndarray
    bipartition: np.ndarray
    eigenvector: np.ndarray
    eigenvalue: float
    seed: Tuple[int, int]
    solver: str
    grid_hw: Tuple[int, int]
    density: float


# --------------------------------------------------------------------------------------------- affinity
def flatten_normalized(feats: Union[torch.Tensor, np.ndarray]) -> torch.Tensor:
    """(C, h, w) or (1, C, h, w) features -> (N, C) float32 rows of unit L2 norm, N = h * w (row-major)."""
    f = torch.as_tensor(feats).detach()
    if f.dim() == 4:
        if f.shape[0] != 1:
            raise ConfigError(f"TokenCut takes one image's features, got a batch of {f.shape[0]}")
        f = f[0]
    if f.dim() != 3:
        raise ConfigError(f"TokenCut expects features of shape (C, h, w), got {tuple(f.shape)}")
    c = f.shape[0]
    flat = f.reshape(c, -1).t().to("cpu", torch.float32)
    return torch.nn.functional.normalize(flat, p=2, dim=1)


def affinity_blocks(flat: torch.Tensor, tau: float, block_rows: int = _BLOCK_ROWS
                    ) -> Iterator[Tuple[int, np.ndarray]]:
    """Row blocks of the binarised affinity ``B = [f f^T > tau]``, never the whole matrix at once.

    Both solvers build ``B`` through this one routine, so they see exactly the same graph.

    Args:
        flat: (N, C) unit rows.
    Yields:
        (first row, (rows, N) bool block).
    """
    n = flat.shape[0]
    for i in range(0, n, block_rows):
        yield i, (flat[i:i + block_rows] @ flat.t() > tau).numpy()


def binary_affinity(flat: torch.Tensor, tau: float) -> np.ndarray:
    """The full (N, N) bool matrix ``B`` (dense solver and tests only)."""
    n = flat.shape[0]
    out = np.empty((n, n), dtype=bool)
    for i, blk in affinity_blocks(flat, tau):
        out[i:i + blk.shape[0]] = blk
    return out


@dataclass
class ImplicitAffinity:
    """``A = c_s * S + c_1 * 1 1^T`` with S a scipy CSR 0/1 matrix (``B`` or its complement); see the module doc.

    Attributes:
        s: (N, N) CSR float64 0/1.
        c_s, c_1: the coefficients.
        complement: True when ``S = 1 1^T - B``.
    """

    s: scipy.sparse.csr_matrix
    c_s: float
    c_1: float
    complement: bool

    @property
    def n(self) -> int:
        return self.s.shape[0]

    def matvec(self, x: np.ndarray) -> np.ndarray:
        """A @ x for x of shape (N,) or (N, k)."""
        ones_term = x.sum(axis=0, keepdims=x.ndim > 1)
        return self.c_s * (self.s @ x) + self.c_1 * ones_term

    def degrees(self) -> np.ndarray:
        """(N,) row sums of A."""
        return self.c_s * np.asarray(self.s.sum(axis=1)).ravel() + self.c_1 * self.n


def implicit_affinity(flat: torch.Tensor, tau: float, eps: float = DEFAULT_EPS, sample_rows: int = 256
                      ) -> ImplicitAffinity:
    """Build :class:`ImplicitAffinity` from (N, C) unit rows, storing B or its complement, whichever is sparser.

    The density of B is estimated on ``sample_rows`` evenly spaced rows before building, so only one pass is made.
    """
    n = flat.shape[0]
    rows = np.linspace(0, n - 1, min(n, sample_rows)).round().astype(np.int64)
    density = float((flat[torch.from_numpy(rows)] @ flat.t() > tau).float().mean())
    complement = density > 0.5
    indptr = [np.zeros(1, dtype=np.int64)]
    indices = []
    offset = 0
    for _, blk in affinity_blocks(flat, tau):
        if complement:
            blk = ~blk
        r, c = np.nonzero(blk)
        counts = np.bincount(r, minlength=blk.shape[0])
        indptr.append(offset + np.cumsum(counts))
        offset += int(counts.sum())
        indices.append(c.astype(np.int32 if n < 2 ** 31 else np.int64))
    indptr_arr = np.concatenate(indptr)
    idx = np.concatenate(indices) if indices else np.zeros(0, dtype=np.int32)
    s = scipy.sparse.csr_matrix((np.ones(idx.size, dtype=np.float64), idx, indptr_arr), shape=(n, n))
    if complement:
        return ImplicitAffinity(s, -(1.0 - eps), 1.0, True)
    return ImplicitAffinity(s, 1.0 - eps, eps, False)


# --------------------------------------------------------------------------------------------- eigensolvers
def dense_second_eigenvector(b: np.ndarray, eps: float = DEFAULT_EPS) -> Tuple[np.ndarray, float]:
    """Reference solver: ``eigh(D - A, D, subset_by_index=[1, 1])`` with ``A = where(B, 1, eps)``.

    Args:
        b: (N, N) bool binarised affinity.
    Returns:
        ((N,) float64 eigenvector, D-normalised (v^T D v = 1), arbitrary sign; its eigenvalue lambda).
    """
    a = np.where(b, 1.0, eps)
    d = np.diag(a.sum(axis=1))
    vals, vecs = scipy.linalg.eigh(d - a, d, subset_by_index=[1, 1])
    return vecs[:, 0], float(vals[0])


def sparse_second_eigenvector(aff: ImplicitAffinity, tol: float = 1e-10, seed: int = 0
                              ) -> Tuple[np.ndarray, float]:
    """Matrix-free solver (see the module doc): Lanczos on the deflated ``D^-1/2 A D^-1/2``.

    Returns:
        ((N,) float64 eigenvector, D-normalised (v^T D v = 1), arbitrary sign; its eigenvalue lambda).
    """
    n = aff.n
    deg = aff.degrees()
    inv_sqrt = 1.0 / np.sqrt(deg)
    u = np.sqrt(deg)
    u /= np.linalg.norm(u)

    def mv(y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        if y.ndim == 2:
            return inv_sqrt[:, None] * aff.matvec(inv_sqrt[:, None] * y) - 3.0 * u[:, None] * (u @ y)[None, :]
        return inv_sqrt * aff.matvec(inv_sqrt * y) - 3.0 * u * (u @ y)

    op = scipy.sparse.linalg.LinearOperator((n, n), matvec=mv, matmat=mv, dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(n)
    try:
        vals, vecs = scipy.sparse.linalg.eigsh(op, k=1, which="LA", v0=v0, tol=tol)
    except scipy.sparse.linalg.ArpackNoConvergence:
        try:  # a nearly repeated eigenvalue: a larger Krylov space and more iterations
            vals, vecs = scipy.sparse.linalg.eigsh(op, k=1, which="LA", v0=v0, tol=tol, ncv=min(n - 1, 100),
                                                   maxiter=50 * n)
        except scipy.sparse.linalg.ArpackNoConvergence:
            raise ConfigError(f"TokenCut: the sparse eigensolver did not converge on this {n}-cell grid (the second "
                              "and third eigenvalues are nearly equal); use --solver dense") from None
    v = inv_sqrt * vecs[:, 0]
    v /= np.sqrt(np.sum(deg * v * v))
    return v, float(1.0 - vals[0])


def resolve_solver(solver: str, num_nodes: int) -> str:
    """``auto`` -> ``dense`` for at most :data:`AUTO_DENSE_MAX_NODES` nodes, else ``sparse``."""
    if solver not in SOLVERS:
        raise ConfigError(f"unknown --solver '{solver}'; choose one of: {', '.join(SOLVERS)}")
    if solver == "auto":
        return "dense" if num_nodes <= AUTO_DENSE_MAX_NODES else "sparse"
    return solver


def _no_cut_error(flat: torch.Tensor, tau: float, complete: bool = True) -> ConfigError:
    """The error for a graph whose Ncut eigenvector is undefined: every pair above tau (complete) or none."""
    n = flat.shape[0]
    rows = torch.from_numpy(np.linspace(0, n - 1, min(n, 256)).round().astype(np.int64))
    median = float((flat[rows] @ flat.t()).median())
    what, fix = ("exceed", "raise") if complete else ("are at most", "lower")
    return ConfigError(
        f"TokenCut: all {n} x {n} cosine affinities {what} --tau {tau:g} (median {median:.2f}), so the graph has "
        f"no cut and the box would be arbitrary; {fix} --tau (e.g. to {median:.2f}) or use another --facet/--layer"
    )


def weighted_second_eigenvector(flat: torch.Tensor, tau: float, eps: float = DEFAULT_EPS) -> Tuple[np.ndarray, float]:
    """The official ``--no-binary-graph`` ablation: ``A = f f^T`` with entries below tau set to eps (dense eigh)."""
    a = (flat @ flat.t()).numpy().astype(np.float64)
    a[a < tau] = eps
    d = np.diag(a.sum(axis=1))
    vals, vecs = scipy.linalg.eigh(d - a, d, subset_by_index=[1, 1])
    return vecs[:, 0], float(vals[0])


def second_eigenvector(flat: torch.Tensor, tau: float, eps: float = DEFAULT_EPS, solver: str = "auto",
                       weighted: bool = False) -> Tuple[np.ndarray, float, str, float]:
    """The Ncut eigenvector of (N, C) unit rows (``weighted``: similarity-weighted edges, dense solver only).

    Returns:
        ((N,) eigenvector, eigenvalue, the solver used, density of B (fraction of pairs above tau)).
    Raises:
        ConfigError: fewer than 3 nodes, or every pair above tau (no cut exists).
    """
    n = flat.shape[0]
    solver = resolve_solver(solver, n)
    if n < 3:
        raise ConfigError(f"TokenCut needs a grid of at least 3 cells, got {n}; use a larger image")
    if n > MAX_NODES:
        raise ConfigError(f"TokenCut on a grid of {n} cells (more than {MAX_NODES}) needs too much memory; "
                          "pass a smaller --load_size")
    if weighted:
        b = binary_affinity(flat, tau)
        vec, val = weighted_second_eigenvector(flat, tau, eps)
        return vec, val, "dense", float(b.mean())
    if solver == "dense":
        b = binary_affinity(flat, tau)
        density = float(b.mean())
        if density == 1.0 or b.sum() == np.trace(b):
            raise _no_cut_error(flat, tau, complete=density == 1.0)
        vec, val = dense_second_eigenvector(b, eps)
    else:
        aff = implicit_affinity(flat, tau, eps)
        density = aff.s.nnz / n ** 2
        density = 1.0 - density if aff.complement else density
        if aff.complement and aff.s.nnz == 0:
            raise _no_cut_error(flat, tau)
        if not aff.complement and aff.s.nnz == aff.s.diagonal().sum():
            raise _no_cut_error(flat, tau, complete=False)
        vec, val = sparse_second_eigenvector(aff)
    return vec, val, solver, density


# --------------------------------------------------------------------------------------------- partition and box
def bipartition(vec: np.ndarray, grid_hw: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray, Tuple[int, int]]:
    """Split at the mean, pick the seed ``argmax |v|`` and orient so that the seed is foreground.

    Args:
        vec: (N,) eigenvector, N = h * w row-major.
    Returns:
        ((h, w) bool foreground, (h, w) signed eigenvector, seed (row, col)).
    """
    h, w = grid_hw
    v = np.asarray(vec, dtype=np.float64)
    fg = v > v.mean()
    seed = int(np.argmax(np.abs(v)))
    if not fg[seed]:
        v = -v
        fg = ~fg
    return fg.reshape(h, w), v.reshape(h, w), (seed // w, seed % w)


def seed_component(fg: np.ndarray, seed: Tuple[int, int]) -> np.ndarray:
    """(h, w) bool: the 4-connected component of ``fg`` that holds ``seed``."""
    labels, _ = ndimage.label(fg)  # default structure: 4-connectivity
    return labels == labels[seed]


def mask_box(mask: np.ndarray) -> Tuple[int, int, int, int]:
    """Grid box ``(x1, y1, x2, y2)`` of a non-empty (h, w) mask, x2/y2 exclusive."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def grid_box_to_image(box_grid: Tuple[int, int, int, int], grid_hw: Tuple[int, int],
                      image_hw: Tuple[int, int]) -> Tuple[float, float, float, float]:
    """Scale a grid box to pixels with the grid's own image-to-grid scale ``(H / h, W / w)``, clipped to the image."""
    h, w = grid_hw
    ih, iw = image_hw
    sy, sx = ih / h, iw / w
    x1, y1, x2, y2 = box_grid
    return (float(x1 * sx), float(y1 * sy), float(min(x2 * sx, iw)), float(min(y2 * sy, ih)))


def tokencut(feats: Union[torch.Tensor, np.ndarray], image_hw: Tuple[int, int], tau: float = 0.2,
             eps: float = DEFAULT_EPS, solver: str = "auto", weighted: bool = False) -> TokenCutResult:
    """Run TokenCut on one image's dense features.

    Args:
        feats: (C, h, w) or (1, C, h, w), no CLS token.
        image_hw: (H, W) of the image the box should refer to (e.g. the original image, before any resize).
        tau: affinity threshold.
        eps: weight of the edges below tau.
        solver: ``dense`` | ``sparse`` | ``auto``.
        weighted: similarity-weighted instead of binary edges (the official ``--no-binary-graph``; dense solver).
    Returns:
        :class:`TokenCutResult`.
    """
    flat = flatten_normalized(feats)
    grid_hw = tuple(int(s) for s in torch.as_tensor(feats).shape[-2:])
    vec, val, used, density = second_eigenvector(flat, tau, eps, solver, weighted)
    fg, signed, seed = bipartition(vec, grid_hw)
    mask = seed_component(fg, seed)
    box_grid = mask_box(mask)
    box = grid_box_to_image(box_grid, grid_hw, image_hw)
    return TokenCutResult(box=box, box_grid=box_grid, mask=mask, bipartition=fg, eigenvector=signed,
                          eigenvalue=val, seed=seed, solver=used, grid_hw=grid_hw,
                          density=density)
