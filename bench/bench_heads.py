#!/usr/bin/env python
"""Cost of LiFT's output heads and architectures, side by side in one run: the backbone at 224 px alone, and the
backbone plus one LiFT step with each head (plain, residual, attend k=3, attend k=5) and each architecture
(lift_noimage, resize_conv). Interleaved repetitions, median times, ratios to the backbone alone.

    python bench/bench_heads.py                          # dinov2_vits14_imgfocus at 224 px, batch 1, CPU
    python bench/bench_heads.py --threads 1 --reps 20 --output_json runs/bench_heads.json

Target (issue 18): every head at most 25 % over the backbone at 224 px. Timing does not depend on weight values:
untrained modules of each head are timed on the real backbone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable, Dict, List, Optional

import torch

from liftkit.extractor import ViTExtractor
from liftkit.lift.model import LiFT, count_parameters

VARIANTS = {
    "plain": dict(head="plain"),
    "residual": dict(head="residual"),
    "attend_k3": dict(head="attend", kernel=3),
    "attend_k5": dict(head="attend", kernel=5),
    "lift_noimage": dict(arch="lift_noimage"),
    "resize_conv": dict(arch="resize_conv"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_type", default="dinov2_vits14_imgfocus")
    p.add_argument("--size", type=int, default=224, help="input side in px (default 224)")
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--output_json", default=None)
    return p


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ext = ViTExtractor(args.model_type, lift_path=None, offline=True)
    side = args.size // ext.patch_size * ext.patch_size
    x = torch.randn(args.batch_size, 3, side, side)
    lifts = {k: LiFT(ext.embed_dim, ext.patch_size, **kw).eval() for k, kw in VARIANTS.items()}
    feats = ext.extract_descriptors(x)
    runs: Dict[str, Callable[[], object]] = {"backbone": lambda: ext.extract_descriptors(x)}
    for name, lift in lifts.items():
        runs[name] = (lambda m: (lambda: m(ext.extract_descriptors(x), x)))(lift)
    times: Dict[str, List[float]] = {k: [] for k in runs}
    with torch.no_grad():
        for rep in range(args.warmup + args.reps):
            for name, fn in runs.items():  # interleaved: every variant sees the same machine load
                t = _time(fn)
                if rep >= args.warmup:
                    times[name].append(t)
    base = statistics.median(times["backbone"])
    out = {"model_type": args.model_type, "input": [args.batch_size, 3, side, side], "grid": list(feats.shape[-2:]),
           "threads": torch.get_num_threads(), "reps": args.reps, "rows": {}}
    print(f"{args.model_type} at {side}x{side}, batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"median of {args.reps} interleaved reps")
    print(f"{'variant':<14} {'params':>10} {'ms':>8} {'x backbone':>11}")
    for name, ts in times.items():
        med = statistics.median(ts)
        params = count_parameters(lifts[name]) if name in lifts else 0
        out["rows"][name] = {"ms": round(1000 * med, 2), "ratio": round(med / base, 4), "params": params}
        print(f"{name:<14} {params:>10,} {1000 * med:>8.1f} {med / base:>11.3f}")
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
