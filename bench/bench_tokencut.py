"""Benchmark: TokenCut's eigensolve, dense reference vs matrix-free sparse, on LiFT-sized grids.

The grids are those of the LiFT output of ViT-S/16: 28 x 28 at 224 px input and 56 x 56 at 448 px (optionally more,
``--grids 28,56,112``). Features are either real (``--features real``: the offline ``dinov2_vits14_imgfocus``
backbone on ``assets/sample.jpg`` at half the grid, brought to the grid by its LiFT when one is shipped, else by
bilinear upsampling) or synthetic smooth random fields (``--features synthetic``, no weights needed).

For each grid and solver it reports the median over ``--repeats`` of the eigensolve alone and of the whole TokenCut
(affinity + eigensolve + box), the speed-up ratios, the |cosine| between the two eigenvectors and whether the boxes
are identical. Run::

    python bench/bench_tokencut.py --features real --repeats 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from liftkit.eval import tokencut as tc  # noqa: E402


def synthetic_features(g: int, c: int = 384, seed: int = 0) -> torch.Tensor:
    """(C, g, g) smooth random field: a few blobs (bicubic-upsampled 4x5 noise) plus a little pixel noise."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, c, 4, 5, generator=gen)
    f = torch.nn.functional.interpolate(coarse, size=(g, g), mode="bicubic", align_corners=False)[0]
    return f + 0.05 * torch.randn(c, g, g, generator=gen)


def real_features(grids: List[int], facet: str) -> dict:
    """{g: (C, g, g)} from the offline backbone: input (g/2 * p) px square, then LiFT (if shipped) or bilinear."""
    from PIL import Image

    from extractor import ViTExtractor

    ext = ViTExtractor("dinov2_vits14_imgfocus", facet=facet, offline=True)
    method = "lift" if ext.lift is not None else "bilinear"
    img = Image.open(ROOT / "assets" / "sample.jpg").convert("RGB")
    out = {}
    for g in grids:
        side = g // 2 * ext.patch_size
        out[g] = ext.dense_features(ext.preprocess(img, size=(side, side)), method)[0]
    return out, method


def timed(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", choices=("real", "synthetic"), default="real")
    p.add_argument("--facet", default="value", help="real features: backbone facet (keys of the last DINOv2 layer "
                   "are all mutually similar above tau 0.2, so their graph has no cut)")
    p.add_argument("--grids", default="28,56", help="comma-separated grid sides")
    p.add_argument("--tau", type=float, default=0.2)
    p.add_argument("--eps", type=float, default=tc.DEFAULT_EPS)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (BLAS threads: set OMP_NUM_THREADS)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    grids = [int(s) for s in args.grids.split(",")]
    print("bench_tokencut: " + json.dumps({k: str(v) for k, v in vars(args).items()}), file=sys.stderr)
    if args.features == "real":
        feats, how = real_features(grids, args.facet)
        source = f"dinov2_vits14_imgfocus {args.facet} facet, assets/sample.jpg, {how} to the grid"
    else:
        feats, source = {g: synthetic_features(g) for g in grids}, "synthetic smooth random field, C=384"
    print(f"features: {source}; tau={args.tau:g}, eps={args.eps:g}, median of {args.repeats}, "
          f"torch threads {torch.get_num_threads()}")
    header = (f"{'grid':>8} {'N':>6} {'density':>8} {'dense eig s':>12} {'sparse eig s':>13} {'eig ratio':>10} "
              f"{'dense all s':>12} {'sparse all s':>13} {'all ratio':>10} {'|cos|':>7} {'same box':>9}")
    print(header)
    rows = []
    for g in grids:
        f = feats[g]
        flat = tc.flatten_normalized(f)
        b = tc.binary_affinity(flat, args.tau)
        aff = tc.implicit_affinity(flat, args.tau, args.eps)
        t_de, (vd, _) = timed(lambda: tc.dense_second_eigenvector(b, args.eps), args.repeats)
        t_se, (vs, _) = timed(lambda: tc.sparse_second_eigenvector(aff), args.repeats)
        image_hw = (16 * g // 2, 16 * g // 2)  # the 224 / 448 px image of a ViT-S/16 whose LiFT grid is g
        t_da, rd = timed(lambda: tc.tokencut(f, image_hw, args.tau, args.eps, "dense"), args.repeats)
        t_sa, rs = timed(lambda: tc.tokencut(f, image_hw, args.tau, args.eps, "sparse"), args.repeats)
        cos = float(abs(vd @ vs) / (np.linalg.norm(vd) * np.linalg.norm(vs)))
        same = rd.box == rs.box and bool(np.array_equal(rd.mask, rs.mask))
        row = {"grid": f"{g}x{g}", "nodes": g * g, "density": float(b.mean()), "dense_eig_s": t_de,
               "sparse_eig_s": t_se, "eig_ratio": t_de / t_se, "dense_total_s": t_da, "sparse_total_s": t_sa,
               "total_ratio": t_da / t_sa, "abs_cos": cos, "same_box": same, "box": list(rs.box)}
        rows.append(row)
        print(f"{row['grid']:>8} {g * g:>6} {row['density']:>8.3f} {t_de:>12.3f} {t_se:>13.3f} "
              f"{row['eig_ratio']:>9.1f}x {t_da:>12.3f} {t_sa:>13.3f} {row['total_ratio']:>9.1f}x {cos:>7.4f} "
              f"{str(same):>9}")
    if args.json:
        args.json.write_text(json.dumps({"features": source, "tau": args.tau, "rows": rows}, indent=1))
    return 0 if all(r["same_box"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
