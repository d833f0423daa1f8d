"""Cost of a feature extractor: FLOPs (``torch.utils.flop_counter``) and wall-clock time per call.

FLOPs follow ``FlopCounterMode``'s convention: one multiply-add counts 2, and only matrix products and
convolutions are counted (element-wise ops, norms, softmax and interpolation are not). PyTorch's table has no entry
for the CPU flash-attention kernel (``aten._scaled_dot_product_flash_attention_for_cpu``) that
``F.scaled_dot_product_attention`` dispatches to on CPU, so attention would be silently missing there; it is added
here with the formula PyTorch uses for the GPU kernels (``2 B heads Lq Lk (E + Ev)``), so CPU and GPU counts agree.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Tuple

import torch
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten


def _sdpa_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    """FLOPs of softmax(Q K^T) V for Q (B, heads, Lq, E), K (B, heads, Lk, E), V (B, heads, Lk, Ev)."""
    b, h, lq, e = query_shape
    lk, ev = key_shape[-2], value_shape[-1]
    return 2 * b * h * lq * lk * e + 2 * b * h * lq * lk * ev


def _custom_mapping() -> Dict[Any, Callable]:
    ops = {}
    op = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        ops[op] = _sdpa_flops
    return ops


def count_flops(fn: Callable[[], Any]) -> Tuple[int, Dict[str, int]]:
    """Run ``fn()`` once under a FLOP counter.

    Returns:
        (total FLOPs, FLOPs per aten operator name).
    """
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_custom_mapping()) as counter:
        fn()
    per_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), per_op


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> Tuple[Any, float]:
    """``(fn(), seconds)``; CUDA work is synchronised before and after so the time is the computation's."""
    device = torch.device(device)
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0
