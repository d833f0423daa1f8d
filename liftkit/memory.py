"""Memory prediction: the largest tensors a run will allocate, from the model spec, the input size and the flags,
so that a run that cannot fit is refused *before* anything is allocated.

Predicted tensors (float32 unless noted; B = batch, p = patch, h x w = H/p x W/p patch grid, T = h w + prefix tokens):

* backbone tokens: (B, T, 4C), the MLP's hidden activations, the largest per-token tensor of a ViT block;
* attention: (B, heads, T, T), the attention matrix (what a non-fused attention materialises);
* LiFT after iteration k = 1..K: (B, C, 2^k h, 2^k w), and the image branch at that step (B, 32, 2^(k-1) H,
  2^(k-1) W) (the image is upsampled 2x between iterations);
* a baseline ``bilinearK`` / ``nearestK``: (B, C, 2^K h, 2^K w); ``highresK``: the backbone on a 2^K-times image;
* TokenCut: the (N, N) float64 affinity / eigen-problem of N = (cells of the method's grid);
* the FLOPs probe (eval_spair) and every CKA scale (eval_visualize_feats) are runs of the above at their size.

:func:`check_budget` compares the largest one with ``--max_memory_gb`` and raises
:class:`~liftkit.errors.MemoryBudgetError` with the tensor, its predicted size and the flag to change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence

from liftkit.errors import MemoryBudgetError
from liftkit.methods import Method

GB = 1024 ** 3
FALLBACK_MAX_MEMORY_GB = 8.0
RAM_FRACTION = 0.75


def default_max_memory_gb() -> float:
    """``--max_memory_gb``'s default: 3/4 of the machine's physical memory (8 GB when it cannot be read)."""
    import os

    try:
        return round(RAM_FRACTION * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB, 1)
    except (ValueError, OSError, AttributeError):
        return FALLBACK_MAX_MEMORY_GB


MAX_MEMORY_HELP = ("refuse, before allocating, a run whose largest predicted tensor (backbone tokens, attention, LiFT "
                   "grid, TokenCut eigen-problem) exceeds this many GB (default: 3/4 of the RAM, %(default)s)")


@dataclass(frozen=True)
class Predicted:
    """One tensor a run will allocate: ``what`` it is, its shape, bytes per element and the flag that sizes it."""

    what: str
    shape: tuple
    itemsize: int = 4
    flag: str = "size"  # key into the command's flag names: size, lift_iter, methods, batch

    @property
    def nbytes(self) -> int:
        n = self.itemsize
        for s in self.shape:
            n *= int(s)
        return n


def format_bytes(n: float) -> str:
    for unit, scale in (("TB", 1024 ** 4), ("GB", GB), ("MB", 1024 ** 2)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1024:.1f} KB"


def backbone_tensors(embed_dim: int, num_heads: int, patch_size: int, height: int, width: int, batch: int = 1,
                     prefix_tokens: int = 1, label: str = "") -> List[Predicted]:
    """The backbone's largest tensors on a (batch, 3, height, width) input."""
    t = (height // patch_size) * (width // patch_size) + prefix_tokens
    return [Predicted(f"backbone tokens{label} (B, T, 4C) at {height}x{width}", (batch, t, 4 * embed_dim)),
            Predicted(f"attention{label} (B, heads, T, T) at {height}x{width}", (batch, num_heads, t, t))]


def lift_tensors(channels: int, grid_h: int, grid_w: int, height: int, width: int, iterations: int,
                 batch: int = 1) -> List[Predicted]:
    """LiFT's output grid after every iteration and its image branch at that step."""
    out = []
    for k in range(1, iterations + 1):
        f = 2 ** k
        out.append(Predicted(f"LiFT output after iteration {k} (B, C, {f}h, {f}w)",
                             (batch, channels, f * grid_h, f * grid_w), flag="lift_iter"))
        g = 2 ** (k - 1)
        out.append(Predicted(f"LiFT image branch at iteration {k} (B, 32, {g}H, {g}W)",
                             (batch, 32, g * height, g * width), flag="lift_iter"))
    return out


def plan_tensors(embed_dim: int, num_heads: int, patch_size: int, height: int, width: int,
                 plan: Sequence[Method] = (), batch: int = 1, prefix_tokens: int = 1) -> List[Predicted]:
    """Every predicted tensor of extracting ``plan`` (``--methods``) on a (batch, 3, height, width) input."""
    gh, gw = height // patch_size, width // patch_size
    out = backbone_tensors(embed_dim, num_heads, patch_size, height, width, batch, prefix_tokens)
    lift_iters = max([m.iterations for m in plan if m.kind == "lift"], default=0)
    if lift_iters:
        out += lift_tensors(embed_dim, gh, gw, height, width, lift_iters, batch)
    for m in plan:
        if m.kind in ("bilinear", "nearest"):
            out.append(Predicted(f"{m.name} output (B, C, {m.scale}h, {m.scale}w)",
                                 (batch, embed_dim, m.scale * gh, m.scale * gw), flag="methods"))
        elif m.kind == "highres":
            out += [Predicted(p.what, p.shape, p.itemsize, "methods") for p in backbone_tensors(
                embed_dim, num_heads, patch_size, m.scale * height, m.scale * width, batch, prefix_tokens,
                label=f" of {m.name}")]
    return out


def eigen_tensors(grid_h: int, grid_w: int, plan: Sequence[Method]) -> List[Predicted]:
    """TokenCut's (N, N) float64 affinity for every method's grid (N = cells)."""
    out = []
    for m in plan:
        n = (m.scale * grid_h) * (m.scale * grid_w)
        out.append(Predicted(f"TokenCut affinity of {m.name} (N, N), N = {n} cells", (n, n), 8, flag="methods"))
    return out


def largest(tensors: Iterable[Predicted]) -> Optional[Predicted]:
    return max(tensors, key=lambda p: p.nbytes, default=None)


def check_budget(tensors: Iterable[Predicted], max_memory_gb: float, flags: Dict[str, str], item: str = "",
                 batch: int = 1) -> None:
    """Refuse (MemoryBudgetError) when the largest predicted tensor exceeds ``max_memory_gb``.

    Args:
        flags: the command's flag names for the keys of :attr:`Predicted.flag` (e.g. ``{"size": "--imsize"}``).
        item: prefix naming the image / pair / sequence the prediction is for ("" for a check of the flags alone).
        batch: the batch the tensors were predicted for; when one image would fit, the batch flag is blamed.
    """
    tensors = list(tensors)
    limit = max_memory_gb * GB
    # the input size alone too large: blame the size flag, not the methods that multiply it
    big = largest(t for t in tensors if t.flag == "size" and t.nbytes > limit) or largest(tensors)
    if big is None or big.nbytes <= limit:
        return
    flag = flags.get(big.flag) or flags.get("size", "the input size")
    if batch > 1 and big.shape[0] == batch and big.nbytes // batch <= limit:  # one image would fit
        flag = flags.get("batch", "--batch_size")
    shape = " x ".join(str(int(s)) for s in big.shape)
    raise MemoryBudgetError(
        f"{item + ': ' if item else ''}{big.what} = {shape} x {big.itemsize} B = {format_bytes(big.nbytes)}, over "
        f"--max_memory_gb {max_memory_gb:g}; lower {flag} (or raise --max_memory_gb)")
