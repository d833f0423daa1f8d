#!/usr/bin/env python
"""Extraction speed, side by side in one run: ViT@224, ViT+LiFT@224, ViT@448 and bilinear, for ViT-S backbones.

    python bench/bench_extract.py                      # CPU, batch 1, both ViT-S backbones
    python bench/bench_extract.py --batch_size 8 --reps 10

Targets (issue 3): ViT+LiFT@224 at least 3.5x faster than ViT@448; one LiFT step adds at most 20 % to the
backbone's time at 224. Timing does not depend on weight values, so ``dino_vits16`` runs with random weights and a
random LiFT of the official architecture; ``dinov2_vits14_imgfocus`` uses its real weights and, if shipped, its LiFT.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from extractor import ViTExtractor  # noqa: E402
from liftkit.lift.model import LiFT  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", default="dinov2_vits14_imgfocus,dino_vits16")
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--output_json", default=None)
    return p


def _time_round_robin(cases: Dict[str, Callable[[], object]], reps: int, warmup: int, device: str) -> Dict[str, float]:
    """Median seconds per call of each case, the cases interleaved rep by rep so that load changes on a shared
    machine hit all of them alike (the ratios are what we report)."""
    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(warmup):
        for fn in cases.values():
            fn()
    times: Dict[str, List[float]] = {k: [] for k in cases}
    for _ in range(reps):
        for k, fn in cases.items():
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_backbone(name: str, args) -> dict:
    random = name != "dinov2_vits14_imgfocus"
    ext = ViTExtractor(name, random_init=random, lift_path=None if random else "auto", device=args.device)
    if ext.lift is None:
        ext.lift = LiFT(ext.embed_dim, ext.patch_size).eval().to(args.device)
    s = 224  # the paper's setting: 16x16 grid for p=14, 14x14 for p=16
    x = torch.randn(args.batch_size, 3, s, s, device=args.device)
    x2 = torch.randn(args.batch_size, 3, 2 * s, 2 * s, device=args.device)
    low = ext.extract_descriptors(x)
    with torch.inference_mode():
        cases = {
            f"vit@{s}": lambda: ext.extract_descriptors(x),
            f"lift_step@{s}": lambda: ext.lift(low, x),
            f"vit+lift@{s}": lambda: ext.lift(ext.extract_descriptors(x), x),
            f"vit+bilinear@{s}": lambda: F.interpolate(ext.extract_descriptors(x), scale_factor=2, mode="bilinear"),
            f"vit@{2 * s}": lambda: ext.extract_descriptors(x2),
        }
        secs = _time_round_robin(cases, args.reps, args.warmup, args.device)
    r = {
        "backbone": name, "input": s, "batch_size": args.batch_size,
        "ms_per_image": {k: 1000 * v / args.batch_size for k, v in secs.items()},
        "speedup_vit+lift_vs_vit@2x": secs[f"vit@{2 * s}"] / secs[f"vit+lift@{s}"],
        "lift_overhead_vs_vit": secs[f"lift_step@{s}"] / secs[f"vit@{s}"],
    }
    return r


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"[bench_extract] args: {json.dumps(vars(args), sort_keys=True)}; torch threads={torch.get_num_threads()}",
          file=sys.stderr)
    results = [bench_backbone(b, args) for b in args.backbones.split(",")]
    for r in results:
        print(f"\n{r['backbone']} (input {r['input']} px, batch {r['batch_size']}), median ms per image:")
        for k, v in r["ms_per_image"].items():
            print(f"  {k:<18} {v:8.1f}")
        sp, ov = r["speedup_vit+lift_vs_vit@2x"], r["lift_overhead_vs_vit"]
        print(f"  ViT+LiFT@{r['input']} is {sp:.2f}x faster than ViT@{2 * r['input']} (target >= 3.5x): "
              f"{'OK' if sp >= 3.5 else 'MISSED'}")
        print(f"  one LiFT step adds {100 * ov:.1f} % to ViT@{r['input']} (target <= 20 %): "
              f"{'OK' if ov <= 0.20 else 'MISSED'}")
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
