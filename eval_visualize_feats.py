#!/usr/bin/env python
"""Look at what LiFT does: self-similarity maps, PCA pictures, CKA scale invariance, and the PCK-vs-FLOPs curve.

    python eval_visualize_feats.py                                    # assets/ -> output/vis/
    python eval_visualize_feats.py --image_path photos/ --limit 4 --points 120,80 300,200 --lift_iter 3
    python eval_visualize_feats.py --cka_scales 56,112,224,448 --image_path ../shared/data/imagenet-sample-images \
        --limit 16 --no_maps
    python eval_visualize_feats.py --flops_json spair.json --no_maps --no_cka   # the paper's PCK-vs-FLOPs plot

Per image: ``<name>_sim.png`` (one row per point: cosine similarity of the point's feature to every location, for
the backbone grid, bilinear, the 2x input, LiFT and iterative LiFT, the point marked) and ``<name>_pca.png`` (the same
maps as PCA-to-RGB pictures sharing one basis). Over all images: ``cka.json`` and ``cka.png``: linear CKA between the
backbone's features at a destination scale and the features computed at a source scale and brought to the
destination grid by the backbone alone (nearest), bilinear upsampling, or LiFT (applied log2(dst/src) times).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from extractor import ViTExtractor, available_backbones
from liftkit.backbones.specs import DEFAULT_BACKBONE
from liftkit.data.image_io import list_images
from liftkit.errors import LiftKitError, failure_report

HERE = Path(__file__).resolve().parent
CKA_METHODS = ("backbone", "bilinear", "lift")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image_path", nargs="+", default=[str(HERE / "assets")], help="images, folders or globs")
    p.add_argument("--limit", type=int, default=0, help="use at most this many images (0: all)")
    p.add_argument("--output_dir", default="output/vis")
    p.add_argument("--model_type", default=DEFAULT_BACKBONE, help=f"one of: {', '.join(available_backbones())}")
    p.add_argument("--backbone_weights", default=None)
    p.add_argument("--offline", action="store_true")
    p.add_argument("--random_init", action="store_true", help="random backbone (tests only)")
    p.add_argument("--layer", type=int, default=-1)
    p.add_argument("--facet", default="key", choices=("key", "query", "value", "token"))
    p.add_argument("--lift_path", default="auto")
    p.add_argument("--lift_iter", type=int, default=2, help="show LiFT applied 1..K times (default 2)")
    p.add_argument("--load_size", type=int, default=224)
    p.add_argument("--resize_mode", choices=("short", "square"), default="short")
    p.add_argument("--points", nargs="*", default=None, metavar="X,Y",
                   help="points in original-image pixels (default: the image centre)")
    p.add_argument("--no_maps", action="store_true", help="skip similarity and PCA pictures")
    p.add_argument("--no_cka", action="store_true", help="skip the CKA scale-invariance analysis")
    p.add_argument("--cka_scales", default="56,112,224,448", help="square input sizes for CKA")
    p.add_argument("--flops_json", default=None, help="eval_spair.py --output_json file: draw PCK@0.1 vs FLOPs")
    p.add_argument("--device", default="cpu")
    return p


def _parse_points(points: Optional[List[str]], image_wh) -> List[tuple]:
    if not points:
        return [(image_wh[0] / 2, image_wh[1] / 2)]
    out = []
    for s in points:
        try:
            x, y = (float(v) for v in s.split(","))
        except ValueError:
            raise LiftKitError(f"--points '{s}': expected X,Y in pixels, e.g. 120,80") from None
        if not (0 <= x < image_wh[0] and 0 <= y < image_wh[1]):
            raise LiftKitError(f"--points {s} lies outside the {image_wh[0]}x{image_wh[1]} image")
        out.append((x, y))
    return out


def _maps_for_image(ext: ViTExtractor, x: torch.Tensor, lift_iter: int) -> Dict[str, torch.Tensor]:
    maps = {"backbone": ext.dense_features(x, "low")[0], "bilinear": ext.dense_features(x, "bilinear")[0],
            "2x input": ext.dense_features(x, "highres")[0]}
    if ext.lift is not None:
        low = ext.dense_features(x, "low")
        for k in range(1, lift_iter + 1):
            maps["LiFT" if k == 1 else f"LiFT x{k}"] = ext.lift_features(low, x, k)[0]
    return maps


def save_similarity_figure(path: Path, image, maps: Dict[str, torch.Tensor], points: List[tuple]) -> Path:
    """One row per point, one column per map; the point is marked in every panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from liftkit.vis.similarity import similarity_maps

    w, h = image.size
    names = list(maps)
    n = 1 + len(names)
    fig, axes = plt.subplots(len(points), n, figsize=(2.6 * n, 2.6 * h / w * len(points) + 0.5), squeeze=False)
    for r, pt in enumerate(points):
        sims = similarity_maps([maps[k] for k in names], pt, (h, w))
        # one colour range per row, shared by its panels: raw ViT key similarities often all lie in [0.6, 1]
        vmin = float(min(sim.min() for sim in sims))
        axes[r, 0].imshow(np.asarray(image))
        axes[r, 0].plot(pt[0], pt[1], "r+", ms=12, mew=2)
        axes[r, 0].set_title("image")
        for c, (name, sim) in enumerate(zip(names, sims), start=1):
            axes[r, c].imshow(sim.numpy(), cmap="viridis", vmin=vmin, vmax=1.0, extent=(0, w, h, 0),
                              interpolation="nearest")
            axes[r, c].plot(pt[0], pt[1], "r+", ms=12, mew=2)
            axes[r, c].set_title(f"{name} {sim.shape[0]}x{sim.shape[1]}")
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _to_grid(feats: torch.Tensor, grid) -> torch.Tensor:
    if tuple(feats.shape[-2:]) == tuple(grid):
        return feats
    if feats.shape[-2] > grid[0]:
        return F.adaptive_avg_pool2d(feats, grid)
    return F.interpolate(feats, size=grid, mode="bilinear", align_corners=False)


def cka_scale_invariance(ext: ViTExtractor, images: List, scales: List[int]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """{method: {src: {dst: CKA}}}: features at src brought to dst's grid by the method vs the backbone at dst."""
    from liftkit.eval.cka import feature_map_samples, linear_cka

    per_scale = {}
    for s in scales:
        xs = [ext.preprocess(img, size=(ext.target_size((s, s))[0],) * 2) for img in images]
        per_scale[s] = [(x, ext.extract_descriptors(x)) for x in xs]
    out: Dict[str, Dict[str, Dict[str, float]]] = {m: {} for m in CKA_METHODS if m != "lift" or ext.lift is not None}
    for src in scales:
        for dst in scales:
            ref = torch.cat([f for _, f in per_scale[dst]])
            grid = tuple(ref.shape[-2:])
            for method in out:
                got = []
                for x, f in per_scale[src]:
                    if method == "backbone":
                        g = F.interpolate(f, size=grid, mode="nearest") if f.shape[-2] < grid[0] else _to_grid(f, grid)
                    elif method == "bilinear":
                        g = _to_grid(f, grid)
                    else:
                        k = max(0, round(math.log2(grid[0] / f.shape[-2]))) if grid[0] > f.shape[-2] else 0
                        g = _to_grid(ext.lift_features(f, x, k) if k else f, grid)
                    got.append(g)
                val = linear_cka(feature_map_samples(torch.cat(got)), feature_map_samples(ref))
                out[method].setdefault(str(src), {})[str(dst)] = val
    return out


def save_cka_figure(path: Path, cka: Dict[str, Dict[str, Dict[str, float]]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(cka)
    scales = list(next(iter(cka.values())))
    fig, axes = plt.subplots(1, len(methods), figsize=(3.6 * len(methods), 3.4), squeeze=False)
    for ax, m in zip(axes[0], methods):
        mat = np.array([[cka[m][s][d] for d in scales] for s in scales])
        ax.imshow(mat, vmin=0, vmax=1, cmap="magma")
        for i in range(len(scales)):
            for j in range(len(scales)):
                ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", color="w" if mat[i, j] < 0.6 else "k",
                        fontsize=8)
        ax.set_xticks(range(len(scales)), scales)
        ax.set_yticks(range(len(scales)), scales)
        ax.set_xlabel("destination scale (px)")
        ax.set_ylabel("source scale (px)")
        ax.set_title(f"CKA: {m}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    print(f"[eval_visualize_feats] args: {json.dumps(vars(args), sort_keys=True)}", file=sys.stderr)
    out_dir = Path(args.output_dir)
    failures: List[str] = []
    try:
        if args.flops_json:
            from liftkit.eval.plots import plot_metric_vs_flops

            try:
                data = json.loads(Path(args.flops_json).read_text())
                methods = data["methods"]
            except (OSError, ValueError, KeyError) as exc:
                raise LiftKitError(f"--flops_json '{args.flops_json}' is not an eval_spair.py JSON ({exc})") from None
            png = plot_metric_vs_flops(methods, out_dir / "pck_vs_flops.png")
            print(f"wrote {png}", file=sys.stderr)
        if args.no_maps and args.no_cka:
            return 0
        if args.lift_iter < 1:
            raise LiftKitError(f"--lift_iter {args.lift_iter}: must be at least 1")
        ext = ViTExtractor(args.model_type, args.layer, args.facet, backbone_weights=args.backbone_weights,
                           offline=args.offline, random_init=args.random_init, lift_path=args.lift_path,
                           device=args.device)
        if ext.lift is None:
            print(f"[eval_visualize_feats] no LiFT for {args.model_type}: showing the baselines only", file=sys.stderr)
        paths = list_images(args.image_path)
        if args.limit:
            paths = paths[: args.limit]
        if not paths:
            raise LiftKitError(f"--image_path {' '.join(args.image_path)}: no image found")
    except LiftKitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from tqdm import tqdm

    from liftkit.data.image_io import load_image
    from liftkit.vis.panels import save_pca_panel

    loaded = []
    for path in tqdm(paths, desc="images", file=sys.stderr):
        try:
            img = load_image(path, min_side=ext.patch_size)
            loaded.append(img)
            if args.no_maps:
                continue
            points = _parse_points(args.points, img.size)
            x = ext.preprocess(img, load_size=args.load_size, resize_mode=args.resize_mode)
            maps = _maps_for_image(ext, x, args.lift_iter)
            save_similarity_figure(out_dir / f"{path.stem}_sim.png", img, maps, points)
            save_pca_panel(out_dir / f"{path.stem}_pca.png", img, list(maps.values()), list(maps))
        except LiftKitError as exc:
            failures.append(str(exc))
    if not args.no_cka and loaded:
        try:
            scales = [int(s) for s in args.cka_scales.split(",")]
        except ValueError:
            print(f"error: --cka_scales '{args.cka_scales}': expected sizes like 56,112,224", file=sys.stderr)
            return 2
        cka = cka_scale_invariance(ext, loaded, scales)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "cka.json").write_text(json.dumps({"images": len(loaded), "scales": scales, "cka": cka}, indent=1))
        save_cka_figure(out_dir / "cka.png", cka)
        for m, table in cka.items():
            diag = [table[str(s)][str(scales[-1])] for s in scales]
            print(f"CKA to {scales[-1]} px from {scales}: {m:<9} " + " ".join(f"{v:.3f}" for v in diag))
    print(f"[eval_visualize_feats] wrote figures for {len(loaded)} image(s) to {out_dir}", file=sys.stderr)
    if failures:
        print(failure_report(f"{len(failures)} image(s) failed", failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
