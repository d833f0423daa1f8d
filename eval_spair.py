#!/usr/bin/env python
r"""SPair-71k keypoint correspondence (PCK) of dense ViT features, several upsampling methods in one run.

    python eval_spair.py --data_path /data/SPair-71k                       # test split, all pairs, 6 methods
    python eval_spair.py --data_path /data/SPair-71k --pairs_per_category 100 --seed 0 \
        --methods low,bilinear,highres,lift --output_json spair.json --plot spair.png

Protocol (the LiFT paper's; see liftkit/eval/correspondence.py and docs/spair.md): each image is resized so its long
side is --imsize and zero-padded to a square (keypoints and boxes moved alike); features of every method are
L2-normalised and bilinearly upsampled to the image; each source keypoint's feature is matched to the most similar
(cosine) target pixel; PCK@alpha counts matches closer than alpha * max(h, w) of the target box, per category and
averaged over categories (the paper's number) and over keypoints. FLOPs (torch.utils.flop_counter) and time per
image of each method's feature extraction are reported alongside.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from extractor import ViTExtractor, available_backbones, parse_method
from liftkit.backbones.specs import DEFAULT_BACKBONE, get_spec
from liftkit.data.image_io import load_image
from liftkit.data.spair import SPLITS, SpairPair, check_root, load_split
from liftkit.device import resolve_device
from liftkit.errors import ConfigError, DatasetError, LiftKitError, failure_report
from liftkit.eval.correspondence import (
    DEFAULT_ALPHAS, PadGeometry, PCKAccumulator, alpha_key, bbox_threshold, match_keypoints, pad_to_square,
    pck_correct,
)
from liftkit.eval.flops import count_flops, timed

DEFAULT_METHODS = "low,bilinear,highres,lift,lift2,lift3"
CACHE_IMAGES = 8  # images whose features (all methods) are kept while pairs are processed


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--data_path", required=True, help="SPair-71k root (holds JPEGImages/, PairAnnotation/, Layout/)")
    d.add_argument("--split", default="test", choices=SPLITS, help="pair list Layout/large/<split>.txt (default test)")
    d.add_argument("--imsize", type=int, default=224,
                   help="side of the padded square, a multiple of the patch size (default 224)")
    d.add_argument("--pairs_per_category", type=int, default=0,
                   help="sample N pairs per category without replacement (default 0: all pairs)")
    d.add_argument("--seed", type=int, default=0, help="seed of the per-category sampling (default 0)")
    d.add_argument("--sample_with_replacement", action="store_true",
                   help="sample like the official LiFT script (with replacement; duplicates possible)")
    d.add_argument("--skip_bad", action="store_true",
                   help="skip pairs with bad annotations or images, count them, and exit 1 at the end "
                        "(default: stop at the first one)")
    m = p.add_argument_group("model")
    m.add_argument("--model_type", default=DEFAULT_BACKBONE, help=f"backbone: {', '.join(available_backbones())}")
    m.add_argument("--layer", type=int, default=-1, help="block index, 0-based; -1 = last (default)")
    m.add_argument("--facet", default="key", choices=("key", "query", "value", "token"))
    m.add_argument("--lift_path", default="auto",
                   help="LiFT file for the lift* methods; default: the shipped pretrained/lift_<model>.safetensors; "
                        "'none' to load none")
    m.add_argument("--backbone_weights", default=None, help="explicit backbone weight file (.pth/.safetensors)")
    m.add_argument("--offline", action="store_true", help="never download weights")
    m.add_argument("--random_init", action="store_true", help="random backbone weights (for tests only)")
    m.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    e = p.add_argument_group("evaluation")
    e.add_argument("--methods", default=DEFAULT_METHODS,
                   help=f"comma-separated dense-feature methods to compare (default {DEFAULT_METHODS})")
    e.add_argument("--renorm_after_upsample", action="store_true",
                   help="re-normalise features after upsampling (exact cosine; off in the official protocol)")
    e.add_argument("--subpixel", action="store_true",
                   help="read source features at the exact keypoint position (official: the integer pixel)")
    o = p.add_argument_group("output")
    o.add_argument("--output_json", default=None, help="write every number (per method and category) here")
    o.add_argument("--plot", default=None, help="write the PCK@0.1-vs-GFLOPs plot (PNG) here")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _parse_methods(text: str) -> List[str]:
    methods = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not methods:
        raise ConfigError("--methods is empty; give e.g. low,bilinear,highres,lift")
    for name in methods:
        parse_method(name)
    return methods


def method_features(ext: ViTExtractor, x: torch.Tensor, methods: List[str]) -> Dict[str, Tuple[torch.Tensor, float]]:
    """Every method's features of one image, running the backbone once for all methods that start from its grid.

    Gives the same tensors as ``ext.dense_features(x, m)`` for each m (pinned by a test); only ``highres*`` needs a
    second backbone pass. The time of a method is its own work plus, except for ``highres*``, the backbone's.

    Args:
        x: (1, 3, S, S) normalised image.
    Returns:
        method -> ((1, C, h', w') features, seconds).
    """
    kinds = {m: parse_method(m) for m in methods}
    out: Dict[str, Tuple[torch.Tensor, float]] = {}
    low = t_low = None
    if any(kind != "highres" for kind, _ in kinds.values()):
        low, t_low = timed(lambda: ext.extract_descriptors(x), ext.device)
    for m, (kind, k) in kinds.items():
        if kind == "highres":
            out[m] = timed(lambda: ext.dense_features(x, m), ext.device)
            continue
        if kind == "low":
            feats, sec = low, 0.0
        elif kind == "lift":
            feats, sec = timed(lambda: ext.lift_features(low, x, k), ext.device)
        else:  # bilinear / nearest, exactly as ViTExtractor.dense_features
            size = (low.shape[-2] * 2 ** k, low.shape[-1] * 2 ** k)
            opts = {"align_corners": False} if kind == "bilinear" else {}
            feats, sec = timed(lambda: F.interpolate(low, size=size, mode=kind, **opts), ext.device)
        out[m] = (feats, sec + t_low)
    return out


class FeatureCache:
    """Padded image geometry and per-method features of the most recently used images (LRU)."""

    def __init__(self, ext: ViTExtractor, methods: List[str], size: int, capacity: int = CACHE_IMAGES):
        self.ext, self.methods, self.size, self.capacity = ext, methods, size, capacity
        self.items: "OrderedDict[Path, Tuple[PadGeometry, Dict[str, torch.Tensor]]]" = OrderedDict()
        self.seconds = {m: 0.0 for m in methods}
        self.calls = {m: 0 for m in methods}
        self.shapes: Dict[str, List[int]] = {}

    def get(self, path: Path, expected_wh: Tuple[int, int]) -> Tuple[PadGeometry, Dict[str, torch.Tensor]]:
        """(geometry, method -> (C, h', w') features) of one image."""
        if path in self.items:
            self.items.move_to_end(path)
            return self.items[path]
        image = load_image(path, min_side=1)
        if image.size != tuple(expected_wh):
            raise DatasetError(f"'{path}' decodes to {image.size[0]}x{image.size[1]} (after EXIF rotation) but the "
                               f"annotation says {expected_wh[0]}x{expected_wh[1]}")
        canvas, geo = pad_to_square(image, self.size)
        x = self.ext.preprocess(canvas, size=(self.size, self.size))
        feats = {}
        for m, (out, sec) in method_features(self.ext, x, self.methods).items():
            feats[m] = out[0]
            self.seconds[m] += sec
            self.calls[m] += 1
            self.shapes.setdefault(m, list(out.shape[1:]))
        self.items[path] = (geo, feats)
        if len(self.items) > self.capacity:
            self.items.popitem(last=False)
        return self.items[path]


def evaluate(pairs: List[SpairPair], cache: FeatureCache, args, progress: bool,
             skipped: List[str]) -> Dict[str, PCKAccumulator]:
    """Match every pair with every method; failing images are raised, or appended to ``skipped`` with --skip_bad."""
    from tqdm import tqdm

    acc = {m: PCKAccumulator(DEFAULT_ALPHAS) for m in cache.methods}
    order = sorted(pairs, key=lambda p: (p.category, str(p.src_image), str(p.trg_image), p.name))
    for pair in tqdm(order, desc="pairs", unit="pair", disable=not progress, file=sys.stderr):
        try:
            src_geo, src_feats = cache.get(pair.src_image, pair.src_size)
            trg_geo, trg_feats = cache.get(pair.trg_image, pair.trg_size)
        except LiftKitError as exc:
            if not args.skip_bad:
                raise
            skipped.append(f"{pair.name}: {exc}")
            continue
        src_pts = src_geo.apply(pair.src_kps)
        gt = trg_geo.apply(pair.trg_kps)
        thr = bbox_threshold(trg_geo.apply_box(pair.trg_bbox))
        for m in cache.methods:
            pred = match_keypoints(src_feats[m], trg_feats[m], src_pts, args.imsize,
                                   renorm_after_upsample=args.renorm_after_upsample, subpixel=args.subpixel)
            acc[m].add(pair.category, pck_correct(pred, gt, thr, DEFAULT_ALPHAS))
    return acc


def format_tables(results: dict) -> str:
    """The summary table (one row per method) and the per-category PCK@0.1 table."""
    methods = results["methods"]
    keys = [alpha_key(a) for a in results["alphas"]]
    lines = [
        f"{'method':<10} {'grid':>9} {'GFLOPs':>8} {'ms/img':>8} "
        + " ".join(f"{k.upper():>9}" for k in keys) + f" | {'PCK@0.1 kps':>11}"
    ]
    for name, rec in methods.items():
        grid = "x".join(str(v) for v in rec["feature_shape"][1:])
        mean = rec["pck"]["mean_over_categories"]
        lines.append(
            f"{name:<10} {grid:>9} {rec['gflops_per_image']:>8.2f} {1000 * rec['seconds_per_image']:>8.1f} "
            + " ".join(f"{100 * mean[k]:>9.2f}" for k in keys)
            + f" | {100 * rec['pck']['over_keypoints'].get('pck@0.1', float('nan')):>11.2f}"
        )
    cats = sorted(next(iter(methods.values()))["pck"]["per_category"]) if methods else []
    lines += ["", "PCK@0.1 (%) per category:", f"{'category':<12} {'kps':>5} " + " ".join(f"{m:>9}" for m in methods)]
    first = next(iter(methods.values())) if methods else None
    for cat in cats:
        lines.append(f"{cat:<12} {first['pck']['keypoints'][cat]:>5} "
                     + " ".join(f"{100 * methods[m]['pck']['per_category'][cat]['pck@0.1']:>9.2f}" for m in methods))
    if methods:
        lines.append(f"{'mean':<12} {'':>5} "
                     + " ".join(f"{100 * methods[m]['pck']['mean_over_categories']['pck@0.1']:>9.2f}" for m in methods))
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    log = lambda msg: print(f"[eval_spair] {msg}", file=sys.stderr)  # noqa: E731
    skipped: List[str] = []
    try:
        device = str(resolve_device(args.device))
        log("args: " + json.dumps({**vars(args), "device": device}, sort_keys=True))
        methods = _parse_methods(args.methods)
        if args.imsize <= 0:
            raise ConfigError(f"--imsize {args.imsize}: must be positive")
        if args.pairs_per_category < 0:
            raise ConfigError(f"--pairs_per_category {args.pairs_per_category}: must be >= 0 (0 = all pairs)")
        lift_path = None if str(args.lift_path).lower() == "none" else args.lift_path
        needs_lift = [m for m in methods if parse_method(m)[0] == "lift"]
        if needs_lift and lift_path is None:
            raise ConfigError(f"--methods {','.join(needs_lift)} need a LiFT but --lift_path is none; "
                              "pass --lift_path FILE (or auto) or drop them from --methods")
        patch = get_spec(args.model_type).patch_size
        if args.imsize % patch:
            raise ConfigError(f"--imsize {args.imsize} is not a multiple of the {patch}-px patch of "
                              f"{args.model_type}; use e.g. {patch * max(1, round(args.imsize / patch))}")
        data_path = Path(args.data_path)
        check_root(data_path, args.split)
        split = load_split(data_path, args.split, args.pairs_per_category or None, args.seed,
                           args.sample_with_replacement, args.skip_bad)
        skipped += split.skipped
        if not split.pairs:
            raise DatasetError(f"no readable pair in {data_path} ({args.split}); {len(skipped)} skipped")
        log(f"{len(split.pairs)} pairs ({split.selected} selected, {len(split.skipped)} skipped) in "
            f"{len(split.categories())} categories")
        ext = ViTExtractor(model_type=args.model_type, layer=args.layer, facet=args.facet,
                           backbone_weights=args.backbone_weights, offline=args.offline,
                           random_init=args.random_init, lift_path=lift_path, device=device)
        if needs_lift and ext.lift is None:
            raise ConfigError(f"--methods {','.join(needs_lift)} need a LiFT but none is loaded for "
                              f"{args.model_type} (no pretrained/lift_{args.model_type}.safetensors); "
                              "pass --lift_path FILE or drop them from --methods")
        log(f"backbone {ext.spec.name} weights={ext.info.weights_path or 'random'} layer={ext.layer} "
            f"facet={ext.facet} p={ext.patch_size} lift={ext.lift_path or 'none'}")

        cost = {}
        probe = torch.zeros(1, 3, args.imsize, args.imsize, device=ext.device)
        for m in methods:
            cost[m] = count_flops(lambda: ext.dense_features(probe, m))
        cache = FeatureCache(ext, methods, args.imsize)
        progress = not args.quiet and sys.stderr.isatty()
        with torch.no_grad():
            acc = evaluate(split.pairs, cache, args, progress, skipped)
        if not any(acc[methods[0]].total.values()):
            raise DatasetError(f"every selected pair failed ({len(skipped)}); see the messages above")
    except LiftKitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    first = acc[methods[0]]
    results = {
        "task": "spair71k_keypoint_correspondence",
        "alphas": list(DEFAULT_ALPHAS),
        "protocol": {
            "imsize": args.imsize, "resize": "long side to imsize (Lanczos), zero-padded to a centred square",
            "features": "L2-normalised, bilinear upsampling to imsize x imsize",
            "renorm_after_upsample": args.renorm_after_upsample, "subpixel": args.subpixel,
            "matching": "nearest neighbour (cosine) among all target pixels",
            "threshold": "alpha * max(h, w) of the target box in the padded frame; correct if distance < threshold",
        },
        "config": {**{k: v for k, v in vars(args).items()}, "device": str(ext.device), "methods": methods,
                   "extractor": ext.describe()},
        "dataset": {
            "data_path": str(data_path), "split": args.split, "selected_pairs": split.selected,
            "evaluated_pairs": int(sum(first.pairs.values())), "keypoints": int(sum(first.total.values())),
            "categories": {c: {"pairs": first.pairs[c], "keypoints": first.total[c]} for c in first.categories()},
            "skipped": skipped,
        },
        "methods": {},
    }
    for m in methods:
        flops, per_op = cost[m]
        results["methods"][m] = {
            "feature_shape": cache.shapes.get(m, []),
            "flops_per_image": flops, "gflops_per_image": flops / 1e9, "flops_by_op": per_op,
            "seconds_per_image": cache.seconds[m] / max(1, cache.calls[m]), "images_timed": cache.calls[m],
            "pck": acc[m].summary(),
        }

    d = results["dataset"]
    print(f"SPair-71k {args.split}: {d['evaluated_pairs']} pairs, {d['keypoints']} keypoints, "
          f"{len(d['categories'])} categories; {ext.spec.name} layer {ext.layer} {ext.facet}, imsize {args.imsize}, "
          f"device {ext.device}")
    print("PCK = mean over categories (the paper's number); 'kps' = over all keypoints")
    print(format_tables(results))
    if args.output_json:
        out = Path(args.output_json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1, sort_keys=False))
        log(f"wrote {out}")
    if args.plot:
        from liftkit.eval.plots import plot_metric_vs_flops

        title = f"SPair-71k {args.split}, {ext.spec.name}, {d['evaluated_pairs']} pairs"
        log(f"wrote {plot_metric_vs_flops(results['methods'], Path(args.plot), 'pck@0.1', title=title)}")
    if skipped:
        print(failure_report(f"{len(skipped)} pair(s) skipped (--skip_bad)", skipped), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
