"""eval_tokencut.py (``liftkit-eval-tokencut`` once installed): single-object discovery with TokenCut on dense ViT
features, scored by CorLoc.

For every image: features by each ``--methods`` entry (backbone grid ``low``, its ``bilinear`` 2x upsampling, or
``lift``), TokenCut on that grid (:mod:`liftkit.eval.tokencut`), the box scaled to the original image, and whether
it has IoU >= 0.5 with any ground-truth box (CorLoc). Images are fed at their own resolution (each side rounded to a
multiple of the patch size), as TokenCut does, unless ``--load_size`` (alias ``--imsize``) resizes the short side
(``--resize_mode square``: to N x N). All methods of an image come from one backbone pass (plus one per highres*).

Examples::

    python eval_tokencut.py --dataset voc07 --data_root VOCdevkit/VOC2007 --methods low,bilinear,lift \\
        --output_json tokencut_voc07.json
    python eval_tokencut.py --dataset coco20k --data_root COCO/train2017 \\
        --annotations COCO/annotations/instances_train2017.json --coco20k_list COCO/coco_20k_filenames.txt
    python eval_tokencut.py --dataset folder --data_root my_images --methods lift --save_vis vis/

Exit status: 0 when every image was processed, 1 when some image or method failed (listed at the end), 2 when
nothing could start (bad flag, data set or weights).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from liftkit.cli import options
from liftkit.cli.runner import ItemFailures, Run, run_command, run_sweep
from liftkit.data.boxes import AnnotatedImage, BoxDataset
from liftkit.data.coco import load_coco, read_coco20k_list
from liftkit.data.image_io import list_images, load_image
from liftkit.data.loader import shard
from liftkit.data.voc import load_voc
from liftkit.errors import ConfigError, DatasetError, ImageLoadError, LiftKitError
from liftkit.eval.boxes import CORLOC_IOU, best_iou, boxes_to_input_frame, draw_boxes
from liftkit.eval.tokencut_tau import auto_tau, parse_tau
from liftkit.eval.tokencut import DEFAULT_EPS, SOLVERS, tokencut
from liftkit.io.outputs import os_error_message, write_text_atomic
from liftkit.memory import eigen_tensors
from liftkit.train.distributed import gather_objects

COMMAND = "eval_tokencut"
MEMORY_FLAGS = {"size": "--imsize (--load_size)", "methods": "the K of liftK/bilinearK/highresK in --methods "
                "(TokenCut's eigen-problem grows as 16^K)", "lift_iter": "the K of liftK in --methods"}
DATASETS = ("voc07", "voc12", "coco20k", "coco", "folder")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eval_tokencut.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", required=True, choices=DATASETS, type=str.lower,
                   help="any case: the official VOC07, VOC12, COCO20k are accepted")
    options.add_data_root(g, help="VOC: VOCdevkit/VOC2007 (or VOC2012); coco/coco20k: the image folder; folder: any "
                          "folder; the official layout (DATAROOT/VOC2007/VOCdevkit/VOC2007, DATAROOT/COCO/images/"
                          "train2014 + COCO/annotations/instances_train2014.json + coco_20k_filenames.txt) is found "
                          "too", type=Path)
    g.add_argument("--set", default="trainval", help="VOC ImageSets/Main/<set>.txt (default trainval, the CorLoc "
                   "split); every annotated image when that file is absent")
    g.add_argument("--annotations", type=Path, help="COCO instances JSON (coco, coco20k)")
    g.add_argument("--coco20k_list", type=Path, help="coco_20k_filenames.txt (coco20k)")
    g.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    options.add_skip_bad(g)
    options.add_backbone_args(p)
    options.add_lift_args(p, "low,bilinear,lift")
    options.add_size_args(p, None, ("short", "square"), "resize the short side to this (default: the image's own "
                          "size, rounded to the patch)", imsize_square=True, sweep=True)
    g = p.add_argument_group("TokenCut")
    g.add_argument("--tau", default="auto",
                   help="affinity threshold; 'auto' (default): the backbone table's value (liftkit/eval/tokencut_tau.py:"
                        " the paper's 0.2 VOC / 0.3 COCO for DINO v1 keys, a value measured on training images for "
                        "other backbones and facets); a number is used as given")
    g.add_argument("--eps", type=float, default=DEFAULT_EPS, help="weight of edges below tau")
    g.add_argument("--no-binary-graph", "--no_binary_graph", dest="no_binary_graph", action="store_true",
                   help="similarity-weighted edges (entries below tau set to eps) instead of binary ones (the official "
                        "ablation; dense solver)")
    o = p.add_argument_group("accepted for the official eval_obj_disc.py commands")
    o.add_argument("--no_hard", action="store_true", help="official VOC_all setup only; no effect on VOC07/VOC12/COCO20k")
    o.add_argument("--k_patches", type=int, default=100, help="official LOST parameter, unused by TokenCut")
    o.add_argument("--which_features", choices=("k", "q", "v"), default=None,
                   help="alias of --facet (k: key, q: query, v: value)")
    g.add_argument("--solver", default="auto", choices=SOLVERS,
                   help="dense: scipy eigh (reference); sparse: matrix-free Lanczos; auto: by grid size")
    g.add_argument("--resize_filter", choices=("bicubic", "bilinear"), default="bicubic",
                   help="resampling of --load_size (default bicubic; official TokenCut datasets.py: bilinear)")
    g.add_argument("--box_frame", choices=("image", "input"), default="image",
                   help="frame of the box and the IoU: image (default, exact ground truth) or input (the official "
                        "one: the resized input, ground truth scaled to it and truncated to integers)")
    options.add_protocol_arg(p.add_argument_group("protocol"), "the official eval_obj_disc.py: 224 x 224 inputs "
                             "(--imsize 224) resized bilinearly, ImageNet normalisation, --tau 0.2 and --set train unless given, "
                             "--box_frame input, the dense solver, only the LiFT features with --lift_path "
                             "(--methods lift), else only the backbone's (--lift_path none --methods low)")
    options.add_output_args(p, None, "folder for tokencut.json (when --output_json is not given)",
                            "write every box and figure here")
    p.add_argument_group("output").add_argument("--save_vis", type=Path, default=None,
                                                help="folder for <image>_<method>.jpg with the boxes")
    options.add_runtime_args(p)
    return p


def official_layout(args: argparse.Namespace) -> None:
    """Map the official eval_obj_disc.py data layout under ``--dataroot`` to ours (in place, only where the given
    folder is not already in our layout)."""
    root = Path(args.data_root)
    if args.dataset in ("voc07", "voc12"):
        year = "2007" if args.dataset == "voc07" else "2012"
        for cand in (root / f"VOC{year}" / "VOCdevkit" / f"VOC{year}", root / "VOCdevkit" / f"VOC{year}"):
            if not (root / "Annotations").is_dir() and (cand / "Annotations").is_dir():
                args.data_root = cand
                return
    elif args.dataset == "coco20k":
        ann = root / "COCO" / "annotations" / "instances_train2014.json"
        if args.annotations is None and ann.is_file():
            args.annotations = ann
        if args.coco20k_list is None and (root / "coco_20k_filenames.txt").is_file():
            args.coco20k_list = root / "coco_20k_filenames.txt"
        if (root / "COCO" / "images" / "train2014").is_dir():
            args.data_root = root / "COCO" / "images" / "train2014"


def load_dataset(args: argparse.Namespace) -> BoxDataset:
    """The :class:`BoxDataset` the flags describe (raises DatasetError / ConfigError)."""
    official_layout(args)
    root = args.data_root
    if args.dataset in ("voc07", "voc12"):
        return load_voc(root, args.set, skip_bad=args.skip_bad, name=args.dataset)
    if args.dataset in ("coco", "coco20k"):
        if args.annotations is None:
            raise ConfigError(f"--dataset {args.dataset} needs --annotations (a COCO instances JSON)")
        names = None
        if args.dataset == "coco20k":
            if args.coco20k_list is None:
                raise ConfigError("--dataset coco20k needs --coco20k_list (coco_20k_filenames.txt)")
            names = read_coco20k_list(args.coco20k_list)
        return load_coco(args.annotations, root, names, skip_bad=args.skip_bad, name=args.dataset)
    if not root.is_dir():
        raise DatasetError(f"--data_root '{root}' is not a folder")
    paths = list_images([root])
    if not paths:
        raise DatasetError(f"--data_root '{root}' holds no images")
    images = [AnnotatedImage(name=str(q.relative_to(root).with_suffix("")), image_path=q, width=0, height=0)
              for q in paths]
    return BoxDataset(name="folder", images=images, has_ground_truth=False)


def read_dataset_image(item: AnnotatedImage, min_side: int, has_gt: bool) -> Image.Image:
    """The RGB image. Annotated images are read as stored (no EXIF rotation, like the annotations and the official
    code) and must have the annotated size; folder images go through the robust loader (EXIF applied)."""
    if not has_gt:
        return load_image(item.image_path, min_side=min_side)
    try:
        with Image.open(item.image_path) as im:
            pil = im.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"'{item.image_path}' cannot be read ({exc}); re-download or remove it") from None
    if pil.size != (item.width, item.height):
        raise ImageLoadError(f"'{item.image_path}' is {pil.size[0]}x{pil.size[1]} but its annotation says "
                             f"{item.width}x{item.height}; the image and annotation do not match")
    if min(pil.size) < min_side:
        raise ImageLoadError(f"'{item.image_path}' is smaller than the {min_side}-px patch")
    return pil


def _check_memory(args, ext, plan, size_hw, item: str = "") -> None:
    """The backbone, LiFT and baseline tensors and TokenCut's (N, N) eigen-problem of every method must fit."""
    grid = (size_hw[0] // ext.patch_size, size_hw[1] // ext.patch_size)
    options.check_memory(args, ext.spec, size_hw[0], size_hw[1], plan, MEMORY_FLAGS, item=item,
                         extra=eigen_tensors(grid[0], grid[1], plan))


def _fmt_box(b) -> List[float]:
    return [round(float(v), 3) for v in b]


def official_settings(args) -> dict:
    """``--protocol official``: the official eval_obj_disc.py settings where ours differ (docs/reproducing.md)."""
    return {"load_size": 224, "resize_mode": "square", "resize_filter": "bilinear", "box_frame": "input",
            "tau": "0.2", "solver": "dense", "set": "train", **options.official_methods(args)}


def main(argv: Optional[List[str]] = None) -> int:
    return run_command(COMMAND, build_parser(), argv, lambda args, run: run_sweep(
        options.with_protocol(args, official_settings, run), run, _run, lambda res: {m: r["corloc"] for m, r in res.items()}, "CorLoc"))


def _run(args, run: Run) -> Optional[int]:
    """Under torchrun each rank evaluates its share of the images (rank r: images r, r + N, ...); rank 0 gathers
    the per-image records in data-set order and writes the one-process summary and JSON."""
    with options.torchrun_group(args, run.log) as ctx:
        return _evaluate(args, run, ctx)


def _evaluate(args, run: Run, ctx) -> Optional[int]:
    log = run.log
    plan = options.methods_plan(args.methods)
    methods = [m.name for m in plan]
    if args.which_features:
        args.facet = {"k": "key", "q": "query", "v": "value"}[args.which_features]
    tau, tau_source = parse_tau(args.tau), "--tau"
    if not 0 < args.eps < 1:
        raise ConfigError(f"--eps {args.eps} must be in (0, 1)")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit {args.limit} must be at least 1")
    dataset = load_dataset(args)
    if args.limit is not None:
        dataset.images = dataset.images[:args.limit]
    if not dataset.images:
        raise DatasetError(f"no usable image in {args.dataset} at '{args.data_root}' "
                           f"({len(dataset.skipped)} skipped)")
    ext = options.make_extractor(args, plan)
    if args.protocol == "official":  # TokenCut's datasets.py normalises with ImageNet's statistics for every model
        options.set_normalisation(ext, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    log.info(options.describe_extractor(ext))
    if args.load_size:  # the smallest input these flags allow must fit (exit 2)
        side = options.min_input_side(args.load_size, ext.patch_size)
        _check_memory(args, ext, plan, (side, side))
    if tau is None:
        tau, tau_source = auto_tau(ext.spec.name, ext.facet, ext.layer, ext.spec.depth, args.dataset)
    log.info(f"tau {tau:g} ({tau_source})")
    if args.save_vis is not None:
        args.save_vis.mkdir(parents=True, exist_ok=True)

    has_gt = dataset.has_ground_truth
    records: list = []  # (image index, record)
    failures: list = []  # (image index, item, reason): processing failures (an image or an (image, method))
    skipped_runtime: list = []
    n = len(dataset.images)
    for k, item in shard(list(enumerate(dataset.images)), ctx.rank, ctx.world):
        try:
            pil = read_dataset_image(item, ext.patch_size, has_gt)
            _check_memory(args, ext, plan, ext.target_size(pil.size, args.load_size, args.resize_mode))
        except LiftKitError as exc:
            (skipped_runtime if args.skip_bad else failures).append((k, item.name, str(exc)))
            log.info(f"[{k + 1}/{n}] {item.name}: {'skipped' if args.skip_bad else 'failed'}: {exc}")
            continue
        item_failures: List[Tuple[str, str]] = []
        rec, line = _evaluate_image(ext, plan, item, pil, args, tau, has_gt, item_failures)
        failures += [(k, a, b) for a, b in item_failures]
        records.append((k, rec))
        log.info(f"[{k + 1}/{n}] {item.name}: " + ", ".join(line))
    # one process: the lists as they are; torchrun: every rank's items, back in data-set order
    parts = gather_objects((records, failures, skipped_runtime), ctx)
    if not ctx.is_main:
        return None
    records = [r for _, r in sorted((x for p in parts for x in p[0]), key=lambda x: x[0])]
    failures = [(a, b) for _, a, b in sorted((x for p in parts for x in p[1]), key=lambda x: x[0])]
    skipped_runtime = [(a, b) for _, a, b in sorted((x for p in parts for x in p[2]), key=lambda x: x[0])]

    summary = summarise(records, methods, has_gt)
    skipped = list(dataset.skipped) + skipped_runtime
    print_table(summary, dataset, args, tau, len(records), len(skipped))
    json_path = args.output_json or (Path(args.output_dir) / "tokencut.json" if args.output_dir else None)
    if json_path is not None:
        out = {
            "run": run.info,
            "args": {**run.info["args"], "methods": methods, "tau": tau},
            "extractor": ext.describe(),
            "dataset": {"name": dataset.name, "dataroot": str(args.data_root), "set": args.set,
                        "num_images": len(records), "num_objects": sum(len(r.get("gt_boxes", [])) for r in records),
                        **options.skipped_json(skipped)},
            "tau": tau, "tau_source": tau_source, "eps": args.eps, "solver": args.solver, "iou_threshold": CORLOC_IOU,
            "methods": summary,
            "images": records,
            "failures": [{"item": a, "reason": b} for a, b in failures],
        }
        try:
            write_text_atomic(json_path, json.dumps(out, indent=1), "--output_json")
        except LiftKitError as exc:
            failures.append(("--output_json", str(exc)))
        else:
            log.info(f"wrote {json_path}")
    if failures:
        raise ItemFailures(f"{len(failures)} failure(s)" + (f", {len(skipped)} skipped" if skipped else ""),
                           [f"{a}: {b}" for a, b in failures + skipped])
    if skipped:
        raise options.skipped_failures(skipped)
    return summary


def _evaluate_image(ext, plan, item: AnnotatedImage, pil: Image.Image, args, tau: float, has_gt: bool,
                    failures: List[Tuple[str, str]]) -> Tuple[dict, List[str]]:
    """Features of every method from one backbone pass, TokenCut on each grid; (record, progress-line parts)."""
    w, h = pil.size
    size_hw = ext.target_size((w, h), args.load_size, args.resize_mode)
    resized = pil if pil.size == tuple(size_hw[::-1]) else pil.resize(
        tuple(size_hw[::-1]), Image.BILINEAR if args.resize_filter == "bilinear" else Image.BICUBIC)
    x = ext.preprocess(resized, size=size_hw)
    frame_hw, gt = ((h, w), item.boxes) if args.box_frame == "image" else (
        size_hw, boxes_to_input_frame(item.boxes, (h, w), size_hw) if has_gt else None)
    rec: Dict = {"name": item.name, "image_path": str(item.image_path), "width": w, "height": h,
                 "input_hw": list(size_hw), "box_frame": args.box_frame, "results": {}}
    if has_gt:
        rec["gt_boxes"] = [_fmt_box(b) for b in gt]  # in the --box_frame of the boxes below
        rec["gt_labels"] = list(item.labels)
    line = []
    timings: Dict[str, float] = {}
    try:
        feats = ext.features(x, plan, timings=timings)
        feature_error = None
    except LiftKitError as exc:
        feats, feature_error = {}, exc
    for m in plan:
        method = m.name
        t1 = time.perf_counter()
        res: Dict = {"feature_s": None, "grid_hw": None, "cell_px": None}
        try:
            if feature_error is not None:
                raise feature_error
            f = feats[method][0]
            gh, gw = int(f.shape[-2]), int(f.shape[-1])
            # pixels of the original image per grid cell (the effective patch size of this grid)
            res.update(feature_s=round(timings[method], 4), grid_hw=[gh, gw],
                       cell_px=[round(h / gh, 4), round(w / gw, 4)])
            tc = tokencut(f, frame_hw, tau=tau, eps=args.eps, solver=args.solver, weighted=args.no_binary_graph)
        except LiftKitError as exc:
            failures.append((f"{item.name} [{method}]", str(exc)))
            res.update(error=str(exc), box=None, iou=None, correct=False if has_gt else None,
                       tokencut_s=round(time.perf_counter() - t1, 4))
            rec["results"][method] = res
            line.append(f"{method}: failed")
            continue
        t2 = time.perf_counter()
        iou = best_iou(tc.box, gt) if has_gt else None
        res.update(box=_fmt_box(tc.box), box_grid=list(tc.box_grid), seed=list(tc.seed),
                   eigenvalue=tc.eigenvalue, density=round(tc.density, 4), solver=tc.solver,
                   iou=None if iou is None else round(iou, 4),
                   correct=None if iou is None else bool(iou >= CORLOC_IOU),
                   tokencut_s=round(t2 - t1, 4), error=None)
        rec["results"][method] = res
        line.append(f"{method}: " + (f"IoU {iou:.2f}" if iou is not None else f"box {res['box']}"))
        if args.save_vis is not None:
            caption = f"{method}" + (f" IoU {iou:.2f}" if iou is not None else "")
            safe = item.name.replace("/", "_")
            target = args.save_vis / f"{safe}_{method}.jpg"
            try:
                draw_boxes(pil if args.box_frame == "image" else resized, tc.box, gt, caption).save(target, quality=90)
            except OSError as exc:  # the picture only: the result stands, the failure is listed
                failures.append((f"{item.name} [{method}]", os_error_message(target, exc)))
    return rec, line


def _mean(values: List[float]) -> Optional[float]:
    return float(np.mean(values)) if values else None


def summarise(records: List[dict], methods: List[str], has_gt: bool) -> Dict[str, dict]:
    """Per method: CorLoc (fraction; a failed image counts as a miss), counts and mean seconds per image."""
    out: Dict[str, dict] = {}
    for m in methods:
        rs = [r["results"][m] for r in records if m in r["results"]]
        ok = [r for r in rs if r.get("error") is None]
        correct = sum(1 for r in rs if r.get("correct"))
        solvers: Dict[str, int] = {}
        for r in ok:
            solvers[r["solver"]] = solvers.get(r["solver"], 0) + 1
        out[m] = {
            "corloc": (correct / len(rs)) if (has_gt and rs) else None,
            "num_correct": correct if has_gt else None,
            "num_images": len(rs),
            "num_errors": len(rs) - len(ok),
            "mean_cells": _mean([r["grid_hw"][0] * r["grid_hw"][1] for r in rs if r["grid_hw"]]),
            "mean_feature_s": _mean([r["feature_s"] for r in rs if r["feature_s"] is not None]),
            "mean_tokencut_s": _mean([r["tokencut_s"] for r in rs]),
            "solvers": solvers,
        }
    return out


def print_table(summary: Dict[str, dict], dataset: BoxDataset, args: argparse.Namespace, tau: float,
                num_images: int, num_skipped: int) -> None:
    """The result table on stdout."""
    extra = f", set {args.set}" if args.dataset in ("voc07", "voc12") else ""
    print(f"TokenCut on {dataset.name}{extra}: {num_images} images ({num_skipped} skipped), tau={tau:g}, "
          f"eps={args.eps:g}, solver={args.solver}, {args.model_type} layer {args.layer} {args.facet}")
    print(f"{'method':<10} {'cells':>7} {'CorLoc':>8} {'correct':>9} {'errors':>7} {'feat s/img':>11} "
          f"{'cut s/img':>10}")
    for m, s in summary.items():
        cor = "-" if s["corloc"] is None else f"{100 * s['corloc']:.2f}"
        hits = "-" if s["num_correct"] is None else f"{s['num_correct']}/{s['num_images']}"
        cells = "-" if s["mean_cells"] is None else f"{s['mean_cells']:.0f}"
        feat = "-" if s["mean_feature_s"] is None else f"{s['mean_feature_s']:.3f}"
        cut = "-" if s["mean_tokencut_s"] is None else f"{s['mean_tokencut_s']:.3f}"
        print(f"{m:<10} {cells:>7} {cor:>8} {hits:>9} {s['num_errors']:>7} {feat:>11} {cut:>10}")


if __name__ == "__main__":
    raise SystemExit(main())
