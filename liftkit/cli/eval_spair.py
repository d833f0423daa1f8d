r"""SPair-71k keypoint correspondence (PCK) of dense ViT features, several upsampling methods in one run.

``liftkit-eval-spair`` (installed) or ``python eval_spair.py`` (checkout); the same flags.

    python eval_spair.py --data_root /data/SPair-71k                       # test split, all pairs, 6 methods
    python eval_spair.py --data_root /data/SPair-71k --pairs_per_category 100 --seed 0 \
        --methods low,bilinear,highres,lift --output_json spair.json --plot spair.png

Protocol (the LiFT paper's; see liftkit/eval/correspondence.py and docs/spair.md): each image is resized so its long
side is --load_size (alias --imsize) and zero-padded to a square (keypoints and boxes moved alike); features of
every method are L2-normalised and bilinearly upsampled to the image; each source keypoint's feature is matched to
the most similar (cosine) target pixel; PCK@alpha counts matches closer than alpha * max(h, w) of the target box,
per category and averaged over categories (the paper's number) and over keypoints. FLOPs (torch.utils.flop_counter) and time per
image of each method's feature extraction are reported alongside (every method but highres* shares one backbone pass
per image; the time of a method is what it costs alone, backbone included).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from liftkit.cli import options
from liftkit.cli.runner import ItemFailures, Run, run_command, run_sweep
from liftkit.data.image_io import load_image
from liftkit.data.spair import SPLITS, SpairPair, check_root, load_split
from liftkit.errors import ConfigError, DatasetError, LiftKitError
from liftkit.eval.correspondence import (
    DEFAULT_ALPHAS, PadGeometry, PCKAccumulator, alpha_key, bbox_threshold, match_keypoints, pad_to_square,
    pck_correct,
)
from liftkit.eval.flops import count_flops, paper_method_flops
from liftkit.extractor import ViTExtractor
from liftkit.memory import Predicted
from liftkit.methods import Method
from liftkit.specs import get_spec
from liftkit.train.distributed import DistContext, gather_objects
from liftkit.io.outputs import write_text_atomic

COMMAND = "eval_spair"
MEMORY_FLAGS = {"size": "--imsize (--load_size)", "methods": "the K of liftK/highresK/bilinearK in --methods",
                "lift_iter": "the K of liftK in --methods"}
DEFAULT_METHODS = "low,bilinear,highres,lift,lift2,lift3"
CACHE_IMAGES = 8  # images whose features (all methods) are kept while pairs are processed


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eval_spair.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data")
    options.add_data_root(d, help="SPair-71k root (holds JPEGImages/, PairAnnotation/, Layout/)")
    d.add_argument("--split", default="test", choices=SPLITS, help="pair list Layout/large/<split>.txt (default test)")
    d.add_argument("--pairs_per_category", type=int, default=0,
                   help="sample N pairs per category without replacement (default 0: all pairs)")
    d.add_argument("--seed", type=int, default=0, help="seed of the per-category sampling and of --lift_path random (default 0)")
    d.add_argument("--sample_with_replacement", action="store_true",
                   help="sample like the official LiFT script (with replacement; duplicates possible)")
    options.add_skip_bad(d)
    options.add_size_args(p, 224, ("pad",), "side of the padded square, a multiple of the patch size (default 224)",
                          imsize_alias=True, sweep=True)
    options.add_backbone_args(p)
    options.add_lift_args(p, DEFAULT_METHODS)
    e = p.add_argument_group("evaluation")
    e.add_argument("--renorm_after_upsample", action="store_true",
                   help="re-normalise features after upsampling (exact cosine; off in the official protocol)")
    e.add_argument("--alphas", type=_alphas, default=DEFAULT_ALPHAS, metavar="A,A,...",
                   help="PCK thresholds, fractions of the target box size (default "
                        f"{','.join(map(str, DEFAULT_ALPHAS))}; the official script reports 0.1,0.05,0.01)")
    e.add_argument("--flops", choices=("true", "paper", "both"), default="true",
                   help="cost column(s) of the table: true (torch.utils.flop_counter, 2 per multiply-add, attention included; "
                        "default), paper (the LiFT paper's convention: backbone full forward + facet qkv + LiFT, "
                        "multiply-accumulates of module calls, see liftkit/eval/flops.py), or both")
    e.add_argument("--subpixel", action="store_true",
                   help="read source features at the exact keypoint position (official: the integer pixel)")
    options.add_protocol_arg(p.add_argument_group("protocol"), "the official eval_spair.py: 100 pairs per "
                             "category sampled with replacement, PCK@0.1/0.05/0.01, the official normalisation, only the LiFT features with --lift_path "
                             "(--methods lift), else only the backbone's (--lift_path none --methods low)")
    options.add_output_args(p, None, "folder for spair.json and pck_vs_flops.png (when --output_json / --plot are "
                            "not given)", "write every number (per method and category) here")
    p.add_argument_group("output").add_argument("--plot", default=None,
                                                help="write the PCK@0.1-vs-GFLOPs plot (PNG) here")
    options.add_runtime_args(p)
    return p


def _alphas(text: str) -> Tuple[float, ...]:
    try:
        values = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma list of numbers") from None
    if not values or not all(0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"'{text}': thresholds must be in (0, 1]")
    if 0.1 not in values:
        raise argparse.ArgumentTypeError(f"'{text}': must include 0.1 (the tables and the plot report PCK@0.1)")
    return values


class FeatureCache:
    """Padded image geometry and per-method features of the most recently used images (LRU)."""

    def __init__(self, ext: ViTExtractor, plan: Sequence[Method], size: int, capacity: int = CACHE_IMAGES):
        self.ext, self.plan, self.size, self.capacity = ext, tuple(plan), size, capacity
        methods = self.methods = [m.name for m in plan]
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
        feats, seconds = {}, {}
        for m, out in self.ext.features(x, self.plan, timings=seconds).items():
            feats[m] = out[0]
            self.seconds[m] += seconds[m]
            self.calls[m] += 1
            self.shapes.setdefault(m, list(out.shape[1:]))
        self.items[path] = (geo, feats)
        if len(self.items) > self.capacity:
            self.items.popitem(last=False)
        return self.items[path]


def evaluate(pairs: List[SpairPair], cache: FeatureCache, args, progress: bool,
             skipped: List[str], ctx: DistContext = DistContext()) -> Dict[str, PCKAccumulator]:
    """Match every pair with every method; failing images are raised, or appended to ``skipped`` with --skip_bad.
    Under torchrun (``ctx``) each rank matches its share and every rank returns the accumulators of all pairs."""
    from tqdm import tqdm

    order = sorted(pairs, key=lambda p: (p.category, str(p.src_image), str(p.trg_image), p.name))
    # torchrun: rank r takes the r-th contiguous block of pairs (pairs of one image stay together, so the feature
    # cache works as in one process); the per-pair results are gathered and added in the one-process order
    n, rank, world = len(order), ctx.rank, ctx.world
    mine = list(enumerate(order))[rank * n // world:(rank + 1) * n // world]
    rows, skip_rows = [], []
    for i, pair in tqdm(mine, desc="pairs", unit="pair", disable=not progress, file=sys.stderr):
        try:
            src_geo, src_feats = cache.get(pair.src_image, pair.src_size)
            trg_geo, trg_feats = cache.get(pair.trg_image, pair.trg_size)
        except LiftKitError as exc:
            if not args.skip_bad:
                raise
            skip_rows.append((i, f"{pair.name}: {exc}"))
            continue
        src_pts = src_geo.apply(pair.src_kps)
        gt = trg_geo.apply(pair.trg_kps)
        thr = bbox_threshold(trg_geo.apply_box(pair.trg_bbox))
        correct = {}
        for m in cache.methods:
            pred = match_keypoints(src_feats[m], trg_feats[m], src_pts, args.load_size,
                                   renorm_after_upsample=args.renorm_after_upsample, subpixel=args.subpixel)
            correct[m] = pck_correct(pred, gt, thr, args.alphas)
        rows.append((i, pair.category, correct))
    parts = gather_objects((rows, skip_rows, cache.seconds, cache.calls, cache.shapes), ctx)
    acc = {m: PCKAccumulator(args.alphas) for m in cache.methods}
    for _, category, correct in sorted((r for p in parts for r in p[0]), key=lambda r: r[0]):
        for m in cache.methods:
            acc[m].add(category, correct[m])
    skipped += [msg for _, msg in sorted((r for p in parts for r in p[1]), key=lambda r: r[0])]
    for m in cache.methods:  # feature timings over every rank
        cache.seconds[m] = sum(p[2][m] for p in parts)
        cache.calls[m] = sum(p[3][m] for p in parts)
    for p in parts:
        for m, shape in p[4].items():
            cache.shapes.setdefault(m, shape)
    return acc


def format_tables(results: dict) -> str:
    """The summary table (one row per method) and the per-category PCK@0.1 table."""
    methods = results["methods"]
    keys = [alpha_key(a) for a in results["alphas"]]
    flops = results.get("flops", "true")
    cols = ([("GFLOPs", "gflops_per_image")] if flops in ("true", "both") else []) + (
        [("paper G", "paper_gflops_per_image")] if flops in ("paper", "both") else [])
    lines = [
        f"{'method':<10} {'grid':>9} " + "".join(f"{c:>9} " for c, _ in cols) + f"{'ms/img':>8} "
        + " ".join(f"{k.upper():>9}" for k in keys) + f" | {'PCK@0.1 kps':>11}"
    ]
    for name, rec in methods.items():
        grid = "x".join(str(v) for v in rec["feature_shape"][1:])
        mean = rec["pck"]["mean_over_categories"]
        lines.append(
            f"{name:<10} {grid:>9} " + "".join(f"{rec[k]:>9.2f} " for _, k in cols)
            + f"{1000 * rec['seconds_per_image']:>8.1f} "
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


def official_settings(args) -> dict:
    """``--protocol official``: the settings of the official eval_spair.py where ours differ (see
    docs/reproducing.md); not re-normalised after upsampling and the integer source pixel are our defaults too."""
    return {"pairs_per_category": 100, "sample_with_replacement": True, "renorm_after_upsample": False, "subpixel": False, "resize_mode": "pad",
            "alphas": (0.1, 0.05, 0.01), **options.official_methods(args)}


def main(argv: Optional[List[str]] = None) -> int:
    return run_command(COMMAND, build_parser(), argv, lambda args, run: run_sweep(
        options.with_protocol(args, official_settings, run), run, _run,
        lambda res: {m: r["pck"]["mean_over_categories"].get("pck@0.1") for m, r in res["methods"].items()}, "PCK@0.1"))


def _check_args(args) -> Tuple[Method, ...]:
    plan = options.methods_plan(args.methods)
    if args.load_size <= 0:
        raise ConfigError(f"--load_size {args.load_size}: must be positive")
    if args.pairs_per_category < 0:
        raise ConfigError(f"--pairs_per_category {args.pairs_per_category}: must be >= 0 (0 = all pairs)")
    patch = get_spec(args.model_type).patch_size
    if args.load_size % patch:
        raise ConfigError(f"--load_size {args.load_size} is not a multiple of the {patch}-px patch of "
                          f"{args.model_type}; use e.g. {patch * max(1, round(args.load_size / patch))}")
    # the padded square, the FLOPs probe of the same size, and the features upsampled to it for matching
    spec, s = get_spec(args.model_type), args.load_size
    options.check_memory(args, spec, s, s, plan, MEMORY_FLAGS, extra=[Predicted(
        "source + target features upsampled to imsize (2, C, imsize, imsize)", (2, spec.embed_dim, s, s))])
    return plan


def _run(args, run: Run) -> Optional[int]:
    with options.torchrun_group(args, run.log) as ctx:
        return _evaluate(args, run, ctx)


def _evaluate(args, run: Run, ctx: DistContext) -> Optional[int]:
    log = run.log
    skipped: List[str] = []
    plan = _check_args(args)
    methods = [m.name for m in plan]
    data_root = Path(args.data_root)
    check_root(data_root, args.split)
    split = load_split(data_root, args.split, args.pairs_per_category or None, args.seed,
                       args.sample_with_replacement, args.skip_bad)
    skipped += split.skipped
    if not split.pairs:
        raise DatasetError(f"no readable pair in {data_root} ({args.split}); {len(skipped)} skipped")
    log.info(f"{len(split.pairs)} pairs ({split.selected} selected, {len(split.skipped)} skipped) in "
             f"{len(split.categories())} categories")
    ext = options.make_extractor(args, plan)
    log.info(options.describe_extractor(ext))

    cost, paper = {}, {}
    probe = torch.zeros(1, 3, args.load_size, args.load_size, device=ext.device)
    for m in plan:
        cost[m.name] = count_flops(lambda: ext.dense_features(probe, m))  # always in the JSON
        if args.flops != "true":
            paper[m.name] = paper_method_flops(ext, m, args.load_size)
    cache = FeatureCache(ext, plan, args.load_size)
    progress = not args.quiet and sys.stderr.isatty()
    with torch.no_grad():
        acc = evaluate(split.pairs, cache, args, progress and ctx.is_main, skipped, ctx)
    if not ctx.is_main:
        return None  # rank 0 writes the results of every rank
    if not any(acc[methods[0]].total.values()):
        raise DatasetError(f"every selected pair failed ({len(skipped)}); see the messages above")

    first = acc[methods[0]]
    results = {
        "task": "spair71k_keypoint_correspondence",
        "run": run.info,
        "alphas": list(args.alphas),
        "flops": args.flops,
        "protocol": {
            "imsize": args.load_size, "resize": "long side to imsize (Lanczos), zero-padded to a centred square",
            "features": "L2-normalised, bilinear upsampling to imsize x imsize",
            "renorm_after_upsample": args.renorm_after_upsample, "subpixel": args.subpixel,
            "sample_with_replacement": args.sample_with_replacement, "protocol": args.protocol,
            "matching": "nearest neighbour (cosine) among all target pixels",
            "threshold": "alpha * max(h, w) of the target box in the padded frame; correct if distance < threshold",
        },
        "config": {**run.info["args"], "imsize": args.load_size, "methods": methods, "extractor": ext.describe()},
        "dataset": {
            "data_path": str(data_root), "split": args.split, "selected_pairs": split.selected,
            "evaluated_pairs": int(sum(first.pairs.values())), "keypoints": int(sum(first.total.values())),
            "categories": {c: {"pairs": first.pairs[c], "keypoints": first.total[c]} for c in first.categories()},
            **options.skipped_json(skipped),
        },
        "methods": {},
    }
    for m in methods:
        flops, per_op = cost[m]
        results["methods"][m] = {
            "feature_shape": cache.shapes.get(m, []),
            "flops_per_image": flops, "gflops_per_image": flops / 1e9, "flops_by_op": per_op,
            **({"paper_flops_per_image": paper[m], "paper_gflops_per_image": paper[m] / 1e9} if m in paper else {}),
            "seconds_per_image": cache.seconds[m] / max(1, cache.calls[m]), "images_timed": cache.calls[m],
            "pck": acc[m].summary(),
        }

    d = results["dataset"]
    print(f"SPair-71k {args.split}: {d['evaluated_pairs']} pairs, {d['keypoints']} keypoints, "
          f"{len(d['categories'])} categories; {ext.spec.name} layer {ext.layer} {ext.facet}, "
          f"imsize {args.load_size}, device {ext.device}")
    print("PCK = mean over categories (the paper's number); 'kps' = over all keypoints")
    print(format_tables(results))
    out_dir = Path(args.output_dir) if args.output_dir else None
    json_path = args.output_json or (out_dir / "spair.json" if out_dir else None)
    plot_path = args.plot or (out_dir / "pck_vs_flops.png" if out_dir else None)
    if json_path:
        out = Path(json_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, json.dumps(results, indent=1, sort_keys=False))
        log.info(f"wrote {out}")
    if plot_path:
        from liftkit.eval.plots import plot_metric_vs_flops

        title = f"SPair-71k {args.split}, {ext.spec.name}, {d['evaluated_pairs']} pairs"
        log.info(f"wrote {plot_metric_vs_flops(results['methods'], Path(plot_path), 'pck@0.1', title=title)}")
    if skipped:
        raise options.skipped_failures(skipped)
    return results
