"""Look at what LiFT does: self-similarity maps, PCA pictures, CKA scale invariance, and the PCK-vs-FLOPs curve.

``liftkit-visualize`` (installed) or ``python eval_visualize_feats.py`` (checkout); the same flags.

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
The maps of an image cost two backbone passes (its grid, shared by every method, and the 2x input); each LiFT chain
is computed once and every step of it kept.
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

from liftkit.cli import options
from liftkit.cli.runner import ItemFailures, Run, run_command
from liftkit.data.image_io import list_images
from liftkit.errors import ConfigError, LiftKitError
from liftkit.extractor import ViTExtractor
from liftkit.io.outputs import atomic_write, os_error_message, write_text_atomic
from liftkit.methods import Method

COMMAND = "eval_visualize_feats"
CKA_METHODS = ("backbone", "bilinear", "lift")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eval_visualize_feats.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("input")
    options.add_image_path(g, ["assets"], "images, folders or globs (default: assets/ in the working directory)")
    g.add_argument("--limit", type=int, default=0, help="use at most this many images (0: all)")
    g.add_argument("--points", nargs="*", default=None, metavar="X,Y",
                   help="points in original-image pixels (default: the image centre)")
    options.add_output_args(p, "output/vis", "output folder (default output/vis)", json_help=None)
    options.add_backbone_args(p)
    options.add_lift_args(p)
    a = p.add_argument_group("analyses")
    a.add_argument("--lift_iter", type=int, default=2, help="show LiFT applied 1..K times (default 2)")
    a.add_argument("--no_maps", action="store_true", help="skip similarity and PCA pictures")
    a.add_argument("--no_cka", action="store_true", help="skip the CKA scale-invariance analysis")
    a.add_argument("--cka_scales", default="56,112,224,448", help="square input sizes for CKA")
    a.add_argument("--flops_json", default=None, help="eval_spair.py --output_json file: draw PCK@0.1 vs FLOPs")
    options.add_size_args(p, 224, ("short", "square"), imsize_square=True, help="short side of the maps' input (default 224)")
    options.add_protocol_arg(p.add_argument_group("protocol"), "the official eval_visualize_feats.py: 224 x 224 "
                             "inputs (--imsize 224), the official normalisation, LiFT 1..4 times (--lift_iter 4), the "
                             "centre cell, at most 20 images (--limit 20), no CKA (--no_cka)")
    options.add_runtime_args(p)
    return p


def official_settings(args) -> dict:
    """``--protocol official``: the official eval_visualize_feats.py settings where ours differ."""
    return {"load_size": 224, "resize_mode": "square", "lift_iter": 4, "limit": 20, "no_cka": True}


def _parse_points(points: Optional[List[str]], image_wh) -> List[tuple]:
    if not points:
        return [(image_wh[0] / 2, image_wh[1] / 2)]
    out = []
    for s in points:
        try:
            x, y = (float(v) for v in s.split(","))
        except ValueError:
            raise ConfigError(f"--points '{s}': expected X,Y in pixels, e.g. 120,80") from None
        if not (0 <= x < image_wh[0] and 0 <= y < image_wh[1]):
            raise LiftKitError(f"--points {s} lies outside the {image_wh[0]}x{image_wh[1]} image")
        out.append((x, y))
    return out


def _maps_for_image(ext: ViTExtractor, x: torch.Tensor, lift_iter: int) -> Dict[str, torch.Tensor]:
    """title -> (C, h', w') map of every method shown, from two backbone passes (the grid and the 2x input)."""
    titles = {"low": "backbone", "bilinear": "bilinear", "highres": "2x input"}
    if ext.lift is not None:
        titles.update({f"lift{k}": "LiFT" if k == 1 else f"LiFT x{k}" for k in range(1, lift_iter + 1)})
    feats = ext.features(x, list(titles))
    return {title: feats[name][0] for name, title in titles.items()}


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
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=90, format=path.suffix[1:] or "png")
    plt.close(fig)
    return path


def _to_grid(feats: torch.Tensor, grid) -> torch.Tensor:
    if tuple(feats.shape[-2:]) == tuple(grid):
        return feats
    if feats.shape[-2] > grid[0]:
        return F.adaptive_avg_pool2d(feats, grid)
    return F.interpolate(feats, size=grid, mode="bilinear", align_corners=False)


def _check_memory(args, ext: ViTExtractor, scales: List[int], n_images: int) -> None:
    """Refuse up front (exit 2) maps or CKA scales whose largest predicted tensor exceeds --max_memory_gb."""
    from liftkit.memory import Predicted, check_budget, lift_tensors

    if any(s < 1 for s in scales):
        raise ConfigError(f"--cka_scales '{args.cka_scales}': sizes must be positive")
    low = Method.parse("low")
    if not args.no_maps:
        side = options.min_input_side(args.load_size, ext.patch_size) if args.load_size else ext.patch_size
        plan = [low, Method.parse("bilinear"), Method.parse("highres")]
        plan += [Method.parse(f"lift{args.lift_iter}")] if ext.lift is not None else []
        options.check_memory(args, ext.spec, side, side, plan, {"size": "--load_size", "lift_iter": "--lift_iter",
                                                                "methods": "--load_size"})
    if args.no_cka:
        return
    flags = {"size": "the largest of --cka_scales", "lift_iter": "the ratio of the largest to the smallest "
             "--cka_scales"}
    grids = [max(1, s // ext.patch_size) for s in scales]
    for s, g in zip(scales, grids):  # each scale's backbone pass and the features of every image kept at it
        options.check_memory(args, ext.spec, g * ext.patch_size, g * ext.patch_size, [low], flags, extra=[Predicted(
            f"CKA samples at {s} px (images, C, h, w) float64", (n_images, ext.embed_dim, g, g), 8)])
    k = max(0, round(math.log2(max(grids) / min(grids))))
    if ext.lift is not None and k:  # LiFT chained from the smallest scale to the largest
        side = min(grids) * ext.patch_size
        check_budget(lift_tensors(ext.embed_dim, min(grids), min(grids), side, side, k), args.max_memory_gb, flags)


def cka_scale_invariance(ext: ViTExtractor, images: List, scales: List[int]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """{method: {src: {dst: CKA}}}: features at src brought to dst's grid by the method vs the backbone at dst."""
    from liftkit.eval.cka import feature_map_samples, linear_cka

    per_scale = {}
    for s in scales:
        xs = [ext.preprocess(img, size=(ext.target_size((s, s))[0],) * 2) for img in images]
        per_scale[s] = [(x, ext.extract_descriptors(x)) for x in xs]
    out: Dict[str, Dict[str, Dict[str, float]]] = {m: {} for m in CKA_METHODS if m != "lift" or ext.lift is not None}
    chains: Dict[tuple, List[torch.Tensor]] = {}

    def lift_chain(src: int, i: int, k: int) -> torch.Tensor:
        """LiFT applied k times to image i's features at scale src; the chain is computed once per (src, i)."""
        have = chains.get((src, i), [])
        if len(have) < k:
            x, f = per_scale[src][i]
            have = chains[(src, i)] = ext.lift_steps(f, x, k)
        return have[k - 1]

    for src in scales:
        for dst in scales:
            ref = torch.cat([f for _, f in per_scale[dst]])
            grid = tuple(ref.shape[-2:])
            for method in out:
                got = []
                for i, (x, f) in enumerate(per_scale[src]):
                    if method == "backbone":
                        g = F.interpolate(f, size=grid, mode="nearest") if f.shape[-2] < grid[0] else _to_grid(f, grid)
                    elif method == "bilinear":
                        g = _to_grid(f, grid)
                    else:
                        k = max(0, round(math.log2(grid[0] / f.shape[-2]))) if grid[0] > f.shape[-2] else 0
                        g = _to_grid(lift_chain(src, i, k) if k else f, grid)
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
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=100, format=path.suffix[1:] or "png")
    plt.close(fig)
    return path


def main(argv: Optional[List[str]] = None) -> int:
    return run_command(COMMAND, build_parser(), argv,
                       lambda args, run: _run(options.with_protocol(args, official_settings, run), run))


def _run(args, run: Run) -> None:
    log = run.log
    out_dir = Path(args.output_dir)
    failures: List[str] = []
    if args.flops_json:
        from liftkit.eval.plots import plot_metric_vs_flops

        try:
            data = json.loads(Path(args.flops_json).read_text())
            methods = data["methods"]
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"--flops_json '{args.flops_json}' is not an eval_spair.py JSON ({exc})") from None
        log.info(f"wrote {plot_metric_vs_flops(methods, out_dir / 'pck_vs_flops.png')}")
    if args.no_maps and args.no_cka:
        return
    if args.lift_iter < 1:
        raise ConfigError(f"--lift_iter {args.lift_iter}: must be at least 1")
    try:
        scales = [int(s) for s in args.cka_scales.split(",")]
    except ValueError:
        raise ConfigError(f"--cka_scales '{args.cka_scales}': expected sizes like 56,112,224") from None
    ext = options.make_extractor(args)
    log.info(options.describe_extractor(ext))
    if ext.lift is None:
        log.warning(f"no LiFT for {args.model_type}: showing the baselines only")
    paths = list_images(args.image_path)
    if args.limit:
        paths = paths[: args.limit]
    if not paths:
        raise ConfigError(f"--image_path {' '.join(args.image_path)}: no image found")
    _check_memory(args, ext, scales, len(paths))

    from tqdm import tqdm

    from liftkit.data.image_io import load_image
    from liftkit.vis.panels import save_pca_panel

    loaded = []
    for path in tqdm(paths, desc="images", file=sys.stderr, disable=args.quiet):
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
        except OSError as exc:  # a figure that cannot be written (no space, read-only...): this image fails
            failures.append(os_error_message(exc.filename or out_dir, exc))
    if not args.no_cka and loaded:
        cka = cka_scale_invariance(ext, loaded, scales)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out_dir / "cka.json", json.dumps({"run": run.info, "images": len(loaded), "scales": scales,
                                                      "cka": cka}, indent=1))
        save_cka_figure(out_dir / "cka.png", cka)
        for m, table in cka.items():
            diag = [table[str(s)][str(scales[-1])] for s in scales]
            print(f"CKA to {scales[-1]} px from {scales}: {m:<9} " + " ".join(f"{v:.3f}" for v in diag))
    log.info(f"wrote figures for {len(loaded)} image(s) to {out_dir}")
    if failures:
        raise ItemFailures(f"{len(failures)} image(s) failed", failures)
